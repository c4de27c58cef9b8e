#!/usr/bin/env python
"""Plot bits/dim curves from train.py's JSON-lines logs: training, and test
with the raw weights (the paper's figure) and with their Polyak average.

    python scripts/plot_logs.py LOGDIR [--out curve.png] [--x epoch|n_processed|step] [--max_bits B]

Drawn with Pillow only (no plotting library needed on either stack). Lines
that mark a resumed run are skipped, so a resumed run continues the curve.
No point is left out: one above the plotted range (--max_bits, or chosen
when a few points are far above the rest) or not finite is drawn as a
triangle on the top edge with its value written beside it.
"""
import argparse
import io
import math
import os
import sys

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402

# name: (log file, key, colour, legend)
CURVES = {
    "train": ("train.txt", "bits_x", (31, 119, 180), "train"),
    "test": ("test.txt", "bits_x", (214, 39, 40), "test, raw weights"),
    "test polyak": ("test.txt", "bits_x_polyak", (255, 127, 14), "test, Polyak average"),
}


def read_curve(path, x_key, y_key="bits_x"):
    """[(x, y)] of the log's epoch lines, sorted by x; y a float, inf and
    nan included (they are drawn off the scale)."""
    points, torn = [], []
    records = utils.read_jsonl(path, skip_invalid=True, skipped=torn)
    for line in torn:  # a crash mid-write: reported, not drawn
        sys.stderr.write("warning: skipped a line that is not JSON (torn by a crash?): %s\n" % line)
    for record in records:
        if "problem" in record or record.get("mode") or record.get("partial") or x_key not in record:
            continue  # config lines, --evaluate lines, epochs cut short by --max_steps
        try:
            y = float(record.get(y_key))  # the logs' "NaN" and "Infinity" parse too
        except (TypeError, ValueError):
            continue
        points.append((float(record[x_key]), y))
    return sorted(points, key=lambda p: p[0])


def auto_top(ys):
    """The top of the plotted range: the largest finite value, unless some
    are more than twice the 80th percentile: then a little above the rest
    (those few go on the edge, so the others stay readable)."""
    ys = sorted(y for y in ys if math.isfinite(y))
    if not ys:
        return 1.0
    p80 = ys[int(0.8 * (len(ys) - 1))]
    if p80 > 0 and ys[-1] > 2 * p80:
        return max(y for y in ys if y <= 2 * p80) * 1.1
    return ys[-1]


def ticks(lo, hi, n=5):
    step = (hi - lo) / n if hi > lo else 1.0
    magnitude = 10 ** math.floor(math.log10(step))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step), default=step)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def plot(curves, out, x_label, title, top=None, size=(800, 500)):
    """curves: {name: [(x, y), ...]} -> PNG at `out`. Points above `top`
    (default: auto_top) or not finite sit on the top edge with their value
    written. Returns those as [(name, x, y)]."""
    all_points = [p for pts in curves.values() for p in pts]
    if not all_points:
        raise ValueError("no bits_x values to plot")
    xs, ys = zip(*all_points)
    top = auto_top(ys) if top is None else top
    shown = [y for y in ys if math.isfinite(y) and y <= top]
    x0, x1 = min(xs), max(xs)
    y0 = min(shown) if shown else top - 1.0
    y1 = top if len(shown) < len(ys) else max(shown)
    if x1 == x0:
        x1 = x0 + 1
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    w, h = size
    left, right, top_px, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top_px - bottom))

    d.rectangle([left, top_px, w - right, h - bottom], outline="black")
    for ty in ticks(y0, y1):
        _, yy = px(x0, ty)
        d.line([left - 4, yy, w - right, yy], fill=(225, 225, 225))
        d.text((5, yy - 6), "%.2f" % ty, fill="black")
    for tx in ticks(x0, x1):
        xx, _ = px(tx, y0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 12, h - bottom + 8), "%g" % tx, fill="black")
    d.text((w // 2 - 30, h - 18), x_label, fill="black")
    d.text((left, 12), title, fill="black")
    off_scale = []
    for i, name in enumerate(sorted(curves)):
        colour, legend = CURVES[name][2:] if name in CURVES else ((0, 0, 0), name)
        inside = [math.isfinite(y) and y <= top for _, y in curves[name]]
        drawn = [px(x, y if ok else y1) for (x, y), ok in zip(curves[name], inside)]
        if len(drawn) > 1:
            d.line(drawn, fill=colour, width=2)
        for (x, y), ok, (cx, cy) in zip(curves[name], inside, drawn):
            if ok:
                d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
                continue
            d.polygon([(cx, cy - 6), (cx - 5, cy + 3), (cx + 5, cy + 3)], outline=colour)
            d.text((cx + 6, cy + 4 + 12 * (len(off_scale) % 3)), "%.4g" % y, fill=colour)
            off_scale.append((name, x, y))
        d.text((w - right - 190, top_px + 10 + 16 * i), "%s bits/dim" % legend, fill=colour)
    utils.atomic_write_bytes(out, png_bytes(img))
    return off_scale


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logdir")
    p.add_argument("--out", default=None, help="PNG path (default: LOGDIR/bits_per_dim.png)")
    p.add_argument("--x", default="epoch", choices=["epoch", "n_processed", "step"])
    p.add_argument("--title", default=None)
    p.add_argument("--curves", default=",".join(CURVES), help="comma-separated, of: %s" % ", ".join(CURVES))
    p.add_argument("--max_bits", type=float, default=None,
                   help="top of the plotted range; points above it are drawn on the edge with their value")
    args = p.parse_args(argv)
    curves = {}
    for name in args.curves.split(","):
        if name not in CURVES:
            p.error("--curves: unknown curve %r (expected: %s)" % (name, ", ".join(CURVES)))
        path = os.path.join(args.logdir, CURVES[name][0])
        points = read_curve(path, args.x, CURVES[name][1]) if os.path.exists(path) else []
        if points:
            curves[name] = points
    out = args.out or os.path.join(args.logdir, "bits_per_dim.png")
    title = args.title or "bits/dim, %s" % os.path.basename(os.path.abspath(args.logdir))
    off_scale = plot(curves, out, args.x, title, top=args.max_bits)
    print("wrote %s" % out)
    for name, x, y in off_scale:
        print("  off the scale, on the top edge: %s at %s %g: %g" % (name, args.x, x, y))
    return 0


if __name__ == "__main__":
    sys.exit(main())
