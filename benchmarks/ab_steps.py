#!/usr/bin/env python
"""Time per training step of two checkouts of this repository, or of two
checkpointing modes, stepped in turn so that both see the same load on a
shared, noisy machine.

    git worktree add /tmp/before HEAD~1
    python -m benchmarks.ab_steps --before /tmp/before --configs small --mode none --rounds 20
    python -m benchmarks.ab_steps --before . --before_mode none --mode invertible   # what a mode costs

Each side is a process started in its own checkout (`python -m
benchmarks.ab_steps --serve` there, so it builds that checkout's training
graph with that checkout's benchmarks.common), on the same batch of uniform
uint8 noise; it initialises and runs --warmup steps. The driver then asks
the two processes for one timed step each, in the order before-after,
after-before, before-after, ... (a round is one step of each; one process
runs at a time). The figure to read is the median over rounds of
after/before step time: a slower minute of the machine slows both steps of
its round. One JSON line is printed (and written to --out) with every
step's seconds, the median ratio and its quartiles, each side's median
images/s and commit.

Both checkouts need benchmarks/ab_steps.py (for commits before it, use
that commit's scripts/ab_steps.py); the after side is the checkout this
module is in, or --after.
"""
import argparse
import json
import os
import subprocess
import sys
import time

if __name__ == "__main__" and not __package__:
    # Run by path: this folder, not the project root, is on sys.path; run
    # as the package's module instead (from the project root).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.ab_steps"] + sys.argv[1:])

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--before", default="", help="checkout to compare against (required)")
    p.add_argument("--after", default=common.ROOT, help="checkout under test")
    p.add_argument("--configs", default="small", choices=sorted(common.CONFIGS), help="a config of benchmarks.bench")
    p.add_argument("--mode", default="none", choices=common.MODES, help="gradient checkpointing mode")
    p.add_argument("--before_mode", default="", choices=("",) + common.MODES,
                   help="the before side's mode, if not --mode: with --before and --after the same checkout, "
                        "what a checkpointing mode costs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as in benchmarks.bench")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (one step of each side)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each side first")
    p.add_argument("--out", default="", help="write the JSON here (it is always printed)")
    p.add_argument("--serve", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return args
    if not args.before:
        p.error("--before is required: the checkout to compare against (. for this one, with --before_mode)")
    for side in (args.before, args.after):
        if not os.path.isfile(os.path.join(side, "benchmarks", "ab_steps.py")):
            p.error("%s: not a checkout of this repository with benchmarks/ab_steps.py" % side)
    try:
        common.parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be >= 1 and --warmup >= 0, got %d and %d" % (args.rounds, args.warmup))
    return args


def serve(spec):
    """One side: build, initialise, warm up, print 'ready <batch>', then one
    timed training step per 'step' line on stdin (its seconds on stdout)."""
    if spec["config"] not in common.CONFIGS:
        raise SystemExit("%s: no config %r in its benchmarks/common.py" % (common.ROOT, spec["config"]))
    common.start_tf()  # malloc as train.py sets it
    values = common.config_values(spec["config"], common.parse_overrides(spec["set"]))
    x, y = common.noise_batch(values["image_shape"], values["batch"])
    run = common.build_run(common.run_config(mode=spec["mode"], **values))
    run.initialize(x, y)
    for _ in range(spec["warmup"]):
        run.train_step(x, y)
    print("ready %d" % values["batch"], flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t = time.time()
        run.train_step(x, y)
        print("%.6f" % (time.time() - t), flush=True)
    run.close()
    return 0


class Side(object):
    """The serving process of one checkout."""

    def __init__(self, root, mode, args):
        self.root = os.path.abspath(root)
        spec = dict(config=args.configs, mode=mode, set=args.set, warmup=args.warmup)
        self.proc = subprocess.Popen(common.module_command("ab_steps", "--serve", json.dumps(spec)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=common.quiet_env(),
                                     cwd=self.root, universal_newlines=True)

    def _line(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("%s: the serving process exited with status %s (its stderr is above)"
                               % (self.root, self.proc.wait()))
        return line.strip()

    def ready(self):
        """The batch size, once built and warmed up."""
        line = self._line()
        while not line.startswith("ready"):
            line = self._line()
        return int(line.split()[1])

    def step(self):
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def quantile(xs, q):
    xs = sorted(xs)
    return xs[int(round(q * (len(xs) - 1)))]


def run(args):
    sides = []
    try:
        # Built one after the other: the two builds must not share the CPU either.
        for root, mode in ((args.before, args.before_mode or args.mode), (args.after, args.mode)):
            sides.append(Side(root, mode, args))
            batch = sides[-1].ready()
        seconds = ([], [])
        for r in range(args.rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                seconds[i].append(sides[i].step())
    finally:
        for side in sides:
            side.close()
    ratios = [a / b for a, b in zip(seconds[1], seconds[0])]
    common.emit(dict(
        before=os.path.abspath(args.before), after=os.path.abspath(args.after),
        before_commit=common.git_commit(args.before), after_commit=common.git_commit(args.after),
        config=args.configs, set=args.set, mode=args.mode, before_mode=args.before_mode or args.mode,
        batch=batch, rounds=args.rounds, warmup=args.warmup, load_avg_end=os.getloadavg()[0],
        before_step_seconds=[round(s, 6) for s in seconds[0]],
        after_step_seconds=[round(s, 6) for s in seconds[1]],
        before_images_per_sec_median=round(batch / quantile(seconds[0], 0.5), 2),
        after_images_per_sec_median=round(batch / quantile(seconds[1], 0.5), 2),
        after_over_before_median=round(quantile(ratios, 0.5), 4),
        after_over_before_quartiles=[round(quantile(ratios, 0.25), 4), round(quantile(ratios, 0.75), 4)]),
        args.out)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        return serve(json.loads(args.serve))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
