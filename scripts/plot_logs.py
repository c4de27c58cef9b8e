#!/usr/bin/env python
"""Plot bits/dim curves (train and test) from train.py's JSON-lines logs.

    python scripts/plot_logs.py LOGDIR [--out curve.png] [--x epoch|n_processed]

Drawn with Pillow only (no plotting library needed on either stack). Lines
that mark a resumed run are skipped, so a resumed run continues the curve.
"""
import argparse
import math
import os
import sys

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402

COLOURS = {"train": (31, 119, 180), "test": (214, 39, 40)}


def read_curve(path, x_key):
    points = []
    for record in utils.read_jsonl(path, skip_invalid=True):
        if "problem" in record or record.get("mode") or record.get("partial") or x_key not in record:
            continue  # config lines, --evaluate lines, epochs cut short by --max_steps
        y = record.get("bits_x")
        try:
            y = float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            points.append((float(record[x_key]), y))
    return sorted(points)


def _ticks(lo, hi, n=5):
    step = (hi - lo) / n if hi > lo else 1.0
    magnitude = 10 ** math.floor(math.log10(step))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step), default=step)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def plot(curves, out, x_label, title, size=(800, 500)):
    """curves: {name: [(x, y), ...]} -> PNG at `out`."""
    all_points = [p for pts in curves.values() for p in pts]
    if not all_points:
        raise ValueError("no bits_x values to plot")
    xs, ys = zip(*all_points)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for ty in _ticks(y0, y1):
        _, yy = px(x0, ty)
        d.line([left - 4, yy, w - right, yy], fill=(225, 225, 225))
        d.text((5, yy - 6), "%.2f" % ty, fill="black")
    for tx in _ticks(x0, x1):
        xx, _ = px(tx, y0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 12, h - bottom + 8), "%g" % tx, fill="black")
    d.text((w // 2 - 30, h - 18), x_label, fill="black")
    d.text((left, 12), title, fill="black")
    for i, (name, pts) in enumerate(sorted(curves.items())):
        colour = COLOURS.get(name, (0, 0, 0))
        if len(pts) > 1:
            d.line([px(*p) for p in pts], fill=colour, width=2)
        for p in pts:
            cx, cy = px(*p)
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        d.text((w - right - 150, top + 10 + 16 * i), "%s bits/dim" % name, fill=colour)
    utils.atomic_write_bytes(out, _png_bytes(img))


def _png_bytes(img):
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logdir")
    p.add_argument("--out", default=None, help="PNG path (default: LOGDIR/bits_per_dim.png)")
    p.add_argument("--x", default="epoch", choices=["epoch", "n_processed", "step"])
    p.add_argument("--title", default=None)
    p.add_argument("--curves", default="train,test", help="which logs to plot, comma-separated")
    p.add_argument("--max_bits", type=float, default=None,
                   help="leave out points above this (a test set with one extreme image)")
    args = p.parse_args(argv)
    curves = {}
    for name in args.curves.split(","):
        path = os.path.join(args.logdir, name + ".txt")
        if os.path.exists(path):
            curves[name] = [p for p in read_curve(path, args.x) if args.max_bits is None or p[1] <= args.max_bits]
    out = args.out or os.path.join(args.logdir, "bits_per_dim.png")
    plot(curves, out, args.x, args.title or "bits/dim, %s" % os.path.basename(os.path.abspath(args.logdir)))
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
