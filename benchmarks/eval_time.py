#!/usr/bin/env python
"""Wall time of a test line's evaluation (both weightings over the whole test set) and of a sample grid, for a
trained run (issue 27, deliverable 3): test batch sizes x runs at once (evaluator.Evaluator.parallel_runs; 1:
one weighting after the other, as before issue 27), in turn for --rounds rounds.

    python benchmarks/eval_time.py pretrained/fashion-mnist --batches 50 100 --parallel 1 2 --rounds 2 \
        --out docs/bench/eval-time-tf2.json

Every setting's per-image figures are compared with the first setting's and the largest difference is reported (on
this machine they are equal: the batch and the threads change no image's arithmetic). The sample grid is
train.py's: 10x10 images at each of openai/glow's temperatures (config.TEMPERATURES), PNGs included. Times are
this machine's at this load: compare the settings of one report, not reports."""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "scripts"))

import config  # noqa: E402
import trained_run  # noqa: E402
import utils  # noqa: E402


def evaluation(model, x, y, batch, parallel):
    """(seconds, {weights: bits_x [N]}) of one pass of both weightings over x in batches of `batch`."""
    model.parallel_runs = parallel
    batches = ((x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch))
    t0 = time.time()
    out = model.eval_weightings(batches)
    return time.time() - t0, dict((w, stats["bits_x"]) for w, stats in out.items())


def sample_grid(model, n_y, folder):
    """Seconds to draw and write train.py's sample grids (10 x 10 per temperature, raw weights)."""
    y = np.tile(np.arange(10, dtype=np.int32), 10) % np.int32(n_y)
    t0 = time.time()
    for t in config.TEMPERATURES:
        utils.save_image_grid(model.sample(y, np.full(len(y), t, np.float32)), os.path.join(folder, "%.2f.png" % t),
                              n_cols=10)
    return time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logdir", help="a trained run folder")
    p.add_argument("--batches", type=int, nargs="+", default=[50, 100])
    p.add_argument("--parallel", type=int, nargs="+", default=[1, 2], help="runs at once (1: one after the other)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n_images", type=int, default=None, help="the first N test images only (default: all)")
    p.add_argument("--out", default="", help="also write the report here (JSON)")
    args = p.parse_args(argv)
    if min(args.batches + args.parallel + [args.rounds, args.n_images or 1]) < 1:
        p.error("--batches, --parallel, --rounds and --n_images take numbers >= 1")
    run = trained_run.TrainedRun(args.logdir)
    x, y, _ = run.load_images("test", n=args.n_images)
    settings = [(b, k) for b in args.batches for k in args.parallel]
    evaluation(run.model, x[:2 * max(args.batches)], y[:2 * max(args.batches)], args.batches[0], 1)  # warm-up
    seconds, first, worst = dict((s, []) for s in settings), None, {}
    with tempfile.TemporaryDirectory() as folder:
        sample_seconds = [sample_grid(run.model, run.cfg.n_y, folder)]
        for r in range(args.rounds):
            for s in settings:
                took, bits = evaluation(run.model, x, y, *s)
                seconds[s].append(took)
                first = first or bits
                worst[s] = max([worst.get(s, 0.0)] + [float(np.max(np.abs(bits[w] - first[w]))) for w in bits])
                print("round %d, batch %d, %d at once: %.2f s" % (r + 1, s[0], s[1], took), flush=True)
            sample_seconds.append(sample_grid(run.model, run.cfg.n_y, folder))
    base = np.median(seconds[settings[0]])
    rows = [dict(batch=b, parallel_runs=k, seconds=[round(t, 2) for t in seconds[(b, k)]],
                 median_over_first=round(float(np.median(seconds[(b, k)]) / base), 3),
                 max_abs_diff_bits_x=worst[(b, k)]) for b, k in settings]
    report = dict(logdir=args.logdir, n_images=int(len(x)), weightings=2, rounds=args.rounds, evaluations=rows,
                  sample_grid_seconds=[round(t, 2) for t in sample_seconds],
                  command="python benchmarks/eval_time.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print("| test batch | runs at once | seconds (rounds) | median / first row's | largest per-image difference |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| %d | %d | %s | %.3f | %.2g |" % (row["batch"], row["parallel_runs"], ", ".join(
            "%.1f" % t for t in row["seconds"]), row["median_over_first"], row["max_abs_diff_bits_x"]))
    print("sample grids (%d temperatures): %s s" % (len(config.TEMPERATURES), ", ".join(
        "%.1f" % t for t in sample_seconds)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
