"""The benchmarks package on tiny configs: each tool runs end to end and
reports every figure it promises, and bench's FLOP count from the graph
equals the count from the architecture (so the utilisation figures rest on
the right numerator). Speed itself is measured by the benchmarks, never
asserted here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from benchmarks import bench, common

ROOT = common.ROOT


def glow_forward_flops(image_shape, n_levels, depth, width, coupling, learntop, **_):
    """Conv FLOPs per image (2 per multiply-add) of Glow's forward pass, from
    the architecture: per step a 1x1 invertible conv, the coupling network
    (3x3 conv of the kept half + edge channel, 1x1 conv, 3x3 zero conv of
    width + edge channel), per split the prior's 3x3 zero conv.

    Returns (total, of which the zero convs' edge channel)."""
    h, w, c = image_shape[0] // 2, image_shape[1] // 2, image_shape[2] * 4
    total = edge = 0
    for level in range(n_levels):
        hw = h * w
        n_out = c if coupling == "affine" else c // 2
        step = 2 * hw * c * c
        step += 2 * hw * width * 9 * (c // 2 + 1)
        step += 2 * hw * width * width
        step += 2 * hw * n_out * 9 * (width + 1)
        total += depth * step
        edge += depth * 2 * hw * n_out * 9
        if level < n_levels - 1:
            total += 2 * hw * c * 9 * (c // 2 + 1)
            edge += 2 * hw * c * 9
            h, w, c = h // 2, w // 2, c * 2
    if learntop:
        total += 2 * h * w * 2 * c * 9 * (2 * c + 1)
        edge += 2 * h * w * 2 * c * 9
    return total, edge


def test_tiny_benchmark_runs_and_counts_flops(tmp_path):
    """One worker (mode none) end to end; invertible backprop's FLOP count
    from the worker's own function (bench.count_flops) in this process."""
    out = tmp_path / "bench.json"
    cmd = common.module_command("bench", "--configs", "tiny", "--modes", "none", "--steps", "1",
                                "--warmup", "1", "--eval_steps", "1", "--sample_steps", "1", "--out", str(out))
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.bench --configs tiny")
    (plain,) = report["results"]
    assert "error" not in plain, report["results"]
    assert plain["mode"] == "none"
    cfg = common.CONFIGS["tiny"]
    inv = dict(zip(("forward_flops_per_image", "executed_flops_per_image"),
                   bench.count_flops(tf, common.run_config(mode="invertible", **cfg), cfg, "invertible")))

    # The zero convs' edge part is a conv of a constant [1, H, W, 1] image:
    # computed once per batch (not per image), and it needs no input gradient.
    batch = cfg["batch"]
    total, edge = glow_forward_flops(**cfg)
    forward = total - edge + edge // batch
    assert plain["forward_flops_per_image"] == forward == inv["forward_flops_per_image"]
    # Plain backprop runs each conv three times (forward, input and filter
    # gradients); invertible backprop adds each coupling network once (its
    # evaluation in the backward pass serves the inverse and the gradient)
    # and each 1x1 conv twice (inverted, then recomputed from the rebuilt
    # input): the flow's forward FLOPs (not the split priors, outside the
    # flow) plus its 1x1 convs once more.
    assert plain["executed_flops_per_image"] == 3 * (total - edge) + 2 * edge // batch
    total0, edge0 = glow_forward_flops(**dict(cfg, depth=0))
    flow = forward - (total0 - edge0 + edge0 // batch)
    side, n_c = cfg["image_shape"][0] // 2, cfg["image_shape"][2] * 4
    invconvs = cfg["depth"] * sum(2 * (side >> level) ** 2 * (n_c << level) ** 2 for level in range(cfg["n_levels"]))
    assert inv["executed_flops_per_image"] == plain["executed_flops_per_image"] + flow + invconvs

    # Timings are reported, never asserted: only that they are well formed
    # (a tiny config's op can take less than the clock's resolution).
    for key in ("train_images_per_sec", "eval_images_per_sec", "sample_images_per_sec", "utilisation",
                "train_cpu_busy"):
        assert np.isfinite(plain[key]) and plain[key] >= 0, (key, plain[key])
    assert plain["peak_rss_train_mib"] >= plain["rss_after_build_mib"] > 100
    assert plain["variable_bytes"] > 4 * 4 * plain["n_params"] - 1  # weights, Adamax m1/m2, Polyak average
    traced = plain["traced_step"]
    assert abs(sum(traced["running_ops_share"].values()) - 1.0) < 0.01, traced
    assert 0 <= traced["conv_matmul_op_seconds"] <= traced["op_seconds"]
    assert traced["span_seconds"] >= 0
    # The rate against the probe exists only where the convs' time was measurable.
    if traced["conv_matmul_op_seconds"] > 0:
        assert traced["conv_matmul_flops_per_op_second_vs_probe"] >= 0
    else:
        assert "conv_matmul_flops_per_op_second_vs_probe" not in traced
    assert "reconstruction_error" not in plain  # measured for mode invertible only
    (row,) = report["summary"]
    assert (row["mode"], row["time_per_step_vs_none"], row["peak_rss_vs_none"]) == ("none", 1.0, 1.0)


def test_bad_arguments_name_the_value():
    """Also run by path (python benchmarks/bench.py), which re-runs it as the module."""
    for argv, text in ((["--configs", "huge"], "unknown config 'huge'"),
                       (["--modes", "fast"], "unknown mode 'fast'"),
                       (["--set", "colour=1"], "--set colour=1: expected KEY=VALUE"),
                       (["--set", "depth=deep"], "--set depth=deep: depth takes an integer")):
        proc = subprocess.run([sys.executable, os.path.join("benchmarks", "bench.py")] + argv,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert proc.returncode == 2 and text in proc.stderr.decode(), proc.stderr.decode()


def test_overrides_are_typed_as_the_configs_values():
    overrides = common.parse_overrides(["depth=3", "image_shape=16x16x3", "loop_steps=1", "coupling=additive"])
    assert overrides == dict(depth=3, image_shape=[16, 16, 3], loop_steps=True, coupling="additive")
    values = common.config_values("tiny", overrides)
    assert values["depth"] == 3 and values["width"] == common.CONFIGS["tiny"]["width"]
    assert common.CONFIGS["tiny"]["depth"] == 2  # the named config is not changed
    with pytest.raises(ValueError, match="loop_steps=maybe: loop_steps takes 0 or 1"):
        common.parse_overrides(["loop_steps=maybe"])


def _json_line(module, *args, env=None):
    """The JSON line a diagnostic tool prints (its last line of stdout)."""
    cmd = common.module_command(module, *args)
    done = subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900,
                          env=dict(os.environ, **(env or {})))
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def test_graph_memory_counts_the_chain_and_every_stage():
    report = _json_line("graph_memory", "--n_links", "20")
    # 20 links of variable, multiply, add and ReLU, then their gradients.
    assert report["n_ops"] > 20 * 8
    stages = ["forward_built", "initialisers_run", "forward_run", "gradients_built", "gradients_run"]
    assert list(report["rss_mib"]) == stages
    assert all(report["rss_mib"][s] > 100 for s in stages)
    assert list(report["mib_per_1000_ops"]) == stages


def test_memory_stages_reports_each_stage_and_the_ops():
    report = _json_line("memory_stages", "--depth", "1", "--batch", "2", "--mode", "invertible")
    assert (report["depth"], report["batch"], report["mode"]) == (1, 2, "invertible")
    assert list(report["rss_mib_peak_current"]) == ["imports", "graph_built", "after_init", "after_step_1",
                                                    "after_step_2"]
    for peak, current in report["rss_mib_peak_current"].values():
        assert 0 < current <= peak + 1
    scopes = dict(report["ops_by_scope"])
    assert sum(scopes.values()) <= report["n_ops"] and "gradients" in scopes
    # Weights, two optimizer slots and the Polyak average: 4 float32 copies
    # of the paper's depth-1 model's parameters (about 1.5 million).
    assert 20 < report["variables_mib"] < 25
    peak = max(p for p, _ in report["rss_mib_peak_current"].values())
    assert report["peak_minus_variables_mib"] == pytest.approx(peak - report["variables_mib"], abs=0.2)


def test_memory_stages_build_only_with_loop_steps():
    report = _json_line("memory_stages", "--depth", "2", "--batch", "2", "--loop_steps", "--build_only")
    assert report["loop_steps"] is True
    assert list(report["rss_mib_peak_current"]) == ["imports", "graph_built"]
    assert report["n_ops"] > 1000 and "gradients" in dict(report["ops_by_scope"])


def test_memory_trace_reports_each_run():
    report = _json_line("memory_trace", "--depth", "1", "--batch", "2", "--steps", "2", "--loop_steps",
                        env={"TF_CPU_ALLOCATOR_USE_BFC": "true"})
    runs = report["in_use_mib"]
    assert list(runs) == ["global_init", "init_pass", "polyak_seed", "step_1", "step_2"]
    assert 20 < report["variables_mib"] < 25  # the paper's model at depth 1, as in memory_stages
    for name, run in runs.items():
        if name != "polyak_seed":  # its assignments may only alias the weights: nothing allocated
            assert 0 < run["least"] <= run["first"] <= run["most"], (name, run)
            assert run["at"], name
    for name in ("step_1", "step_2"):
        # What the step's own allocations held at its peak, largest first.
        live = runs[name]["live_at_most"]
        assert live and all(mib > 0 for _, mib in live), (name, live)
        assert [mib for _, mib in live] == sorted((mib for _, mib in live), reverse=True)
        assert live[0][1] <= runs[name]["live_mib"] <= runs[name]["most"], (name, runs[name])


def test_ab_steps_times_both_checkouts_in_turn(tmp_path):
    """Both sides serve timed steps in alternating order and the ratio is
    their median; a directory that is not a checkout is refused by name."""
    out = tmp_path / "ab.json"
    report = _json_line("ab_steps", "--before", ROOT, "--configs", "tiny", "--rounds", "3", "--warmup", "1",
                        "--before_mode", "none", "--mode", "invertible", "--out", str(out))
    assert report == json.loads(out.read_text())
    assert report["batch"] == 4 and report["rounds"] == 3
    assert (report["before_mode"], report["mode"]) == ("none", "invertible")
    before, after = report["before_step_seconds"], report["after_step_seconds"]
    assert len(before) == len(after) == 3 and min(before + after) > 0
    ratios = sorted(a / b for a, b in zip(after, before))
    assert abs(report["after_over_before_median"] - ratios[1]) < 1e-3 * ratios[1] + 1e-4
    lo, hi = report["after_over_before_quartiles"]
    assert lo <= report["after_over_before_median"] <= hi

    proc = subprocess.run(common.module_command("ab_steps", "--before", str(tmp_path)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.returncode == 2 and "%s: not a checkout" % tmp_path in proc.stderr.decode()


def test_overlap_shares_the_span_by_running_ops():
    # [0, 10) and [5, 20) overlap, nothing runs in [20, 30), then [30, 40).
    shared = bench.overlap([(0, 10, "MatMul"), (5, 15, "Slice"), (30, 10, "Conv2D")])
    assert shared["running_ops_share"] == {"0": 0.25, "1": 0.625, "2": 0.125, "3+": 0.0}
    assert shared["span_seconds"] == 4e-5 and shared["op_seconds"] == 3.5e-5
    assert shared["conv_matmul_op_seconds"] == 2e-5
    assert bench.overlap([]) is None


def test_spike_count_is_the_issues_definition():
    """benchmarks/spikes.py: a step after `after` more than `jump` above the lowest of the 20 before it; an
    episode is a run of such steps; the noise floor of unchanging weights counts next to nothing at a spread like
    the main job's and a lot at a wide one."""
    from benchmarks import spikes
    bits = [5.0] * 30 + [3.0] * 20 + [3.6, 3.6, 3.0, 3.4, 3.51] + [3.0] * 10
    jumps, episodes = spikes.spikes(bits, after=40, jump=0.5)
    assert jumps == [51, 52, 55] and episodes == [51, 55]
    assert spikes.largest_excess(bits, after=40) == pytest.approx(0.6)
    assert spikes.spikes(bits, after=52, jump=0.5)[0] == [55]
    calm = spikes.noise_floor(np.full(100, 2.7) + np.linspace(-0.1, 0.1, 100), trials=5)
    wild = spikes.noise_floor(np.r_[np.full(99, 2.7), 100.0], trials=5)
    assert calm[0] == 0 and calm[1] == 1.0 and wild[0] > 50, (calm, wild)
    # Independent Gaussian steps: none at a small spread, many at a wide one, the count rising with it.
    floors = [spikes.gaussian_floor(sd, trials=20)[0] for sd in (0.03, 0.1, 0.2)]
    assert floors[0] == 0 and floors[0] < floors[1] < floors[2], floors
    # The spread of steps around their neighbourhood: zero on a straight line, about the noise's sd on noise (a
    # little less: the median of the 21 steps around a step includes it; this seed gives 0.0915).
    assert spikes.step_spread(np.linspace(5, 3, 400), after=100) == pytest.approx(0, abs=1e-12)
    noisy = 3 + 0.1 * np.random.RandomState(0).randn(3000)
    assert spikes.step_spread(noisy, after=100) == pytest.approx(0.1, rel=0.15)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("CI"),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
def test_spike_anatomy_finds_the_group_that_moved(tmp_path):
    """spike_anatomy on the pretrained model against a copy with one
    variable moved (level 0, step 0, the coupling network's first conv):
    every row that takes that variable from 'after' gives the after loss,
    every other row the before loss. Tolerance: the rows evaluate the same
    images through the same graph with bit-equal weights, so only a
    thread-dependent summation order in the CPU kernels could differ: an
    image's log-density sums about 2,000 float32 terms of at most ~10 nats,
    which a reordering moves by at most n u sum|t| = 2e3 * 6e-8 * 2e4 = 2.4
    nats = 3.4e-3 bits/dim, about 1e-3 of the ~2.9 here: rtol 1e-3, against
    a move of 0.089 bits/dim (seen: every row equal to its expected one)."""
    from benchmarks import spike_anatomy
    import checkpoints
    pretrained = os.path.join(ROOT, "pretrained", "fashion-mnist")
    reader = tf.train.load_checkpoint(checkpoints.latest(os.path.join(pretrained, "checkpoints")))
    values = dict((k, np.asarray(reader.get_tensor(k))) for k in reader.get_variable_to_shape_map())
    moved = "model/0/step/f1/l_1/W"
    values[moved] = values[moved].copy()
    values[moved][0] += 0.02 * np.random.RandomState(0).randn(*values[moved].shape[1:]).astype(np.float32)
    after = checkpoints.write_values(values, str(tmp_path / "model.ckpt-1"))
    rows = spike_anatomy.anatomy(pretrained, after, [0])
    assert abs(rows["after"] - rows["before"]) > 0.03, rows  # the move changes the loss (by 0.089)
    takes_it = ["after", "before, level 0 all after", "before, level 0 f1/l_1 after", "before, level 0 step 0 after",
                "before + 1.00 (after - before)"]
    gives_it_back = ["after, level 0 before", "after, level 0 step 0 before", "after, level 0 step 0 f1/l_1 before"]
    for label, value in rows.items():
        if (label.startswith("before + ") and label not in takes_it) or "background noise" in label:
            continue  # part of the move; the noise placed, not drawn (test_placed_noise)
        want = rows["after"] if label in takes_it else rows["before"]
        np.testing.assert_allclose(value, want, rtol=1e-3, err_msg=label)
    assert set(takes_it + gives_it_back) <= set(rows) and "before, level 0 step 7 after" in rows
    assert "after, background noise at the bins' low edge" in rows


def test_placed_noise_moves_only_the_background():
    """The background's (x == 0) noise in the named part of the bin, the other pixels' uniform over the whole bin."""
    from benchmarks import spike_anatomy
    x = np.zeros((8, 32, 32, 1), np.uint8)
    x[:, 8:24] = 7
    for place, (low, high) in (("centre", (0.5, 0.5)), ("low edge", (0, 0.05)), ("high edge", (0.95, 1))):
        u = spike_anatomy.placed_noise(x, 256, place) * 256
        background, garment = u[x == 0], u[x != 0]
        assert low <= background.min() and background.max() <= high, place
        assert garment.min() < 0.01 and garment.max() > 0.99 and garment.max() <= 1, place


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("CI"),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
def test_eval_time_reports_every_setting_on_the_same_figures(tmp_path):
    """eval_time on the pretrained model, 100 test images: a row per test batch x runs at once, each with its
    times, and every setting's per-image figures against the first's. The batch size and the threads may change
    a kernel's summation order on another CPU: an image's bits/dim then moves by about 1e-5 relative (each coupling
    conv output sums up to 9 x 129 products, 24 steps: test_pretrained.py), below 1e-4 bits/dim at ~6 bits/dim at
    most here; bound 1e-3 bits/dim. Seen here: equal (0)."""
    from benchmarks import eval_time
    out = tmp_path / "eval.json"
    assert eval_time.main([os.path.join(ROOT, "pretrained", "fashion-mnist"), "--batches", "50", "100", "--parallel",
                           "1", "2", "--rounds", "1", "--n_images", "100", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_images"] == 100 and len(report["sample_grid_seconds"]) == 2
    assert [(r["batch"], r["parallel_runs"]) for r in report["evaluations"]] == [(50, 1), (50, 2), (100, 1), (100, 2)]
    for row in report["evaluations"]:
        assert len(row["seconds"]) == 1 and row["seconds"][0] > 0
        assert row["max_abs_diff_bits_x"] <= 1e-3, row
