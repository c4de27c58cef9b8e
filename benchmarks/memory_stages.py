#!/usr/bin/env python
"""RSS of one process at each stage of setting up and training the paper's
Glow, and where the graph's ops are.

    python -m benchmarks.memory_stages --depth 32 --mode invertible --loop_steps --steps 4

Builds the training graph of config `cifar` (benchmarks.common) at --depth
and --batch on uniform noise, then prints one JSON line: peak RSS
(ru_maxrss) and current RSS after importing TensorFlow, the graph build,
data-dependent init and each training step (--steps); the bytes of all
variables (weights, optimizer slots, Polyak averages) and the peak minus
them; the number of ops, the GraphDef's size and the ops per top-level name
scope; the commit of the code.
"""
import argparse
import collections
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run by path: this folder, not the project root, is on sys.path; run
    # as the package's module instead (from the project root).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.memory_stages"] + sys.argv[1:])

from benchmarks import common  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_paper_flags(p, mode="recompute")
    p.add_argument("--grappler_off", action="store_true", help="disable Grappler's meta optimizer")
    p.add_argument("--build_only", action="store_true", help="stop after building the graph (its op count)")
    p.add_argument("--malloc_defaults", action="store_true", help="leave glibc malloc's heaps at its defaults")
    args = p.parse_args(argv)
    _, malloc = common.start_tf(malloc=not args.malloc_defaults)
    stages = collections.OrderedDict(imports=common.rss_mib())
    values = common.paper_values(args)
    x, y = common.noise_batch(values["image_shape"], args.batch)
    run = common.build_run(common.run_config(mode=args.mode, **values), grappler=not args.grappler_off)
    stages["graph_built"] = common.rss_mib()
    ops = run.graph.get_operations()
    variables_mib = round(common.variable_bytes(run.graph) / 2.0 ** 20, 1)
    if not args.build_only:
        run.initialize(x, y)
        stages["after_init"] = common.rss_mib()
        for step in range(1, args.steps + 1):
            run.train_step(x, y)
            stages["after_step_%d" % step] = common.rss_mib()
    common.emit(dict(
        depth=args.depth, mode=args.mode, batch=args.batch, loop_steps=args.loop_steps,
        grappler_off=args.grappler_off, malloc_settings=malloc, commit=common.git_commit(),
        rss_mib_peak_current=stages, variables_mib=variables_mib,
        peak_minus_variables_mib=round(max(peak for peak, _ in stages.values()) - variables_mib, 1),
        n_ops=len(ops), graphdef_mib=round(run.graph.as_graph_def().ByteSize() / 2.0 ** 20, 1),
        ops_by_scope=collections.Counter(op.name.split("/")[0] for op in ops).most_common(12)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
