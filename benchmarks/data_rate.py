#!/usr/bin/env python
"""How fast data_loaders produces training batches, to compare with the step time.

    python -m benchmarks.data_rate [--problem fashion-mnist] [--batch 64] [--n_batches 300]

Prints milliseconds per batch for each augmentation level (--dal 0/1/2),
measured with the consumer doing nothing, i.e. the producer's full rate."""
import argparse
import os
import sys
import time

if __name__ == "__main__" and not __package__:
    # Run by path: this folder, not the project root, is on sys.path; run
    # as the package's module instead (from the project root).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.data_rate"] + sys.argv[1:])

from benchmarks import common  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problem", default="fashion-mnist")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n_batches", type=int, default=300)
    args = p.parse_args(argv)
    for dal in (0, 1, 2):
        batches = common.train_batches(args.problem, args.data_dir, dal, args.batch)
        t0 = time.time()
        n = 0
        for _ in batches:
            n += 1
            if n == args.n_batches:
                break
        batches.close()  # stops the producer thread
        dt = (time.time() - t0) / n
        print("%s dal %d: %.2f ms per batch of %d (%.0f images/s)" % (args.problem, dal, dt * 1e3, args.batch,
                                                                      args.batch / dt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
