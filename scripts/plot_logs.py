#!/usr/bin/env python
"""Plot bits/dim curves from train.py's JSON-lines logs: training, and test
with the raw weights (the paper's figure) and with their Polyak average.

    python scripts/plot_logs.py LOGDIR [--out curve.png|.svg|.pdf] [--x epoch|n_processed|step] [--max_bits B]

Drawn with matplotlib's non-interactive backend; the file's name picks the
format (PNG by default). Lines that mark a resumed run are skipped, so a
resumed run continues the curve. No point is left out: one above the plotted
range (--max_bits, or chosen when a few points are far above the rest) or not
finite is drawn as a triangle on the top edge with its value written beside it.
"""
import argparse
import io
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402

# name: (log file, key, colour, legend)
CURVES = {
    "train": ("train.txt", "bits_x", "tab:blue", "train"),
    "test": ("test.txt", "bits_x", "tab:red", "test, raw weights"),
    "test polyak": ("test.txt", "bits_x_polyak", "tab:orange", "test, Polyak average"),
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


def plot(curves, out, x_label, title, top=None, size=(8, 5)):
    """curves: {name: [(x, y), ...]} -> a figure at `out` (PNG, or SVG/PDF by its name). Points above `top`
    (default: auto_top) or not finite sit on the top edge as triangles with their value written. Returns those
    as [(name, x, y)]."""
    all_points = [p for pts in curves.values() for p in pts]
    if not all_points:
        raise ValueError("no bits_x values to plot")
    top = auto_top([y for _, y in all_points]) if top is None else top
    shown = [y for _, y in all_points if math.isfinite(y) and y <= top]
    y0 = min(shown) if shown else top - 1.0
    y1 = top if len(shown) < len(all_points) else max(shown)
    pad = 0.05 * (y1 - y0 or 1.0)
    fig, ax = plt.subplots(figsize=size)
    off_scale = []
    for name in sorted(curves):
        colour, legend = CURVES[name][2:] if name in CURVES else ("black", name)
        xs = [x for x, _ in curves[name]]
        ys = [y if math.isfinite(y) and y <= top else y1 for _, y in curves[name]]
        ax.plot(xs, ys, "-", color=colour, label="%s bits/dim" % legend)
        for x, y in curves[name]:
            if math.isfinite(y) and y <= top:
                ax.plot([x], [y], "o", color=colour, markersize=4)
                continue
            ax.plot([x], [y1], "^", color=colour, markerfacecolor="none", markersize=9)
            ax.annotate("%.4g" % y, (x, y1), xytext=(6, -12 - 10 * (len(off_scale) % 3)),
                        textcoords="offset points", color=colour, fontsize=8)
            off_scale.append((name, x, y))
    ax.set_ylim(y0 - pad, y1 + pad)
    ax.set_xlabel(x_label)
    ax.set_ylabel("bits/dim")
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.legend(loc="best")
    save_figure(fig, out)
    return off_scale


def save_figure(fig, path):
    """Write a matplotlib figure to `path` atomically (a reader never sees half a file), in the format its
    extension names (.png, .svg, .pdf; PNG otherwise), and close it."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    buf = io.BytesIO()
    fig.savefig(buf, format=ext if ext in ("png", "svg", "pdf") else "png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    utils.atomic_write_bytes(path, buf.getvalue())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logdir")
    p.add_argument("--out", default=None, help="the figure: .png, .svg or .pdf (default: LOGDIR/bits_per_dim.png)")
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
