#!/usr/bin/env python
"""What one graph op costs in process memory, apart from any model: why the
graph's size, not only the activations, sets the paper's model's peak.

    python -m benchmarks.graph_memory --n_links 10000

Builds a chain of tiny ops (a variable, a multiply, an add and a ReLU per
link, 16 graph ops with the variable's own; on [4, 8] tensors: no
activation memory to speak of), then a gradient graph of the chain, and
prints one JSON line: the number of ops and the RSS (MiB) after building,
after running the initialisers (the session's first run), after running the
chain forward, after building and after running its gradients, and the MiB
per thousand ops of each stage.
"""
import argparse
import os
import sys

import numpy as np

if __name__ == "__main__" and not __package__:
    # Run by path: this folder, not the project root, is on sys.path; run
    # as the package's module instead (from the project root).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.graph_memory"] + sys.argv[1:])

from benchmarks import common  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_links", type=int, default=10000, help="links of the chain (one variable each)")
    args = p.parse_args(argv)
    tf, _ = common.start_tf(malloc=False)  # TensorFlow alone: glibc's defaults
    graph = tf.get_default_graph()
    stages = [("imports", common.rss_mib()[1], 0)]

    def stage(name):
        stages.append((name, common.rss_mib()[1], len(graph.get_operations())))

    x = tf.placeholder(tf.float32, [None, 8])
    h = x
    for i in range(args.n_links):
        w = tf.get_variable("w%d" % i, [8], use_resource=True)
        h = tf.nn.relu(h * w + 1.0)
    stage("forward_built")
    sess = tf.Session()
    sess.run(tf.global_variables_initializer())
    stage("initialisers_run")
    feed = {x: np.ones([4, 8], np.float32)}
    sess.run(h, feed)
    stage("forward_run")
    grads = tf.gradients(tf.reduce_sum(h), tf.trainable_variables())
    stage("gradients_built")
    sess.run(grads, feed)
    stage("gradients_run")
    out = dict(tf_version=tf.version.VERSION, n_ops=len(graph.get_operations()), rss_mib={}, mib_per_1000_ops={})
    for (_, before, ops_before), (name, after, ops_after) in zip(stages, stages[1:]):
        out["rss_mib"][name] = after
        # Per thousand ops of the whole graph for the session's runs (the
        # session converts all of it), per thousand new ops for the builds.
        n = ops_after - ops_before if name.endswith("_built") else ops_after
        out["mib_per_1000_ops"][name] = round((after - before) * 1000.0 / max(n, 1), 2)
    common.emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
