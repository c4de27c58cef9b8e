#!/usr/bin/env python
"""The likelihood of your own images under a trained Glow: bits/dim of each image, as a CSV.

    python scripts/likelihood.py LOGDIR IMAGES [--out CSV] [--n_dequant_draws K] [--resize pad|crop]
        [--weights raw|polyak] [--n N] [--data_dir DIR]

IMAGES: a folder of PNG/JPEG files, an .npy array (uint8 [N, H, W(, C)]), a problem name (its test split) or
"test" (the run's own problem's test split). The CSV (default LOGDIR/likelihood_<name>.csv) has a row per image:
its file name (or index), its bits/dim (the paper's metric: -log2 p(x) / dims of the discretised model), and the
number of dequantisation draws it is the mean of. The mean and median go to stdout. Image i gets the
dequantisation noise that test image i gets in `train.py --evaluate`, so on the run's own test split the mean
is --evaluate's test figure.
"""
import csv
import io
import os

import numpy as np

import trained_run
import utils


def write_csv(path, names, bits, n_draws):
    """A header and a row per image (names quoted by the csv module where they need it), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "bits_per_dim", "n_dequant_draws"])
    writer.writerows([name, "%.6f" % b, n_draws] for name, b in zip(names, bits))
    utils.atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def main(argv):
    parser = trained_run.run_parser(__doc__.split("\n")[0])
    parser.add_argument("images", help="a folder of PNG/JPEG, an .npy array, a problem name, or 'test'")
    parser.add_argument("--out", default="", help="the CSV (default LOGDIR/likelihood_<name>.csv)")
    parser.add_argument("--n_dequant_draws", type=int, default=1, help="noise draws averaged per image")
    parser.add_argument("--n", type=int, default=None, help="the first N images only")
    args = parser.parse_args(argv)
    if args.n_dequant_draws < 1:
        raise ValueError("--n_dequant_draws %d: must be at least 1" % args.n_dequant_draws)
    run = trained_run.TrainedRun(args.logdir, args.checkpoint, args.weights)
    x, y, names = run.load_images(args.images, args.resize, args.data_dir, args.n)
    bits = run.bits_per_dim(x, y, args.n_dequant_draws)
    name = os.path.basename(os.path.normpath(args.images)).replace(".npy", "") or "images"
    out = args.out or os.path.join(args.logdir, "likelihood_%s.csv" % name)
    write_csv(out, names, bits, args.n_dequant_draws)
    print("%d images: bits/dim mean %.4f, median %.4f (%s weights of %s, %d dequantisation draw(s)) -> %s"
          % (len(bits), np.mean(bits), np.median(bits), args.weights, run.prefix, args.n_dequant_draws, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
