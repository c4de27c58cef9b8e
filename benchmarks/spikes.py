#!/usr/bin/env python
"""Loss spikes of the main job's recipe and its variants (issue 27): each variant trains --steps steps with
--verbose on the given seeds, and its per-step training bits/dim and gradient norms are read from stdout.

    python benchmarks/spikes.py --out docs/results/spikes.json --seeds 0 1 --variant base= \
        --variant "clip100=--max_grad_norm 100" --variant "beta2=--adam_beta2 0.999"
    python benchmarks/spikes.py --out docs/results/spikes.json --table     # its runs as a Markdown table

A spike is a step after --after whose training bits/dim is more than --jump above the lowest of the 20 steps
before it (the issue's count); an episode is a run of such steps. Reported per run: the spiking steps, the
episodes' first steps, the mean bits/dim over the last 100 steps, and the gradient norm's median and largest.
Runs go --parallel at a time (each TensorFlow process then gets a share of the cores)."""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_JOB = ["--problem", "fashion-mnist", "--n_levels", "3", "--depth", "8", "--width", "128",
            "--flow_permutation", "invconv_lu", "--flow_coupling", "affine", "--learntop",
            "--gradient_checkpointing", "0", "--optimizer", "adam", "--lr", "0.001", "--epochs_warmup", "0.5",
            "--dal", "0", "--n_train", "30000", "--epochs", "12", "--n_test", "500"]
STEP = re.compile(r"^(\d+) lr ([\d.e-]+) \[([^\]]*)\] grad_norm (\S+)$", re.M)


def spikes(bits, after=300, jump=0.5, window=20):
    """(steps that jump, first steps of episodes), steps counted from 1."""
    jumps = [i + 1 for i in range(window, len(bits)) if i + 1 > after and bits[i] > min(bits[i - window:i]) + jump]
    episodes = [s for s in jumps if s - 1 not in jumps]
    return jumps, episodes


def largest_excess(bits, after=300, window=20):
    """The most any step after `after` rose above the lowest of the `window` steps before it (bits/dim)."""
    return max(bits[i] - min(bits[i - window:i]) for i in range(max(window, after), len(bits)))


def step_spread(bits, after=300, half=10):
    """How much the steps after `after` scatter around their neighbourhood: the robust standard deviation (1.4826
    x the median absolute deviation) of each step's bits/dim minus the median of the 2*half+1 steps around it."""
    import numpy as np
    bits = np.asarray(bits, np.float64)
    dev = [bits[i] - np.median(bits[max(0, i - half):i + half + 1]) for i in range(after, len(bits))]
    return float(1.4826 * np.median(np.abs(dev))) if dev else float("nan")


def table(report, after=300):
    """Markdown rows of a report: per variant and seed, spiking steps, episodes, the largest rise, the steps'
    spread (step_spread) and the mean of the last 100 steps."""
    rows = ["| variant | seed | spiking steps after %d | episodes | largest rise | step spread | mean, last 100 "
            "steps |" % after, "|---|---|---|---|---|---|---|"]
    for name, seeds in report.items():
        for seed, r in sorted(seeds.items()):
            partial = " (%d steps)" % r["n_steps"] if r["n_steps"] < 1000 else ""
            rows.append("| %s%s | %s | %d | %d | %.2f | %.3f | %.3f |" % (
                name, partial, seed, len(r["spiking_steps"]), len(r["episodes"]), largest_excess(r["bits"], after),
                step_spread(r["bits"], after), r["mean_last_100"]))
    return "\n".join(rows)


def gaussian_floor(sd, steps=1000, after=300, jump=0.5, trials=200, seed=0):
    """The count's mean per run, and the share of runs with none, for per-step figures that are independent
    Gaussian draws of standard deviation `sd` around a constant: how the count grows with the steps' spread."""
    import numpy as np
    rng = np.random.RandomState(seed)
    counts = np.array([len(spikes(list(sd * rng.randn(steps)), after, jump)[0]) for _ in range(trials)])
    return float(counts.mean()), float(np.mean(counts == 0))


def noise_floor(per_image_bits, batch=64, steps=1000, after=300, jump=0.5, trials=200, seed=0):
    """What the count gives for a model that does not change at all: batches of `batch` images drawn at random
    from `per_image_bits` (one model's bits/dim per image), their means as the per-step figures. Returns (the mean
    count per run of `steps`, the share of runs with none, the standard deviation of a batch mean)."""
    import numpy as np
    rng, bits = np.random.RandomState(seed), np.asarray(per_image_bits, np.float64)
    counts, means = [], []
    for _ in range(trials):
        x = bits[rng.randint(0, len(bits), (steps, batch))].mean(axis=1)
        counts.append(len(spikes(list(x), after, jump)[0]))
        means.append(x)
    return float(np.mean(counts)), float(np.mean(np.array(counts) == 0)), float(np.std(np.concatenate(means)))


def run(variant_args, seed, steps, logdir):
    cmd = [sys.executable, os.path.join(HERE, "train.py")] + MAIN_JOB + [
        "--seed", str(seed), "--verbose", "--max_steps", str(steps), "--logdir", logdir] + variant_args
    return subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), universal_newlines=True), cmd


def summarize(out, cmd, after, jump):
    rows = [(int(m.group(1)), float(m.group(3).split()[1]), float(m.group(4))) for m in STEP.finditer(out)]
    bits = [b for _, b, _ in rows]
    norms = sorted(g for _, _, g in rows)
    jumps, episodes = spikes(bits, after, jump)
    return {"command": " ".join(shlex.quote(c) for c in cmd), "n_steps": len(rows), "spiking_steps": jumps,
            "episodes": episodes, "mean_last_100": sum(bits[-100:]) / max(1, len(bits[-100:])),
            "grad_norm_median": norms[len(norms) // 2] if norms else None,
            "grad_norm_max": norms[-1] if norms else None,
            "bits": bits, "grad_norms": [g for _, _, g in rows]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--after", type=int, default=300)
    p.add_argument("--jump", type=float, default=0.5)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--table", action="store_true", help="print --out's runs as a Markdown table, run nothing")
    p.add_argument("--noise_floor", default="", metavar="CSV", help="print the count for unchanging weights whose "
                   "per-image bits/dim are the CSV's bits_x column (--evaluate --per_image), run nothing")
    p.add_argument("--noise_sd", type=float, nargs="+", default=[], metavar="SD", help="print the count for "
                   "independent Gaussian per-step figures of each standard deviation, run nothing")
    args = p.parse_args(argv)
    for sd in args.noise_sd:
        mean, none = gaussian_floor(sd, args.steps, args.after, args.jump)
        print("Gaussian steps of sd %.3f: %.2f spiking steps per %d-step run on average, none in %.0f%% of runs"
              % (sd, mean, args.steps, 100 * none))
    if args.noise_sd:
        return 0
    if args.noise_floor:
        import csv
        bits = [float(row["bits_x"]) for row in csv.DictReader(open(args.noise_floor))]
        mean, none, sd = noise_floor(bits, after=args.after, jump=args.jump, steps=args.steps)
        print("%s: batch-mean sd %.3f; a 1000-step run of unchanging weights: %.2f spiking steps on average, none "
              "in %.0f%% of runs" % (args.noise_floor, sd, mean, 100 * none))
        return 0
    if args.table:
        print(table(json.load(open(args.out)), args.after))
        return 0
    todo = [(name, shlex.split(flags), seed) for name, flags in (v.split("=", 1) for v in args.variant)
            for seed in args.seeds]
    report = json.load(open(args.out)) if os.path.exists(args.out) else {}
    scratch = tempfile.mkdtemp(prefix="spikes-")
    running = []
    while todo or running:
        while todo and len(running) < args.parallel:
            name, flags, seed = todo.pop(0)
            proc, cmd = run(flags, seed, args.steps, os.path.join(scratch, "%s-%d" % (name, seed)))
            running.append((name, seed, proc, cmd, time.time()))
        name, seed, proc, cmd, t0 = running.pop(0)
        out, _ = proc.communicate()
        result = summarize(out, cmd, args.after, args.jump)
        result.update(seconds=round(time.time() - t0), exit_status=proc.returncode)
        report.setdefault(name, {})[str(seed)] = result
        print("%s seed %d: %d spiking steps after %d, episodes at %s, mean of the last 100 %.3f (%d s)"
              % (name, seed, len(result["spiking_steps"]), args.after, result["episodes"], result["mean_last_100"],
                 result["seconds"]), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
