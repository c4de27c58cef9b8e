#!/usr/bin/env python
"""Latent arithmetic with a trained Glow (the paper's section 5.2): attribute directions, manipulation and
interpolation grids. The latent z of an image is the eps of every level (Glow.encode, at the bin centres),
flattened: decoding it gives the image back exactly.

    python scripts/latent.py directions LOGDIR [IMAGES] [--attributes FILE] [--n N] [--out DIR.npy]
    python scripts/latent.py manipulate LOGDIR [IMAGES] --directions DIR.npy --direction NAME|K
        --index 0 1 2 [--strengths -2 -1 1 2] [--out PNG]
    python scripts/latent.py interpolate LOGDIR [IMAGES] --pairs 0:1 2:3 [--steps 8] [--out PNG]

IMAGES as for scripts/likelihood.py ("test" by default: the run's own test split). `directions` writes one
vector per class (the labels of a problem's test split) or per attribute (--attributes: a CSV with a header
"image,<name>,..." and a row per file, or CelebA's list_attr_celeba.txt; a value > 0 means the image has it):
the mean latent of the images with it minus the mean of those without, unscaled, so that strength 1 moves an
image by that difference (openai/glow's demo scaled its vectors; here the strength is the only scale). It
saves [K, D] float32 as .npy, names and counts beside it (.json).

Every grid row starts with the input image x and its exact reconstruction decode(encode(x)). A manipulation
row follows with x moved along the direction at each strength; an interpolation pair gets two rows, linear
and spherical (each level's latent on the great circle between the two, at its own angle), from the first
image (t = 0, its reconstruction again) to the second (t = 1), then the second input.
"""
import argparse
import json
import os

import numpy as np

import trained_run
import utils


def attributes_of(path, names):
    """({attribute: bool [N]} for the images `names` (paths relative to the folder, or base names) from a
    CSV with a header row or CelebA's list_attr_celeba.txt: an image count line, the attribute names, then
    "<file> v1 v2 ..."."""
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if len(lines) > 2 and lines[0].isdigit():  # CelebA: count, names, rows
        header, rows = lines[1].split(), [line.split() for line in lines[2:]]
    else:
        header, rows = lines[0].split(",")[1:], [line.split(",") for line in lines[1:]]
    table = {}
    for row in rows:
        if len(row) != len(header) + 1:
            raise ValueError("%s: the row of %s has %d values for %d attributes" % (path, row[0], len(row) - 1,
                                                                                   len(header)))
        table[row[0]] = [float(v) > 0 for v in row[1:]]
    missing = [n for n in names if n not in table and os.path.basename(n) not in table]
    if missing:
        raise ValueError("%s: no row for %d of the images, e.g. %s" % (path, len(missing), missing[0]))
    values = np.array([table.get(n, table.get(os.path.basename(n))) for n in names], bool)  # [N, K]
    return dict((name.strip(), values[:, k]) for k, name in enumerate(header))


def directions(run, x, y, groups):
    """{name: mean z of the images with it - mean z of those without} for `groups` ({name: bool [N]}), with
    the counts and how well the direction separates them (the AUROC of z . direction)."""
    z = run.encode(x, y).astype(np.float64)
    out = {}
    for name, has in groups.items():
        if has.all() or not has.any():
            raise ValueError("attribute %s: %d of %d images have it; a direction needs some with and some without"
                             % (name, has.sum(), len(has)))
        d = z[has].mean(axis=0) - z[~has].mean(axis=0)
        out[name] = dict(vector=d, n_with=int(has.sum()), n_without=int((~has).sum()),
                         separation_auroc=trained_run.auroc(z[~has] @ d, z[has] @ d))
    return out


def slerp(a, b, t, slices):
    """Each level's slice of a and b [D] interpolated on the great circle at t (linear where they are parallel)."""
    out = np.empty_like(a)
    for s in slices:
        u, v = a[s], b[s]
        cos = np.dot(u, v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-30)
        omega = np.arccos(np.clip(cos, -1.0, 1.0))
        if np.sin(omega) < 1e-6:
            out[s] = (1 - t) * u + t * v
        else:
            out[s] = (np.sin((1 - t) * omega) * u + np.sin(t * omega) * v) / np.sin(omega)
    return out


def manipulation_grid(run, x, y, direction, strengths):
    """uint8 rows [len(x) * (2 + len(strengths)), H, W, C]: x, its reconstruction, x moved by each strength."""
    z = run.encode(x, y)
    moved = [z] + [z + np.float32(s) * direction.astype(np.float32) for s in strengths]
    decoded = [run.decode(m, y) for m in moved]  # each [B, H, W, C]
    return np.stack([x] + decoded, axis=1).reshape((-1,) + x.shape[1:])


def interpolation_grid(run, x, y, pairs, steps):
    """uint8 rows: per pair (i, j) a linear and a spherical row: x_i, its reconstruction, t = 0 .. 1, x_j."""
    used = sorted(set(i for pair in pairs for i in pair))
    z, slices, ts = dict(zip(used, run.encode(x[used], y[used]))), run.level_slices(), np.linspace(0.0, 1.0, steps)
    rows = []
    for i, j in pairs:
        for mix in (lambda a, b, t: (1 - t) * a + t * b, lambda a, b, t: slerp(a, b, t, slices)):
            path = np.stack([z[i]] + [mix(z[i], z[j], t) for t in ts]).astype(np.float32)
            rows.append(np.concatenate([x[i:i + 1], run.decode(path, np.repeat(y[i:i + 1], len(path))), x[j:j + 1]]))
    return np.concatenate(rows)


def _reconstructions_exact(x, grid, n_cols):
    """How many rows' reconstruction (column 1) equals their input (column 0) exactly."""
    cells = grid.reshape((-1, n_cols) + x.shape[1:])
    return int(sum(np.array_equal(row[0], row[1]) for row in cells)), len(cells)


def _meta_path(npy_path):
    """The .json of names and counts beside a directions .npy."""
    return (npy_path[:-len(".npy")] if npy_path.endswith(".npy") else npy_path) + ".json"


def _load_directions(path, which):
    vectors = np.load(path, allow_pickle=False)
    with open(_meta_path(path)) as f:
        names = json.load(f)["names"]
    k = names.index(which) if which in names else int(which) if which.lstrip("-").isdigit() else None
    if k is None or not -len(names) <= k < len(names):
        raise ValueError("--direction %s: not one of %s (or an index below %d)" % (which, names, len(names)))
    return vectors[k], names[k]


def parse_pair(text):
    try:
        i, j = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("pair %r: expected I:J (two image indices)" % text) from None
    return i, j


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    subs = {}
    for name in ("directions", "manipulate", "interpolate"):
        sub = commands.add_parser(name, parents=[trained_run.run_parser(name)], add_help=False)
        sub.add_argument("images", nargs="?", default="test", help="as likelihood.py's IMAGES (default: test)")
        sub.add_argument("--n", type=int, default=None, help="the first N images only")
        sub.add_argument("--out", default="", help="the output file (default in LOGDIR)")
        subs[name] = sub
    subs["directions"].add_argument("--attributes", default="", help="a CSV or list_attr_celeba.txt for a folder")
    subs["manipulate"].add_argument("--directions", required=True, help="directions' .npy")
    subs["manipulate"].add_argument("--direction", required=True, help="a name or an index")
    subs["manipulate"].add_argument("--index", type=int, nargs="+", default=[0, 1, 2, 3], help="images to move")
    subs["manipulate"].add_argument("--strengths", type=float, nargs="+", default=[-2, -1, -0.5, 0.5, 1, 2])
    subs["interpolate"].add_argument("--pairs", type=parse_pair, nargs="+", default=[(0, 1), (2, 3)])
    subs["interpolate"].add_argument("--steps", type=int, default=8, help="images from t = 0 to 1")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("give a command: directions, manipulate or interpolate")
    run = trained_run.TrainedRun(args.logdir, args.checkpoint, args.weights)
    x, y, names = run.load_images(args.images, args.resize, args.data_dir, args.n)
    return globals()["_" + args.command](run, args, x, y, names)


def _directions(run, args, x, y, names):
    if args.attributes:
        groups = attributes_of(args.attributes, names)
    elif run.cfg.n_y > 1 and args.images in ("test", run.cfg.problem):
        groups = dict((name, y == k) for k, name in enumerate(run.class_names()))
    else:
        raise ValueError("%s has no labels: give --attributes (a CSV or list_attr_celeba.txt)" % args.images)
    found = directions(run, x, y, groups)
    out = args.out or os.path.join(args.logdir, "directions.npy")
    out += "" if out.endswith(".npy") else ".npy"  # as np.save names it
    np.save(out, np.stack([d["vector"] for d in found.values()]).astype(np.float32))
    meta = dict(names=list(found), source=args.images, checkpoint=run.prefix, weights=args.weights,
                definition="mean latent with the attribute - mean latent without; unscaled",
                counts=dict((k, [d["n_with"], d["n_without"]]) for k, d in found.items()),
                separation_auroc=dict((k, d["separation_auroc"]) for k, d in found.items()))
    utils.atomic_write_bytes(_meta_path(out), json.dumps(meta, indent=1).encode("utf-8"))
    for name, d in found.items():
        print("%-14s with %5d  without %5d  |d| %8.2f  separation AUROC %.3f"
              % (name, d["n_with"], d["n_without"], np.linalg.norm(d["vector"]), d["separation_auroc"]))
    print("%d directions of %d dims -> %s (names in .json)" % (len(found), x[0].size, out))
    return 0


def _pick(x, y, indices):
    bad = [i for i in indices if not -len(x) <= i < len(x)]
    if bad:
        raise ValueError("image index %d: there are %d images" % (bad[0], len(x)))
    return x[list(indices)], y[list(indices)]


def _manipulate(run, args, x, y, names):
    direction, name = _load_directions(args.directions, args.direction)
    if direction.shape != (sum(run.model.z_sizes),):
        raise ValueError("%s: vectors of %d dims, this model's latent has %d" % (
            args.directions, direction.size, sum(run.model.z_sizes)))
    x, y = _pick(x, y, args.index)
    grid = manipulation_grid(run, x, y, direction, args.strengths)
    out = args.out or os.path.join(args.logdir, "manipulate_%s.png" % name.replace("/", "-").replace(" ", "_"))
    utils.save_image_grid(grid, out, n_cols=2 + len(args.strengths))
    exact, n = _reconstructions_exact(x, grid, 2 + len(args.strengths))
    print("manipulation along %s at strengths %s; reconstruction exact for %d of %d -> %s"
          % (name, " ".join("%g" % s for s in args.strengths), exact, n, out))
    return 0


def _interpolate(run, args, x, y, names):
    if args.steps < 2:
        raise ValueError("--steps %d: need at least 2 (t = 0 and 1)" % args.steps)
    _pick(x, y, [i for pair in args.pairs for i in pair])
    grid = interpolation_grid(run, x, y, args.pairs, args.steps)
    out = args.out or os.path.join(args.logdir, "interpolate.png")
    utils.save_image_grid(grid, out, n_cols=args.steps + 3)
    exact, n = _reconstructions_exact(x, grid, args.steps + 3)
    print("interpolation of %d pair(s) in %d steps, rows linear then spherical; reconstruction exact for %d of "
          "%d rows -> %s" % (len(args.pairs), args.steps, exact, n, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
