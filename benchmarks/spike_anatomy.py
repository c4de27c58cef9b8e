#!/usr/bin/env python
"""What one training update did to the loss (issue 27's spikes): the weights before it (--before, a run folder
stopped with --max_steps S) and after it (--after, the checkpoint of the same command with --max_steps S+1), and
the mean training bits/dim of the run's batches --batches (0-based indices of its training stream: batch S is the
one the update at step S+1 used) under

    the before and the after weights;
    the before weights with one group of variables at their after values (per level: actnorm, the 1x1 conv, each
        layer of the coupling network, all; per step of level 0; the split priors and the top prior);
    the after weights with level 0, its first step, or that step's coupling network's first layer put back;
    the before weights moved t times the update (before + t (after - before));
    the before and the after weights with the dequantisation noise of the background (pixels of value 0) placed
        in a part of the bin (its centre, its lowest or highest twentieth), the other pixels' noise as drawn: where
        in the bin the model puts the background's density, and what the update did to it.

    python benchmarks/spike_anatomy.py --before LOGDIR_S --after LOGDIR_S1/checkpoints/model.ckpt-S1 \
        --batches 655,656,657,658 [--out result.json]

The batches are drawn as the run drew them (its seed, batch size and augmentation: Data.train_stream); their
dequantisation noise is each image's evaluation draw (evaluator.dequantization_noise), not the training step's."""
import argparse
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "scripts"))

import tensorflow.compat.v1 as tf  # noqa: E402

import data_loaders  # noqa: E402
import evaluator  # noqa: E402
import trained_run  # noqa: E402

PLACES = {"centre": lambda u: np.full_like(u, 0.5), "low edge": lambda u: 0.05 * u, "high edge": lambda u: 1 - 0.05 * u}
KINDS = ("actnorm", "invconv_lu", "invconv", "shuffle", "f1/l_1", "f1/l_2", "f1/l_last")
ALONG = (0.25, 0.5, 0.75, 1.0, 1.5)


def groups(names):
    """{label: [variable names]}: per level and kind of step variable, per level all, and the other scopes."""
    out = {}
    for name in sorted(names):
        match = re.match(r"model/(\d+)/step/(%s)/" % "|".join(re.escape(k) for k in KINDS), name)
        if match:
            out.setdefault("level %s %s" % match.groups(), []).append(name)
            out.setdefault("level %s all" % match.group(1), []).append(name)
        elif not name.startswith("model/") or "/step/" not in name:
            out.setdefault(name.rsplit("/", 1)[0], []).append(name)
    return out


def placed_noise(x, n_bins, place, seed=0):
    """Dequantisation noise for uint8 images x, uniform in [0, 1/n_bins) but on the background (x == 0), where it is
    PLACES[place] of a uniform draw (as a fraction of the bin)."""
    u = np.random.RandomState(seed).uniform(0, 1, (2,) + x.shape)
    return (np.where(x == 0, PLACES[place](u[0]), u[1]) / n_bins).astype(np.float32)


def anatomy(before, after, batch_ids):
    """{row label: mean bits/dim} (see the module's docstring)."""
    run = trained_run.TrainedRun(before)
    cfg, model = run.cfg, run.model
    data = data_loaders.get_data(cfg.problem, image_size=cfg.image_size, n_train=cfg.train_subset, dal=cfg.dal,
                                 seed=cfg.seed, n_channels=cfg.n_channels)
    batches = [b for i in batch_ids for b in data.train_stream(cfg.local_batch_train, i, 1)]
    with model.graph.as_default():
        variables = [v for v in tf.global_variables() if v.op.name.startswith("model/")]
    reader = tf.train.load_checkpoint(after)
    a = dict((v.op.name, model.sess.run(v)) for v in variables)
    b = dict((v.op.name, reader.get_tensor(v.op.name)) for v in variables)

    def loss(values, place=None):
        for v in variables:
            v.load(values[v.op.name], model.sess)
        if place is None:
            return float(np.mean(model.eval_per_image(batches, 0, 1, "raw")["bits_x"]))
        bits_x = evaluator.STATS.index("bits_x")
        return float(np.mean([model.sess.run(model.eval_per_example, {
            model.x_test: x, model.y_test: y, model.noise_test: placed_noise(x, model.glow.n_bins, place, i)})[bits_x]
            for i, (x, y) in enumerate(batches)]))

    def mixed(base, other, names, row=None):
        out = dict(base)
        for name in names:
            out[name] = other[name] if row is None else np.concatenate([base[name][:row], other[name][row:row + 1],
                                                                        base[name][row + 1:]])
        return out

    level0 = [n for n in a if n.startswith("model/0/step/")]
    first_layer = [n for n in level0 if "/f1/l_1/" in n]
    rows = {"before": loss(a), "after": loss(b)}
    rows.update(("before, %s after" % label, loss(mixed(a, b, names))) for label, names in groups(a).items())
    rows.update(("before, level 0 step %d after" % i, loss(mixed(a, b, level0, i))) for i in range(cfg.depth))
    rows["after, level 0 before"] = loss(mixed(b, a, level0))
    rows["after, level 0 step 0 before"] = loss(mixed(b, a, level0, 0))
    rows["after, level 0 step 0 f1/l_1 before"] = loss(mixed(b, a, first_layer, 0))
    rows.update(("before + %.2f (after - before)" % t, loss(dict((n, a[n] + t * (b[n] - a[n])) for n in a)))
                for t in ALONG)
    rows.update(("%s, background noise at the bins' %s" % (label, place), loss(values, place))
                for label, values in (("before", a), ("after", b)) for place in PLACES)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="run folder whose latest checkpoint precedes the update")
    parser.add_argument("--after", required=True, help="checkpoint prefix (or run folder) after the update")
    parser.add_argument("--batches", required=True, help="comma-separated 0-based batch indices of the run's stream")
    parser.add_argument("--out", default="", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    after = args.after if not os.path.isdir(args.after) else trained_run.checkpoints.resolve(args.after)
    rows = anatomy(args.before, after, [int(i) for i in args.batches.split(",")])
    for label, value in rows.items():
        print("%-44s %.4f" % (label, value))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(before=os.path.abspath(args.before), after=os.path.abspath(after), batches=args.batches,
                           rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
