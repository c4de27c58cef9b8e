#!/usr/bin/env python
"""What one graph op costs in process memory, apart from any model: the
measurement behind docs/BENCHMARKS.md's "Where the memory goes".

    python scripts/graph_memory.py --n_links 10000

Builds a chain of tiny ops (a variable, a multiply, an add and a ReLU per
link, 16 graph ops with the variable's own; on [4, 8] tensors: no
activation memory to speak of), then a gradient graph of the chain, and
prints one JSON line: the number of ops and the RSS
(MiB) after the imports, after building, after running the initialisers (the
session's first run), after running the chain forward, after building and
after running its gradients, and the MiB per thousand ops of each step.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from memory_stages import rss_mib  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_links", type=int, default=10000, help="links of the chain (one variable each)")
    args = p.parse_args()
    tf.disable_v2_behavior()
    tf.logging.set_verbosity(tf.logging.ERROR)
    graph = tf.get_default_graph()
    stages = [("imports", rss_mib()[1], 0)]

    def stage(name):
        stages.append((name, rss_mib()[1], len(graph.get_operations())))

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
    print(json.dumps(out))


if __name__ == "__main__":
    main()
