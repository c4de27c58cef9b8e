#!/usr/bin/env python
"""Out-of-distribution check (Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't Know?"):
the bits/dim of two image sets under one trained Glow, as histograms in one PNG, with the AUROC of bits/dim as a
detector of the second set.

    python scripts/ood.py LOGDIR --vs OTHER [--in IMAGES] [--n N] [--out PNG] [--n_dequant_draws K]

--in: as likelihood.py's IMAGES ("test" by default: the run's own test split). --vs: the same kinds of source
(e.g. mnist, a folder, an .npy), or a transform of the --in images: hflip, vflip, invert (255 - x) or noise
(uniform random pixels, seed 0). AUROC 1: every image of OTHER has more bits/dim than every --in image; 0.5: no
better than chance; below 0.5: the model gives OTHER the higher likelihood (Nalisnick et al.'s finding for
Fashion-MNIST against MNIST). A JSON beside the PNG holds the figures.
"""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

import plot_logs
import trained_run
import utils

TRANSFORMS = {
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1],
    "invert": lambda x: 255 - x,
    "noise": lambda x: np.random.RandomState(0).randint(0, 256, x.shape).astype(np.uint8),
}
COLOURS = ((31, 119, 180), (214, 39, 40))


def histogram_png(path, sets, title, n_bins=60, size=(800, 500)):
    """sets: [(legend, bits [N])] -> PNG of their histograms (each normalised to its own count) on one axis,
    logarithmic when the values span more than a factor of 20. The axis spans the 0.5th to 99.5th percentiles
    of the finite values; the few beyond go in the edge bins, values not finite are counted in the legend."""
    values = np.concatenate([b for _, b in sets])
    lo, hi = np.percentile(values[np.isfinite(values)], [0.5, 99.5])
    log = lo > 0 and hi > 20 * lo
    scale = np.log10 if log else (lambda v: v)
    lo, hi = scale(lo), scale(hi) if hi > lo else scale(lo) + 1.0
    edges = np.linspace(lo, hi, n_bins + 1)
    counts = [np.histogram(np.clip(scale(b[np.isfinite(b)]), lo, hi), edges)[0] / float(len(b)) for _, b in sets]
    top = max(c.max() for c in counts) * 1.1
    w, h = size
    left, right, top_px, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x, y):
        return left + (x - lo) / (hi - lo) * (w - left - right), h - bottom - y / top * (h - top_px - bottom)

    for c, colour in zip(counts, COLOURS):  # translucent bars, one layer per set: overlaps show both colours
        layer = Image.new("RGBA", size, (255, 255, 255, 0))
        for k in range(n_bins):
            (x0, y0), (x1, _) = px(edges[k], c[k]), px(edges[k + 1], 0)
            ImageDraw.Draw(layer).rectangle([x0, y0, x1, h - bottom], fill=colour + (110,))
        img.paste(layer, (0, 0), layer)
    d.rectangle([left, top_px, w - right, h - bottom], outline="black")
    for ty in plot_logs.ticks(0.0, top):
        _, yy = px(lo, ty)
        d.text((5, yy - 6), "%.3f" % ty, fill="black")
    for tx in plot_logs.ticks(lo, hi):
        xx, _ = px(tx, 0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 12, h - bottom + 8), "%.3g" % (10 ** tx if log else tx), fill="black")
    d.text((w // 2 - 110, h - 18), "bits/dim%s (fraction of each set per bin)" % (", log scale" if log else ""),
           fill="black")
    d.text((left, 12), title, fill="black")
    for i, ((legend, bits), colour) in enumerate(zip(sets, COLOURS)):
        n_off = int(np.sum(~np.isfinite(bits)))
        d.text((w - right - 360, top_px + 10 + 16 * i), "%s: n %d, median %.4g%s" % (
            legend, len(bits), np.median(bits), ", %d not finite (not drawn)" % n_off if n_off else ""), fill=colour)
    utils.atomic_write_bytes(path, plot_logs.png_bytes(img))


def main(argv):
    parser = trained_run.run_parser(__doc__.split("\n")[0])
    parser.add_argument("--in", dest="in_images", default="test", help="the in-distribution images (default test)")
    parser.add_argument("--vs", required=True, help="the other images, or one of %s of --in" % ", ".join(TRANSFORMS))
    parser.add_argument("--n", type=int, default=None, help="the first N images of each set only")
    parser.add_argument("--n_dequant_draws", type=int, default=1, help="noise draws averaged per image")
    parser.add_argument("--out", default="", help="the PNG (default LOGDIR/ood_<vs>.png)")
    args = parser.parse_args(argv)
    run = trained_run.TrainedRun(args.logdir, args.checkpoint, args.weights)
    x_in, y_in, _ = run.load_images(args.in_images, args.resize, args.data_dir, args.n)
    if args.vs in TRANSFORMS:
        x_vs, y_vs, vs_name = TRANSFORMS[args.vs](x_in), y_in, "%s (%s)" % (args.vs, args.in_images)
    else:
        (x_vs, y_vs, _), vs_name = run.load_images(args.vs, args.resize, args.data_dir, args.n), args.vs
    bits_in, bits_vs = (run.bits_per_dim(x, y, args.n_dequant_draws) for x, y in ((x_in, y_in), (x_vs, y_vs)))
    # An image whose bits/dim is not finite (float32 overflow far from the data) is as unlikely as can be.
    score = trained_run.auroc(*(np.where(np.isnan(b), np.inf, b) for b in (bits_in, bits_vs)))
    name = os.path.basename(os.path.normpath(args.vs)).replace(".npy", "")
    out = args.out or os.path.join(args.logdir, "ood_%s.png" % name)
    run_name = os.path.basename(os.path.abspath(args.logdir))
    histogram_png(out, [(args.in_images, bits_in), (vs_name, bits_vs)],
                  "bits/dim under %s (%s weights): AUROC %.3f for %s" % (run_name, args.weights, score, vs_name))
    figures = dict(auroc=score, checkpoint=run.prefix, weights=args.weights, n_dequant_draws=args.n_dequant_draws,
                   sets=[dict(name=n, n=len(b), mean=float(np.mean(b)), median=float(np.median(b)),
                              n_not_finite=int(np.sum(~np.isfinite(b))))
                         for n, b in ((args.in_images, bits_in), (vs_name, bits_vs))])
    utils.atomic_write_bytes(os.path.splitext(out)[0] + ".json", json.dumps(figures, indent=1).encode("utf-8"))
    print("bits/dim mean %.4f, median %.4f (%s, %d images) vs mean %.4f, median %.4f (%s, %d images): AUROC %.4f "
          "-> %s" % (bits_in.mean(), np.median(bits_in), args.in_images, len(bits_in), bits_vs.mean(),
                     np.median(bits_vs), vs_name, len(bits_vs), score, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
