#!/usr/bin/env python
"""TensorFlow's own count of the bytes in use, per session run, while one
process sets up and trains Glow: what RSS cannot tell apart (tensors, the
allocator's retention, libraries).

    TF_CPU_ALLOCATOR_USE_BFC=true python scripts/memory_trace.py --depth 32 [--mode invertible] [--loop_steps]

Builds the trainer of bench.py's `cifar` config at --depth as
memory_stages.py does, then runs the initialisers, the data-dependent init
and --steps training steps, each traced (tf.RunOptions FULL_TRACE), and
prints one JSON line: for each run, the allocator's bytes in use when its
first op ran (what earlier runs left behind), the least and the most during
the run (MiB), and the op at the most (null where a run allocates
nothing). TF 2.21's CPU allocator reports these only with
TF_CPU_ALLOCATOR_USE_BFC=true, which also changes how memory is allocated:
compare runs made the same way.
"""
import argparse
import collections
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import bench  # noqa: E402
import runtime  # noqa: E402
import trainer as trainer_lib  # noqa: E402


def traced_run(sess, fetches, feed=None):
    """Run once, traced: {first, least, most: MiB in use, at: op at the most}."""
    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    metadata = tf.RunMetadata()
    sess.run(fetches, feed, options=options, run_metadata=metadata)
    points = [(m.allocator_bytes_in_use, n.all_start_micros, n.node_name)
              for d in metadata.step_stats.dev_stats for n in d.node_stats for m in n.memory
              if m.allocator_bytes_in_use > 0]
    if not points:
        return dict(first=None, least=None, most=None, at=None)

    def mib(b):
        return round(b / 2.0 ** 20, 1)

    most = max(points)
    return dict(first=mib(min(points, key=lambda p: p[1])[0]), least=mib(min(points)[0]), most=mib(most[0]),
                at=most[2])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--mode", default="invertible", choices=bench.MODES)
    p.add_argument("--batch", type=int, default=64, help="training (and init) batch size")
    p.add_argument("--steps", type=int, default=2, help="training steps")
    p.add_argument("--loop_steps", action="store_true", help="train.py --loop_steps: each level's steps as a loop")
    args = p.parse_args()
    tf.disable_v2_behavior()
    tf.logging.set_verbosity(tf.logging.ERROR)
    runtime.tune_malloc()
    spec = dict(config=dict(bench.CONFIGS["cifar"], name="cifar", depth=args.depth, batch=args.batch,
                            loop_steps=args.loop_steps),
                mode=args.mode, xla=False)
    cfg = bench.trainer_config(spec, 10)
    trainer = trainer_lib.Trainer(cfg, runtime.make_backend("none", "cpu"),
                                  lambda graph: tf.Session(graph=graph, config=runtime.session_config("cpu")))
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, [args.batch] + list(cfg.image_shape)).astype(np.uint8)
    y = np.zeros([args.batch], np.int32)
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
    with trainer.graph.as_default():
        variable_bytes = sum(v.get_shape().num_elements() * v.dtype.base_dtype.size for v in tf.global_variables())
    print(json.dumps(dict(depth=args.depth, mode=args.mode, batch=args.batch, loop_steps=args.loop_steps,
                          bfc=os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), tf_version=tf.version.VERSION,
                          variables_mib=round(variable_bytes / 2.0 ** 20, 1), in_use_mib=runs)))


if __name__ == "__main__":
    main()
