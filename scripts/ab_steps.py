#!/usr/bin/env python
"""Time per training step of two checkouts of this repository, stepped in
turn, so that both see the same load on a shared, noisy machine.

    git worktree add /tmp/before HEAD~1
    python scripts/ab_steps.py --before /tmp/before --configs small --mode none --rounds 20

Each side is a process that builds the training graph from its own checkout,
as that checkout's scripts/bench.py worker does (trainer.Trainer, the same
batch of uniform uint8 noise, the same session), initialises it and runs
--warmup steps. The driver then asks the two processes for one timed step
each, in the order before-after, after-before, before-after, ... (one round
is one step of each; only one process runs at a time). The figure to read is
the median over rounds of after/before step time: a slower minute of the
machine slows both steps of its round. One JSON object is printed (and
written to --out) with every step's seconds, the median ratio and its
quartiles, and each side's median images/s.

--before is a checkout with scripts/bench.py (any commit since bench.py has
trainer_config and batch_of); the after side is the checkout this script is
in, or --after. With --before_mode both sides may be one checkout in two
gradient checkpointing modes:

    python scripts/ab_steps.py --before . --before_mode none --mode invertible
"""
import argparse
import json
import os
import subprocess
import sys
import time

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--before", required=True, help="checkout to compare against")
    p.add_argument("--after", default=ROOT, help="checkout under test")
    p.add_argument("--configs", default="small", choices=sorted(bench.CONFIGS), help="a config of scripts/bench.py")
    p.add_argument("--mode", default="none", choices=bench.MODES, help="gradient checkpointing mode")
    p.add_argument("--before_mode", default="", choices=("",) + bench.MODES,
                   help="the before side's mode, if not --mode: with --before and --after the same checkout, "
                        "what a checkpointing mode costs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as in scripts/bench.py")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (one step of each side)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each side first")
    p.add_argument("--timeout", type=float, default=1800, help="seconds a side may take to build and warm up")
    p.add_argument("--out", default="", help="write the JSON here (it is always printed)")
    p.add_argument("--serve", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for side in (args.before, args.after):
        if not os.path.isfile(os.path.join(side, "scripts", "bench.py")):
            p.error("%s: not a checkout of this repository (no scripts/bench.py)" % side)
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be >= 1 and --warmup >= 0, got %d and %d" % (args.rounds, args.warmup))
    return args


def serve(spec):
    """One side: build, initialise, warm up, print 'ready', then one timed
    training step per 'step' line on stdin (its seconds on stdout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [spec["root"], os.path.join(spec["root"], "scripts")] + [
        p for p in sys.path if os.path.abspath(p or ".") != here]
    for name in ("bench",):  # this checkout's, imported by the driver code above
        sys.modules.pop(name, None)
    import runtime

    if hasattr(runtime, "tune_malloc"):
        runtime.tune_malloc()  # as train.py runs, before TF's threads start
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    tf.logging.set_verbosity(tf.logging.ERROR)
    import bench
    import trainer as trainer_lib

    if spec["config"] not in bench.CONFIGS:
        raise SystemExit("%s: no config %r in its scripts/bench.py" % (spec["root"], spec["config"]))
    bench_spec = dict(config=bench.config_for(spec["config"], spec["set"]), mode=spec["mode"], xla=False,
                      problem="", restore="")
    batch = bench_spec["config"]["batch"]
    x, y, n_y = bench.batch_of(bench_spec, batch)
    cfg = bench.trainer_config(bench_spec, n_y)
    backend = runtime.make_backend("none", "cpu")
    trainer = trainer_lib.Trainer(cfg, backend, lambda graph: runtime.make_session("cpu", backend, graph=graph))
    trainer.initialize(x, y)
    for _ in range(spec["warmup"]):
        trainer.train_step(x, y, 1e-4)
    print("ready %d" % batch, flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t = time.time()
        trainer.train_step(x, y, 1e-4)
        print("%.6f" % (time.time() - t), flush=True)
    trainer.sess.close()
    return 0


def _git_commit(root):
    done = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=7"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    return done.stdout.decode().strip() or None


class Side(object):
    """A serving process of one checkout."""

    def __init__(self, root, mode, args):
        spec = dict(root=os.path.abspath(root), config=args.configs, mode=mode, set=args.set, warmup=args.warmup)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.root = spec["root"]
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--before", ROOT,
                                      "--serve", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=self.root, universal_newlines=True)

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


def _quantile(xs, q):
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
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                seconds[i].append(sides[i].step())
    finally:
        for side in sides:
            side.close()
    ratios = [a / b for a, b in zip(seconds[1], seconds[0])]
    out = dict(before=os.path.abspath(args.before), after=os.path.abspath(args.after),
               before_commit=_git_commit(args.before), after_commit=_git_commit(args.after),
               config=args.configs, set=args.set, mode=args.mode, before_mode=args.before_mode or args.mode,
               batch=batch, rounds=args.rounds,
               warmup=args.warmup, load_avg_end=os.getloadavg()[0],
               before_step_seconds=[round(s, 6) for s in seconds[0]],
               after_step_seconds=[round(s, 6) for s in seconds[1]],
               before_images_per_sec_median=round(batch / _quantile(seconds[0], 0.5), 2),
               after_images_per_sec_median=round(batch / _quantile(seconds[1], 0.5), 2),
               after_over_before_median=round(_quantile(ratios, 0.5), 4),
               after_over_before_quartiles=[round(_quantile(ratios, 0.25), 4), round(_quantile(ratios, 0.75), 4)])
    text = json.dumps(out, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        return serve(json.loads(args.serve))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
