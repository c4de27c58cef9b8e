#!/usr/bin/env python
"""RSS of one process at each stage of setting up and training Glow, and
where the graph's ops are: the diagnosis behind docs/BENCHMARKS.md's "Where
the memory goes".

    python scripts/memory_stages.py --depth 8 --mode recompute [--grappler_off] [--loop_steps]

Builds the trainer of bench.py's `cifar` config at --depth (uniform noise,
batch 64 or --batch), then prints one JSON line: peak RSS (ru_maxrss) and current RSS
after the imports, the graph build, data-dependent init and each training
step (--steps); the bytes of all variables (weights, optimizer slots, Polyak
averages) and the peak minus them; the number of ops, the GraphDef size and the
ops per top-level name scope.
"""
import argparse
import collections
import json
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import bench  # noqa: E402
import runtime  # noqa: E402
import trainer as trainer_lib  # noqa: E402


def rss_mib():
    """(peak, current) RSS in MiB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1), round(current / 2.0 ** 20, 1)


def add_run_flags(parser, mode):
    """The flags memory_stages.py and memory_trace.py share (--mode defaults to `mode`)."""
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--mode", default=mode, choices=bench.MODES)
    parser.add_argument("--batch", type=int, default=64, help="training (and init) batch size")
    parser.add_argument("--steps", type=int, default=2, help="training steps")
    parser.add_argument("--loop_steps", action="store_true",
                        help="train.py --loop_steps: each level's steps as a loop")


def paper_trainer(args, make_session):
    """The Trainer of bench.py's `cifar` config at args.depth, args.batch,
    args.mode, args.loop_steps, and a batch of uniform noise: (trainer, x, y)."""
    spec = dict(config=dict(bench.CONFIGS["cifar"], name="cifar", depth=args.depth, batch=args.batch,
                            loop_steps=args.loop_steps),
                mode=args.mode, xla=False)
    cfg = bench.trainer_config(spec, 10)
    trainer = trainer_lib.Trainer(cfg, runtime.make_backend("none", "cpu"), make_session)
    x = np.random.RandomState(0).randint(0, 256, [args.batch] + list(cfg.image_shape)).astype(np.uint8)
    return trainer, x, np.zeros([args.batch], np.int32)


def variables_mib(graph):
    """MiB of all of graph's variables (weights, optimizer slots, Polyak averages)."""
    with graph.as_default():
        n_bytes = sum(v.get_shape().num_elements() * v.dtype.base_dtype.size for v in tf.global_variables())
    return round(n_bytes / 2.0 ** 20, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_flags(p, mode="recompute")
    p.add_argument("--grappler_off", action="store_true", help="disable Grappler's meta optimizer")
    p.add_argument("--build_only", action="store_true", help="stop after building the graph (its op count)")
    p.add_argument("--malloc_defaults", action="store_true", help="skip runtime.tune_malloc (glibc's defaults)")
    args = p.parse_args()
    tf.disable_v2_behavior()
    tf.logging.set_verbosity(tf.logging.ERROR)
    malloc = {} if args.malloc_defaults else runtime.tune_malloc()  # as train.py runs
    stages = collections.OrderedDict(imports=rss_mib())

    def make_session(graph):
        config = runtime.session_config("cpu")
        config.graph_options.rewrite_options.disable_meta_optimizer = args.grappler_off
        return tf.Session(graph=graph, config=config)

    trainer, x, y = paper_trainer(args, make_session)
    stages["graph_built"] = rss_mib()
    ops = trainer.graph.get_operations()
    variables = variables_mib(trainer.graph)
    if not args.build_only:
        trainer.initialize(x, y)
        stages["after_init"] = rss_mib()
        for step in range(1, args.steps + 1):
            trainer.train_step(x, y, 1e-4)
            stages["after_step_%d" % step] = rss_mib()
    print(json.dumps(dict(
        depth=args.depth, mode=args.mode, batch=args.batch, loop_steps=args.loop_steps,
        grappler_off=args.grappler_off, malloc_settings=malloc,
        rss_mib_peak_current=stages, variables_mib=variables,
        peak_minus_variables_mib=round(max(peak for peak, _ in stages.values()) - variables, 1),
        n_ops=len(ops),
        graphdef_mib=round(trainer.graph.as_graph_def().ByteSize() / 2.0 ** 20, 1),
        ops_by_scope=collections.Counter(op.name.split("/")[0] for op in ops).most_common(12))))


if __name__ == "__main__":
    main()
