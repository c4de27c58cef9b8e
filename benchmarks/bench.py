#!/usr/bin/env python
"""Speed and memory of Glow training, evaluation and sampling, with figures
that survive a noisy machine.

    python -m benchmarks.bench --configs small --modes none,recompute,invertible \\
        --xla 0,1 --out bench-small.json

Each (config, checkpointing mode, XLA) combination runs in a fresh Python
process (so peak memory figures do not mix) that builds the real training
graph (as train.py does: Adamax, Polyak average, finite checks, evaluation
and sampling graphs on the same weights), feeds one fixed batch of uniform
uint8 noise (a step's work does not depend on the pixel values), and
measures:

  train/eval/sample images/s  after warm-up steps, over --steps timed steps;
  peak RSS                    ru_maxrss after training (graph, weights,
                              optimizer slots and the step's activations; the
                              init batch is the train batch so it does not set
                              the peak), and after everything;
  allocator peak              largest `allocator_bytes_in_use` in a traced
                              training step (TF 2.x's oneDNN allocator reports
                              it; TF 1.15's CPU allocator and XLA's clusters
                              do not: null);
  FLOPs per image             conv and matmul FLOPs (2 per multiply-add) from
                              the static shapes of a copy of the graph with a
                              static batch: `forward` is what the loss needs,
                              `executed` what the loss and its gradients run
                              (forward, recomputation, backward); elementwise
                              ops are not counted;
  matmul FLOP/s               a float32 2048^3 matmul in the same process
                              (median of 7), before and after the timing;
  utilisation                 3 x forward FLOPs x train images/s / matmul
                              FLOP/s, the larger of the two probes (the usual
                              "model FLOPs" convention: recomputation is not
                              useful work; `utilisation_executed` counts every
                              FLOP the step runs);
  CPU busy                    process CPU seconds per second of the timed
                              steps (2.0 is two cores busy; idle TF threads
                              spin a while first);
  traced step                 one training step traced: its span, summed op
                              time, the share of the span with 0, 1, 2, 3+
                              ops running, the conv/matmul ops' summed time
                              and the FLOP/s that gives them against the probe
                              (below 1 where they share the cores);
  reconstruction error        'invertible' only: max relative error of the
                              step inputs the backward pass rebuilt.

The summary adds ratios against the plain graph ('none') of the same config
and XLA setting (time per step, peak RSS). --profile adds the time per op
type (top 15) and per (op type, layer) (top 25) of the traced step. --xla 1
makes the session as train.py --xla does (CPU auto-clustering); the worker
reports how many XLA clusters the step's graph has.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

if __name__ == "__main__" and not __package__:
    # Run by path: this folder, not the project root, is on sys.path; run
    # as the package's module instead (from the project root).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench"] + sys.argv[1:])

from benchmarks import common  # noqa: E402

MATMUL_N = 2048
# Variable scopes that name a layer, for --profile's time per (op type, layer).
LAYERS = ("l_1", "l_2", "l_last", "actnorm", "invconv", "invconv_lu", "shuffle", "reverse", "prior")
FLOP_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMul",
            "BatchMatMulV2", "_FusedConv2D", "_MklFusedConv2D", "_FusedMatMul")


def parse_args(argv=None):
    names = ", ".join(sorted(common.CONFIGS))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", default="small", help="comma-separated names from %s" % names)
    p.add_argument("--modes", default=",".join(common.MODES), help="comma-separated gradient checkpointing modes")
    p.add_argument("--xla", default="0", help="comma-separated 0/1: XLA auto-clustering off/on")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every config, e.g. --set depth=8 --set loop_steps=1")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--eval_steps", type=int, default=5, help="timed evaluation batches (0: skip)")
    p.add_argument("--sample_steps", type=int, default=3, help="timed sampling batches (0: skip)")
    p.add_argument("--restore", default="", help="start from this checkpoint (prefix or folder) instead of init")
    p.add_argument("--profile", action="store_true", help="time per op type from one traced training step")
    p.add_argument("--timeout", type=float, default=3600, help="seconds a worker may take before it is stopped")
    p.add_argument("--out", default="", help="write the JSON here (it is always printed)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in args.configs.split(","):
        if name not in common.CONFIGS:
            p.error("--configs %s: unknown config %r, expected names from %s" % (args.configs, name, names))
    for mode in args.modes.split(","):
        if mode not in common.MODES:
            p.error("--modes %s: unknown mode %r, expected names from %s"
                    % (args.modes, mode, ", ".join(common.MODES)))
    for x in args.xla.split(","):
        if x not in ("0", "1"):
            p.error("--xla %s: expected 0, 1 or 0,1" % args.xla)
    try:
        args.overrides = common.parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    if args.steps < 1 or args.warmup < 0 or args.eval_steps < 0 or args.sample_steps < 0:
        p.error("--steps must be >= 1 and --warmup, --eval_steps, --sample_steps >= 0")
    return args


# ---------------------------------------------------------------------------
# Parent: one fresh process per combination.
# ---------------------------------------------------------------------------


def run_all(args, argv):
    started = time.time()
    results = []
    for name in args.configs.split(","):
        values = common.config_values(name, args.overrides)
        for xla in args.xla.split(","):
            for mode in args.modes.split(","):
                spec = dict(name=name, values=values, mode=mode, xla=xla == "1", steps=args.steps,
                            warmup=args.warmup, eval_steps=args.eval_steps, sample_steps=args.sample_steps,
                            restore=args.restore, profile=args.profile)
                results.append(run_worker(spec, args.timeout))
                sys.stderr.write("bench: %s\n" % json.dumps(brief(results[-1])))
    report = {
        "command": " ".join(["python -m benchmarks.bench"] + argv),
        "commit": common.git_commit(),
        "python": platform.python_version(),
        "tensorflow": sorted(set(r["tensorflow"] for r in results if "tensorflow" in r)),
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(time.time() - started, 1),
        "results": results,
        "summary": summarize(results),
    }
    common.emit(report, args.out, indent=1)
    return 0 if all("error" not in r for r in results) else 1


def run_worker(spec, timeout):
    proc = subprocess.Popen(common.module_command("bench", "--worker", json.dumps(spec)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=common.quiet_env(), cwd=common.ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += ("\nbench: worker stopped after --timeout %g s" % timeout).encode("utf-8")
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-15:]
        return dict(config=spec["name"], mode=spec["mode"], xla=spec["xla"],
                    error="worker exited with status %s" % proc.returncode, stderr_tail=tail)
    return json.loads(lines[-1])


def brief(r):
    keys = ("config", "mode", "xla", "train_images_per_sec", "utilisation", "peak_rss_train_mib", "error")
    return {k: r[k] for k in keys if k in r}


def summarize(results):
    """Ratios against the plain graph of the same config and XLA setting."""
    summary = []
    for r in results:
        if "error" in r:
            continue
        base = [b for b in results if "error" not in b and b["mode"] == "none" and b["config"] == r["config"]
                and b["xla"] == r["xla"] and b["config_values"] == r["config_values"]]
        row = brief(r)
        row["reconstruction_error"] = r.get("reconstruction_error")
        if base:
            b = base[0]
            row["time_per_step_vs_none"] = round(b["train_images_per_sec"] / r["train_images_per_sec"], 3)
            row["peak_rss_vs_none"] = round(r["peak_rss_train_mib"] / b["peak_rss_train_mib"], 3)
            row["peak_rss_minus_vars_vs_none"] = round(
                r["peak_rss_train_minus_vars_mib"] / b["peak_rss_train_minus_vars_mib"], 3)
        summary.append(row)
    return summary


# ---------------------------------------------------------------------------
# Worker: one combination in this process.
# ---------------------------------------------------------------------------


def op_flops(op):
    """Conv/matmul FLOPs of one op from its static shapes (None: not known)."""
    def dims(t):
        shape = t.get_shape()
        if not shape.is_fully_defined():
            return None
        return [int(d) for d in shape.as_list()]

    t = op.type
    if t in ("Conv2D", "_FusedConv2D", "_MklFusedConv2D"):
        out, w = dims(op.outputs[0]), dims(op.inputs[1])
        if out is None or w is None:
            return None
        return 2 * _prod(out) * w[0] * w[1] * w[2]
    if t in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):
        dy = dims(op.inputs[2])
        w = dims(op.inputs[1]) if t == "Conv2DBackpropInput" else dims(op.outputs[0])
        if dy is None or w is None or len(w) != 4:
            return None
        return 2 * _prod(dy) * w[0] * w[1] * w[2]
    if t in ("MatMul", "_FusedMatMul", "BatchMatMul", "BatchMatMulV2"):
        a, b = dims(op.inputs[0]), dims(op.inputs[1])
        if a is None or b is None:
            return None
        ta = op.get_attr("transpose_a") if t in ("MatMul", "_FusedMatMul") else op.get_attr("adj_x")
        tb = op.get_attr("transpose_b") if t in ("MatMul", "_FusedMatMul") else op.get_attr("adj_y")
        m, k = (a[-1], a[-2]) if ta else (a[-2], a[-1])
        n = b[-2] if tb else b[-1]
        return 2 * max(_prod(a[:-2]), _prod(b[:-2])) * m * k * n
    return None


def _prod(xs):
    n = 1
    for x in xs:
        n *= x
    return n


def subgraph_flops(fetches):
    """Conv/matmul FLOPs of everything `fetches` depend on."""
    seen, stack, total = set(), [getattr(f, "op", f) for f in fetches], 0
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type in FLOP_OPS:
            flops = op_flops(op)
            assert flops is not None, "no static shape for %s (%s)" % (op.name, op.type)
            total += flops
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return total


def count_flops(tf, cfg, values, mode):
    """(forward, executed) conv/matmul FLOPs per image: the loss, and the loss
    with its gradients (forward, recomputation, backward) as the training
    step runs them, from a copy of the graph with a static batch size, its
    steps unrolled (the same FLOPs as a loop's, in ops that can be counted)."""
    batch = values["batch"]
    with tf.Graph().as_default():
        x = tf.placeholder(tf.uint8, [batch] + list(values["image_shape"]))
        y = tf.placeholder(tf.int32, [batch])
        loss, _, grads = common.loss_and_gradients(cfg, x, y, mode, unrolled=True)
        return subgraph_flops([loss]) // batch, subgraph_flops(grads) // batch


def matmul_flops_per_sec(tf, session_config, repeats=7):
    """Median and best float32 matmul FLOP/s of a 2048^3 product (data on the
    graph, one op per run: what the machine's BLAS gets right now)."""
    graph = tf.Graph()
    with graph.as_default():
        a = tf.Variable(tf.random_normal([MATMUL_N, MATMUL_N]), name="a")
        b = tf.Variable(tf.random_normal([MATMUL_N, MATMUL_N]), name="b")
        # A scalar out: no copy of the result to Python.
        product = tf.reduce_sum(tf.matmul(a, b))
        init = tf.global_variables_initializer()
    with tf.Session(graph=graph, config=session_config) as sess:
        sess.run(init)
        sess.run(product)
        times = []
        for _ in range(repeats):
            t = time.time()
            sess.run(product)
            times.append(time.time() - t)
    flops = 2.0 * MATMUL_N ** 3
    times.sort()
    return flops / times[len(times) // 2], flops / times[0]


def timed(fn, n):
    t = time.time()
    for _ in range(n):
        fn()
    return time.time() - t


def reconstruction_error(tf, run, cfg, x, y):
    """The reconstruction error of the run's current weights on the batch,
    in a graph of its own (the run's is finalized)."""
    values = run.weights()
    graph = tf.Graph()
    with graph.as_default():
        loss, params, _ = common.loss_and_gradients(cfg, tf.constant(x), tf.constant(y), "invertible",
                                                    dequantize=False)
        error = common.reconstruction_error(loss)
        # One assign op for all weights: a session run per variable (v.load)
        # builds an executor each, minutes on the paper's model.
        holders = [tf.placeholder(v.dtype.base_dtype, v.get_shape()) for v in params]
        load = tf.group(*[v.assign(h) for v, h in zip(params, holders)])
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(load, {h: values[v.op.name] for v, h in zip(params, holders)})
            return float(sess.run(error))


def trace_step(run, x, y):
    """One traced training step: time share per op type and per layer,
    allocator peak, XLA clusters, and how the step's ops shared the CPU."""
    fetches, feed = run.train_step_run(x, y)
    md = common.traced_run(run.sess, fetches, feed, partition_graphs=True)
    names = {}
    for g in md.partition_graphs:
        for node in g.node:
            names[node.name] = node.op
    by_type, by_layer, spans, peak = {}, {}, [], None
    for dev in md.step_stats.dev_stats:
        for ns in dev.node_stats:
            op_type = names.get(ns.node_name.split(":")[0], "other")
            micros = ns.all_end_rel_micros or (ns.op_end_rel_micros - ns.op_start_rel_micros)
            spans.append((ns.all_start_micros, micros, op_type))
            by_type[op_type] = by_type.get(op_type, 0) + micros
            parts = ns.node_name.split("/")
            layer = [p for p in parts if p in LAYERS][-1:] or ["other"]
            key = "%s %s%s" % (op_type, layer[0], " (grad)" if parts[0].startswith("gradients") else "")
            by_layer[key] = by_layer.get(key, 0) + micros
            for m in ns.memory:
                if m.allocator_bytes_in_use:
                    peak = max(peak or 0, m.allocator_bytes_in_use)
    total = float(sum(by_type.values())) or 1.0
    top = sorted(by_type.items(), key=lambda kv: -kv[1])[:15]
    top_layer = sorted(by_layer.items(), key=lambda kv: -kv[1])[:25]
    clusters = sum(1 for op in names.values() if op in ("_XlaRun", "XlaRun"))
    return ({k: round(v / total, 4) for k, v in top}, {k: round(v / total, 4) for k, v in top_layer}, peak,
            clusters, overlap(spans))


def overlap(spans):
    """How the traced ops shared the CPU, from (start, duration, op type)
    in microseconds: the step's span and summed op time in seconds, the
    share of the span with 0, 1, 2, 3 or more ops running, and the summed
    time of the conv/matmul ops (FLOP_OPS), the denominator of the FLOP/s
    they got while running."""
    if not spans:
        return None
    events = sorted([(start, 1) for start, _, _ in spans] + [(start + d, -1) for start, d, _ in spans])
    running, last, share = 0, events[0][0], [0, 0, 0, 0]
    for t, delta in events:
        share[min(running, 3)] += t - last
        running, last = running + delta, t
    span = float(events[-1][0] - events[0][0]) or 1.0
    return dict(span_seconds=round(span / 1e6, 6), op_seconds=round(sum(d for _, d, _ in spans) / 1e6, 6),
                running_ops_share={k: round(v / span, 3) for k, v in zip(("0", "1", "2", "3+"), share)},
                conv_matmul_op_seconds=round(sum(d for _, d, t in spans if t in FLOP_OPS) / 1e6, 6))


def worker(spec):
    tf, malloc = common.start_tf()  # malloc as train.py sets it
    values, batch = spec["values"], spec["values"]["batch"]
    out = dict(config=spec["name"], config_values=values, mode=spec["mode"], xla=spec["xla"],
               tensorflow=tf.version.VERSION, python=platform.python_version(), steps=spec["steps"],
               warmup=spec["warmup"], load_avg_start=os.getloadavg()[0], malloc_settings=malloc,
               data="uniform uint8 noise")
    x, y = common.noise_batch(values["image_shape"], batch)
    cfg = common.run_config(mode=spec["mode"], xla=spec["xla"], **values)
    probe_config = common.probe_session_config()
    t = time.time()
    run = common.build_run(cfg, xla=spec["xla"])
    out["graph_build_seconds"] = round(time.time() - t, 1)
    out["n_params"] = common.n_params(run.graph)
    out["variable_bytes"] = common.variable_bytes(run.graph)
    out["rss_after_build_mib"] = common.rss_mib()[0]

    t = time.time()
    if spec["restore"]:
        run.restore(spec["restore"])
    else:
        run.initialize(x, y)
    out["init_seconds"] = round(time.time() - t, 1)
    out["rss_after_init_mib"] = common.rss_mib()[0]

    mm_before = matmul_flops_per_sec(tf, probe_config)
    for _ in range(spec["warmup"]):
        run.train_step(x, y)
    step_times = []
    # Process CPU seconds (user + system, all threads) per second of the
    # steps. process_time, not os.times: a tiny config's step can take less
    # than os.times' 10 ms tick.
    cpu = time.process_time()
    for _ in range(spec["steps"]):
        t = time.time()
        run.train_step(x, y)
        step_times.append(time.time() - t)
    out["train_cpu_busy"] = round((time.process_time() - cpu) / sum(step_times), 3)
    out["peak_rss_train_mib"] = common.rss_mib()[0]
    out["peak_rss_train_minus_vars_mib"] = round(out["peak_rss_train_mib"] - out["variable_bytes"] / 2.0 ** 20, 1)
    mm_after = matmul_flops_per_sec(tf, probe_config)

    out["train_step_seconds"] = [round(s, 4) for s in step_times]
    out["train_images_per_sec"] = round(batch * len(step_times) / sum(step_times), 2)
    out["matmul_flops_per_sec"] = {"median_before": mm_before[0], "median_after": mm_after[0],
                                   "best": max(mm_before[1], mm_after[1])}

    # A traced step, after the RSS figure above.
    by_type, by_layer, peak, clusters, shared = trace_step(run, x, y)
    out["traced_step"] = shared
    if spec["profile"]:
        out["op_time_share_top15"] = by_type
        out["op_time_share_by_layer_top25"] = by_layer
    # XLA's compiled clusters allocate outside what the trace reports.
    out["allocator_peak_mib"] = None if peak is None or spec["xla"] else round(peak / 2.0 ** 20, 1)
    out["xla_clusters"] = clusters
    if spec["eval_steps"]:
        run.evaluate(x, y)
        seconds = timed(lambda: run.evaluate(x, y), spec["eval_steps"])
        out["eval_images_per_sec"] = round(batch * spec["eval_steps"] / seconds, 2)
    if spec["sample_steps"]:
        run.sample(y)
        seconds = timed(lambda: run.sample(y), spec["sample_steps"])
        out["sample_images_per_sec"] = round(batch * spec["sample_steps"] / seconds, 2)
    out["peak_rss_end_mib"] = common.rss_mib()[0]
    if spec["mode"] == "invertible":
        out["reconstruction_error"] = reconstruction_error(tf, run, cfg, x, y)
    # Last: the extra graphs must not count in the peaks above.
    out["forward_flops_per_image"], out["executed_flops_per_image"] = count_flops(tf, cfg, values, spec["mode"])
    # The larger of the two medians: a probe that happened to share the CPU
    # with something else must not inflate the ratio.
    matmul = max(mm_before[0], mm_after[0])
    out["achieved_model_flops_per_sec"] = 3.0 * out["forward_flops_per_image"] * out["train_images_per_sec"]
    out["utilisation"] = round(out["achieved_model_flops_per_sec"] / matmul, 4)
    out["utilisation_executed"] = round(out["executed_flops_per_image"] * out["train_images_per_sec"] / matmul, 4)
    if shared and shared["conv_matmul_op_seconds"] > 0:
        # What the step's convs and matmuls got while they ran, against the
        # probe (which has the cores to itself): below 1 where they share.
        op_rate = out["executed_flops_per_image"] * batch / shared["conv_matmul_op_seconds"]
        shared["conv_matmul_flops_per_op_second_vs_probe"] = round(op_rate / matmul, 4)
    out["load_avg_end"] = os.getloadavg()[0]
    run.close()
    print(json.dumps(out, sort_keys=True))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    return run_all(args, argv)


if __name__ == "__main__":
    sys.exit(main())
