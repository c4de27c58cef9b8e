#!/usr/bin/env python
"""Out-of-distribution check (Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't Know?"):
the bits/dim of two image sets under one trained Glow, as histograms in one figure, with the AUROC of bits/dim as a
detector of the second set.

    python scripts/ood.py LOGDIR --vs OTHER [--in IMAGES] [--n N] [--out PNG|SVG|PDF] [--n_dequant_draws K]

--in: as likelihood.py's IMAGES ("test" by default: the run's own test split). --vs: the same kinds of source
(e.g. mnist, a folder, an .npy), or a transform of the --in images: hflip, vflip, invert (255 - x) or noise
(uniform random pixels, seed 0). AUROC 1: every image of OTHER has more bits/dim than every --in image; 0.5: no
better than chance; below 0.5: the model gives OTHER the higher likelihood (Nalisnick et al.'s finding for
Fashion-MNIST against MNIST). A JSON beside the figure holds the numbers.
"""
import json
import os

import numpy as np

import plot_logs  # also selects matplotlib's non-interactive backend
import trained_run
import utils

TRANSFORMS = {
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1],
    "invert": lambda x: 255 - x,
    "noise": lambda x: np.random.RandomState(0).randint(0, 256, x.shape).astype(np.uint8),
}
COLOURS = ("tab:blue", "tab:red")


def plot_histograms(path, sets, title, n_bins=60, size=(8, 5)):
    """sets: [(legend, bits [N])] -> a figure of their histograms (each normalised to its own count) on one axis,
    logarithmic when the values span more than a factor of 20; PNG, or SVG/PDF by the name of `path`. The axis
    spans the 0.5th to 99.5th percentiles of the finite values; the few beyond go in the edge bins, values not
    finite are counted in the legend."""
    values = np.concatenate([b for _, b in sets])
    lo, hi = np.percentile(values[np.isfinite(values)], [0.5, 99.5])
    log = lo > 0 and hi > 20 * lo
    hi = hi if hi > lo else (lo * 10 if log else lo + 1.0)
    edges = np.geomspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)
    fig, ax = plot_logs.plt.subplots(figsize=size)
    for (legend, bits), colour in zip(sets, COLOURS):  # translucent bars: overlaps show both colours
        finite = bits[np.isfinite(bits)]
        n_off = len(bits) - len(finite)
        ax.hist(np.clip(finite, lo, hi), edges, weights=np.full(len(finite), 1.0 / len(bits)), color=colour,
                alpha=0.45, label="%s: n %d, median %.4g%s" % (
                    legend, len(bits), np.median(bits), ", %d not finite (not drawn)" % n_off if n_off else ""))
    if log:
        ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("bits/dim%s" % (", log scale" if log else ""))
    ax.set_ylabel("fraction of each set per bin")
    ax.set_title(title)
    ax.legend(loc="best")
    plot_logs.save_figure(fig, path)


def main(argv):
    parser = trained_run.run_parser(__doc__.split("\n")[0])
    parser.add_argument("--in", dest="in_images", default="test", help="the in-distribution images (default test)")
    parser.add_argument("--vs", required=True, help="the other images, or one of %s of --in" % ", ".join(TRANSFORMS))
    parser.add_argument("--n", type=int, default=None, help="the first N images of each set only")
    parser.add_argument("--n_dequant_draws", type=int, default=1, help="noise draws averaged per image")
    parser.add_argument("--out", default="", help="the figure: .png, .svg or .pdf (default LOGDIR/ood_<vs>.png)")
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
    plot_histograms(out, [(args.in_images, bits_in), (vs_name, bits_vs)],
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
