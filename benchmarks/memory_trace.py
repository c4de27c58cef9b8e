#!/usr/bin/env python
"""TensorFlow's own count of the bytes in use, per session run, while one
process sets up and trains the paper's Glow: what RSS cannot tell apart
(tensors, the allocator's retention, libraries).

    TF_CPU_ALLOCATOR_USE_BFC=true python -m benchmarks.memory_trace --depth 32 --mode invertible --loop_steps

Builds the training graph of config `cifar` at --depth as memory_stages
does, then runs the initialisers, the data-dependent init and --steps
training steps, each traced, and prints one JSON line: for each run, the
allocator's bytes in use when its first op ran (what earlier runs left
behind), the least and the most during the run (MiB), the op at the most
(null where a run allocates nothing), and which ops' allocations of the
run were still held then, largest first. TF 2.21's CPU allocator reports
these only with TF_CPU_ALLOCATOR_USE_BFC=true, which also changes how
memory is allocated: compare runs made the same way.
"""
import argparse
import collections
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run by path: this folder, not the project root, is on sys.path; run
    # as the package's module instead (from the project root).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.memory_trace"] + sys.argv[1:])

from benchmarks import common  # noqa: E402


def _mib(n_bytes):
    return round(n_bytes / 2.0 ** 20, 1)


def in_use(metadata, top=10):
    """The allocator's figures of one traced run (tf.RunMetadata):
    {first, least, most: MiB in use, at: op at the most, live_at_most:
    [[op, MiB], ...] the `top` ops whose outputs and scratch, allocated in
    this run, were still allocated when `at` ended (largest first),
    live_mib: their total over all ops}. What earlier runs left behind (the
    variables among it) is `first`, not in live_at_most."""
    points, records = [], []
    for d in metadata.step_stats.dev_stats:
        for n in d.node_stats:
            for m in n.memory:
                if m.allocator_bytes_in_use > 0:
                    points.append((m.allocator_bytes_in_use, n.all_start_micros, n.node_name,
                                   n.all_start_micros + n.all_end_rel_micros))
                # Allocations (bytes > 0) and their frees (< 0), whenever they happened.
                records.extend((r.alloc_micros, r.alloc_bytes, n.node_name) for r in m.allocation_records)
    if not points:
        return dict(first=None, least=None, most=None, at=None, live_at_most=[], live_mib=None)
    most = max(points)
    live = collections.Counter()
    for micros, n_bytes, name in records:
        if micros <= most[3]:
            live[name] += n_bytes
    return dict(first=_mib(min(points, key=lambda p: p[1])[0]), least=_mib(min(points)[0]), most=_mib(most[0]),
                at=most[2], live_at_most=[[name, _mib(b)] for name, b in live.most_common(top) if b > 0],
                live_mib=_mib(sum(b for b in live.values() if b > 0)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_paper_flags(p, mode="invertible")
    args = p.parse_args(argv)
    tf, _ = common.start_tf()
    values = common.paper_values(args)
    x, y = common.noise_batch(values["image_shape"], args.batch)
    run = common.build_run(common.run_config(mode=args.mode, **values))
    runs = collections.OrderedDict()
    for name, fetches, feed in run.init_runs(x, y):
        runs[name] = in_use(common.traced_run(run.sess, fetches, feed))
    fetches, feed = run.train_step_run(x, y)
    for step in range(1, args.steps + 1):
        runs["step_%d" % step] = in_use(common.traced_run(run.sess, fetches, feed))
    common.emit(dict(depth=args.depth, mode=args.mode, batch=args.batch, loop_steps=args.loop_steps,
                     bfc=os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), tf_version=tf.version.VERSION,
                     commit=common.git_commit(), variables_mib=_mib(common.variable_bytes(run.graph)),
                     in_use_mib=runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
