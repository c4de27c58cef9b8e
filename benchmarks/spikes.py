#!/usr/bin/env python
"""Loss spikes of the main job's recipe and its variants (issue 27): each variant trains --steps steps with
--verbose on the given seeds, and its per-step training bits/dim and gradient norms are read from stdout.

    python benchmarks/spikes.py --out docs/results/spikes.json --seeds 0 1 --variant base= \
        --variant "clip100=--max_grad_norm 100" --variant "beta2=--adam_beta2 0.999"

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
    p.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--after", type=int, default=300)
    p.add_argument("--jump", type=float, default=0.5)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
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
