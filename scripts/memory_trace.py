#!/usr/bin/env python
"""TensorFlow's own count of the bytes in use, per session run, while one
process sets up and trains Glow: what RSS cannot tell apart (tensors, the
allocator's retention, libraries).

    TF_CPU_ALLOCATOR_USE_BFC=true python scripts/memory_trace.py --depth 32 [--mode invertible] [--loop_steps]

Builds the trainer of bench.py's `cifar` config at --depth as
memory_stages.py does (memory_stages.paper_trainer), then runs the
initialisers, the data-dependent init and --steps training steps, each
traced (tf.RunOptions FULL_TRACE), and prints one JSON line: for each run,
the allocator's bytes in use when its first op ran (what earlier runs left
behind), the least and the most during the run (MiB), the op at the most
(null where a run allocates nothing), and which ops' allocations of the
run were still held then, largest first. TF 2.21's CPU allocator reports
these only with TF_CPU_ALLOCATOR_USE_BFC=true, which also changes how
memory is allocated: compare runs made the same way.
"""
import argparse
import collections
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import tensorflow.compat.v1 as tf  # noqa: E402

import memory_stages  # noqa: E402
import runtime  # noqa: E402


def traced_run(sess, fetches, feed=None, top=10):
    """Run once, traced: {first, least, most: MiB in use, at: op at the most,
    live_at_most: [[op, MiB], ...] the `top` ops whose outputs and scratch,
    allocated in this run, were still allocated when `at` ended (largest
    first), live_mib: their total over all ops}. What earlier runs left
    behind (the variables among it) is `first`, not in live_at_most."""
    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    metadata = tf.RunMetadata()
    sess.run(fetches, feed, options=options, run_metadata=metadata)
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

    def mib(b):
        return round(b / 2.0 ** 20, 1)

    most = max(points)
    live = collections.Counter()
    for micros, nbytes, name in records:
        if micros <= most[3]:
            live[name] += nbytes
    return dict(first=mib(min(points, key=lambda p: p[1])[0]), least=mib(min(points)[0]), most=mib(most[0]),
                at=most[2], live_at_most=[[name, mib(b)] for name, b in live.most_common(top) if b > 0],
                live_mib=mib(sum(b for b in live.values() if b > 0)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    memory_stages.add_run_flags(p, mode="invertible")
    args = p.parse_args()
    tf.disable_v2_behavior()
    tf.logging.set_verbosity(tf.logging.ERROR)
    runtime.tune_malloc()
    trainer, x, y = memory_stages.paper_trainer(
        args, lambda graph: tf.Session(graph=graph, config=runtime.session_config("cpu")))
    runs = collections.OrderedDict()
    # Trainer.initialize's runs, one by one.
    runs["global_init"] = traced_run(trainer.sess, trainer.global_init)
    runs["init_pass"] = traced_run(trainer.sess, trainer.init_loss, {trainer.x_init: x, trainer.y_init: y})
    runs["polyak_seed"] = traced_run(trainer.sess, trainer.opt.ema.seed_op)
    # Trainer.train_step's fetches and feeds.
    feed = {trainer.x: x, trainer.y: y, trainer.lr: 1e-4, trainer.loss_scale: 1.0}
    for step in range(1, args.steps + 1):
        runs["step_%d" % step] = traced_run(
            trainer.sess, [trainer.opt.train_op, trainer.opt.grads_finite, trainer.train_stats], feed)
    print(json.dumps(dict(depth=args.depth, mode=args.mode, batch=args.batch, loop_steps=args.loop_steps,
                          bfc=os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), tf_version=tf.version.VERSION,
                          variables_mib=memory_stages.variables_mib(trainer.graph), in_use_mib=runs)))


if __name__ == "__main__":
    main()
