#!/usr/bin/env python
"""Wall time and peak memory of the commands that use a trained run (a tool, a mode) in two checkouts of this
repository, on the same run folder, run in turn (before, after, after, before, ...) so that both see the same load.

    git worktree add /tmp/before <commit>
    python benchmarks/ab_tools.py --before /tmp/before --logdir RUN --rounds 3 --out docs/bench/ab-tools.json

Each command runs in its own process from its checkout's root, with this Python; its wall time is measured here
and its peak resident memory is the kernel's (os.wait4's ru_maxrss). Outputs go to a scratch copy of the run
folder per side, so neither side reads what the other wrote. One JSON object is printed and written to --out:
each command's seconds and MB per side and round, the median of after/before, and both commits.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> command (from the checkout's root; {run} is the run folder's copy, {here} this checkout).
COMMANDS = {
    "likelihood_20": ["scripts/likelihood.py", "{run}", "{here}/docs/img/fmnist_test20", "--resize", "pad"],
    "sample_16": ["train.py", "--logdir", "{run}", "--sample", "16"],
}


def measure(checkout, argv):
    """(seconds, peak RSS in MB) of `python argv...` run in `checkout`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable] + argv, cwd=checkout, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - t0
    if status != 0:
        raise RuntimeError("%s in %s failed:\n%s" % (" ".join(argv), checkout, out.decode()[-3000:]))
    return seconds, usage.ru_maxrss / 1024.0


def commit(checkout):
    return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=checkout).decode().strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="the other checkout")
    p.add_argument("--after", default=HERE, help="this checkout (default)")
    p.add_argument("--logdir", required=True, help="a trained run folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    sides = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    scratch = tempfile.mkdtemp(prefix="ab-tools-")
    runs = {}
    for side in sides:
        runs[side] = os.path.join(scratch, side)
        shutil.copytree(args.logdir, runs[side], ignore=shutil.ignore_patterns("samples", "tensorboard"))
    results = dict((name, dict((side, []) for side in sides)) for name in COMMANDS)
    try:
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name, command in COMMANDS.items():
                for side in order:
                    argv = [part.format(run=runs[side], here=sides["after"]) for part in command]
                    seconds, mb = measure(sides[side], argv)
                    results[name][side].append({"seconds": round(seconds, 2), "peak_rss_mb": round(mb, 1)})
    finally:
        shutil.rmtree(scratch)
    report = {"logdir": os.path.abspath(args.logdir), "rounds": args.rounds,
              "commits": dict((side, commit(path)) for side, path in sides.items()), "commands": {}}
    for name, by_side in results.items():
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(by_side["after"], by_side["before"])]
        memory = [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(by_side["after"], by_side["before"])]
        report["commands"][name] = dict(by_side, argv=COMMANDS[name], median_time_ratio=round(
            statistics.median(ratios), 3), median_memory_ratio=round(statistics.median(memory), 3))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
