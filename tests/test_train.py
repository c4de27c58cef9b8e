"""train.py end to end on the real Fashion-MNIST (Debian's
dataset-fashion-mnist, installed by .ci/run), pooled to 16x16 (the loader's
--image_size), with short epochs of 2,048 images and a 256-image test
subset: training lowers test bits/dim, --resume continues, Ctrl-C saves,
non-finite steps are survived, every mode runs, and bad flags give clear
errors.

Most of a short run's time is building its graph, so the tests that only
need a trained run (the modes, the two weightings, a singular 1x1 conv)
share the 10-epoch run that the first test checks (fixture `trained`): each
works on a copy of its folder, or restores its checkpoint first."""
import contextlib
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import tensorflow.compat.v1 as tf

import checkpoints
import evaluator
import train
import utils

FMNIST = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")

# 16x16 images with the batch sizes given at 16 px: 64 per training step.
TINY = ["--problem", "fashion-mnist", "--image_size", "16", "--anchor_size", "16", "--n_levels", "2",
        "--depth", "2", "--width", "32", "--flow_coupling", "affine", "--n_train", "2048", "--n_test", "256",
        "--n_batch_init", "128", "--gradient_checkpointing", "0", "--epochs_warmup", "1", "--seed", "1"]
N_TEST = 256
# For the runs that test the loop's mechanics (resuming, stopping, failed
# steps), not what the model learns: one flow step per level, half the graph
# to build (one step per level learns too little to show a steady decrease).
SHALLOW = ["--depth", "1"]


def _run(tmp_path, *extra, **kwargs):
    logdir = str(kwargs.pop("logdir", tmp_path / "logs"))
    status = train.main(TINY + ["--logdir", logdir] + list(extra))
    return status, logdir


def _records(logdir, name):
    return [r for r in utils.read_jsonl(os.path.join(logdir, name)) if "problem" not in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The folder of a 10-epoch run (320 steps), with TensorBoard summaries.
    Tests that write into a run folder take a copy (`copy_of`). Its stdout,
    not a terminal, with a progress line each step, is stdout.txt beside it."""
    out, parent = io.StringIO(), tmp_path_factory.mktemp("trained")
    with contextlib.redirect_stdout(out):
        status, logdir = _run(parent, "--epochs", "10", "--lr", "0.002", "--tensorboard", "--progress_seconds", "1e-6")
    (parent / "stdout.txt").write_text(out.getvalue())
    assert status == 0, out.getvalue()[-3000:]
    return logdir


def copy_of(run_folder, tmp_path):
    logdir = str(tmp_path / "logs")
    shutil.copytree(run_folder, logdir)
    return logdir


def test_training_lowers_test_bits_and_writes_everything(trained):
    logdir = trained
    tests = _records(logdir, "test.txt")
    trains = _records(logdir, "train.txt")
    assert [r["epoch"] for r in trains] == list(range(1, 11))  # 32 steps per epoch: 320 steps
    # An untrained Glow (after its data-dependent init) is about as good as a
    # uniform distribution over the 256 levels, 8 bits/dim (one step at a
    # learning rate of nearly zero: 8.08 here): training must take a bit off
    # that, and go on lowering the test figure after epoch 1.
    final = tests[-1]["bits_x"]
    assert final < 7.0 and final < tests[0]["bits_x"] - 0.5, [t["bits_x"] for t in tests]
    assert trains[-1]["n_skipped"] == 0
    first = utils.read_jsonl(os.path.join(logdir, "train.txt"))[0]
    assert first["problem"] == "fashion-mnist" and first["depth"] == 2 and first["train_its"] == 32
    # Both test figures, raw (the paper's) first, with the raw median and worst images.
    assert all(np.isfinite([t["bits_x"], t["bits_x_polyak"], t["median_bits_x"]]).all() for t in tests)
    assert tests[-1]["n_images"] == N_TEST and len(tests[-1]["worst_images"]) == train.N_WORST
    assert tests[-1]["worst_images"][0][1] >= tests[-1]["median_bits_x"]
    assert all(isinstance(t["eval_seconds"], float) for t in tests)  # recorded (its size is a benchmark's)
    # Samples of epochs 1 and 10 (also the last), drawn with the better weights of that epoch.
    samples = os.listdir(os.path.join(logdir, "samples"))
    assert len(samples) == 2 * 8
    for epoch in (1, 10):
        weights = train.better_weights(tests[epoch - 1])
        assert "epoch_%04d_t0.70_%s.png" % (epoch, weights) in samples
    assert os.path.exists(os.path.join(logdir, "best", "checkpoint"))
    # stdout off a terminal: plain lines only, the last progress line's running bits/dim the epoch's.
    with open(os.path.join(os.path.dirname(logdir), "stdout.txt")) as f:
        out = f.read()
    assert "\r" not in out
    last = re.search(r"^epoch 10 step 32/32 \(100%\)  images/s [\d.]+  bits/dim ([\d.]+)  eta 0:00:00$", out, re.M)
    assert last and abs(float(last.group(1)) - trains[-1]["bits_x"]) < 2e-4, out[-3000:]


def test_n_train_is_the_epoch_and_train_subset_the_data(tmp_path):
    """openai/glow's --n_train sets the epoch (here 2048 images: 32 steps),
    not how much of the training set is used; --train_subset does that."""
    status, logdir = _run(tmp_path, *SHALLOW, "--epochs", "1", "--max_steps", "2", "--train_subset", "256")
    assert status == 0
    header = utils.read_jsonl(os.path.join(logdir, "train.txt"))[0]
    assert (header["n_train"], header["train_subset"], header["n_train_images"], header["train_its"]) == \
        (2048, 256, 256, 32)
    assert _records(logdir, "train.txt")[-1]["n_processed"] == 2 * 64
    with pytest.raises(ValueError, match=r"n_train \(train.py's --train_subset\) 60001: must be 1..60000"):
        _run(tmp_path, "--train_subset", "60001", logdir=tmp_path / "too_many")


def test_resume_continues_from_saved_step(tmp_path):
    """A run stopped by --max_steps 20 inside epoch 1 (32 steps) resumes
    inside epoch 1; resuming again at or past --max_steps trains nothing."""
    status, logdir = _run(tmp_path, *SHALLOW, "--epochs", "1", "--max_steps", "20")
    assert status == 0
    status, _ = _run(tmp_path, *SHALLOW, "--epochs", "1", "--max_steps", "20", "--resume")
    assert status == 0
    assert [(r["epoch"], r["step"]) for r in _records(logdir, "train.txt")] == [(1, 20)]
    status, _ = _run(tmp_path, *SHALLOW, "--epochs", "2", "--resume")
    assert status == 0
    events = _records(logdir, "events.txt")
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert [(e["step"], e["epoch"]) for e in resumed] == [(20, 0), (20, 0)]
    trains = _records(logdir, "train.txt")
    assert [(r["epoch"], r["step"], r.get("partial")) for r in trains] == [(1, 20, True), (1, 32, None),
                                                                           (2, 64, None)]
    lines = utils.read_jsonl(os.path.join(logdir, "train.txt"))
    assert lines[0].get("resumed") is None and any(line.get("resumed") for line in lines[1:])
    # The resumed run prunes the first run's checkpoints too (max_to_keep 2):
    # steps 0 and 20 were written before, 32 and 64 after.
    kept = sorted(f for f in os.listdir(os.path.join(logdir, "checkpoints")) if f.endswith(".index"))
    assert kept == ["model.ckpt-32.index", "model.ckpt-64.index"], kept
    # Resuming with a smaller model is refused, both values named, and nothing is pruned.
    with pytest.raises(ValueError, match="--n_levels 1 contradicts the run's --n_levels 2"):
        _run(tmp_path, *SHALLOW, "--epochs", "3", "--resume", "--n_levels", "1")
    assert sorted(f for f in os.listdir(os.path.join(logdir, "checkpoints")) if f.endswith(".index")) == kept


def test_lr_decay_is_applied_and_kept_on_resume(tmp_path):
    """--lr_decay rsqrt with a warm-up of 16 steps (half an epoch of 32): the rate logged at steps 20, 32 and 64 is
    lr x sqrt(16 / step); the resumed run, not given the flag, keeps the run's decay."""
    flags = list(SHALLOW) + ["--optimizer", "adam", "--lr", "0.002", "--epochs_warmup", "0.5"]
    assert _run(tmp_path, *flags, "--lr_decay", "rsqrt", "--epochs", "1", "--max_steps", "20")[0] == 0
    status, logdir = _run(tmp_path, *flags, "--epochs", "2", "--resume")
    assert status == 0
    lines = _records(logdir, "train.txt")
    assert [r["step"] for r in lines] == [20, 32, 64]
    # rtol 1e-12: the same float64 rate in another order of operations, a few roundings of 1.1e-16 (seen: equal)
    np.testing.assert_allclose([r["lr"] for r in lines], [0.002 * (16.0 / r["step"]) ** 0.5 for r in lines],
                               rtol=1e-12)


def test_cooldown_is_applied_and_kept_on_resume(tmp_path):
    """--epochs_cooldown 1 of --epochs 2 (32 steps an epoch, the warm-up over by step 16): the rate logged after step
    32 is --lr, after step 40 three quarters of it (24 of the cool-down's 32 steps to come), 0 at the end; the
    resumed run, not given the flag, keeps the run's cool-down."""
    flags = list(SHALLOW) + ["--optimizer", "adam", "--lr", "0.002", "--epochs_warmup", "0.5", "--epochs", "2"]
    assert _run(tmp_path, *flags, "--epochs_cooldown", "1", "--max_steps", "40")[0] == 0
    status, logdir = _run(tmp_path, *flags, "--resume")
    assert status == 0
    lines = _records(logdir, "train.txt")
    assert [r["step"] for r in lines] == [32, 40, 64]
    # rtol 1e-12: the same float64 rate in another order of operations, a few roundings of 1.1e-16 (seen: equal)
    np.testing.assert_allclose([r["lr"] for r in lines], [0.002, 0.0015, 0.0], rtol=1e-12, atol=0)


def test_nonfinite_steps_are_skipped_then_recovered(tmp_path, monkeypatch):
    """Steps 5..16 report non-finite: each is skipped and logged, after
    --max_nonfinite in a row the last checkpoint is restored with a lower
    learning rate, and training goes on to lower bits/dim."""
    real_step = train.trainer_lib.Trainer.train_step
    calls = {"n": 0}

    def flaky_step(self, x, y, lr, loss_scale=1.0, stop=False):
        calls["n"] += 1
        if 5 <= calls["n"] <= 16:
            return False, None
        return real_step(self, x, y, lr, loss_scale, stop)

    monkeypatch.setattr(train.trainer_lib.Trainer, "train_step", flaky_step)
    status, logdir = _run(tmp_path, "--epochs", "3", "--max_nonfinite", "5")
    assert status == 0
    events = _records(logdir, "events.txt")
    assert sum(e.get("event") == "skipped_step" for e in events) == 12
    recovered = [e for e in events if e.get("event") == "recovered"]
    assert [e["lr_scale"] for e in recovered] == [0.5, 0.25]
    tests = _records(logdir, "test.txt")
    assert tests[-1]["bits_x"] < tests[0]["bits_x"]


def test_the_weightings_run_at_the_same_time(opened, monkeypatch):
    """eval_weightings lets a batch's two runs (raw, Polyak) go at once: each waits at a barrier for the other,
    which runs one after the other would never pass (BrokenBarrierError after the timeout); with parallel_runs 1
    (the NPU's setting) they take turns."""
    run, tr = opened, _restored(opened)
    barrier, real_run = threading.Barrier(2, timeout=60), evaluator.Evaluator._run

    def meeting_run(self, *args):
        barrier.wait()
        return real_run(self, *args)

    monkeypatch.setattr(evaluator.Evaluator, "_run", meeting_run)
    x, y = next(iter(run.data.test_batches(8)))
    both = tr.eval_weightings([(x, y), (x, y)])
    assert sorted(both) == sorted(evaluator.WEIGHTS)
    monkeypatch.setattr(tr, "parallel_runs", 1)
    barrier = threading.Barrier(2, timeout=2)
    with pytest.raises(threading.BrokenBarrierError):
        tr.eval_weightings([(x, y)])


def test_the_evaluation_noise_is_drawn_once(opened, monkeypatch):
    """A test line's dequantisation noise is drawn once per batch and kept for the next test line (the same
    figures); beyond evaluator.NOISE_KEPT_BYTES it is drawn again each time."""
    run, tr = opened, _restored(opened)
    calls, real = [], evaluator.dequantization_noise
    monkeypatch.setattr(evaluator, "dequantization_noise", lambda *args: calls.append(args) or real(*args))
    for kept, draws_per_line in ((evaluator.NOISE_KEPT_BYTES, 0), (0, 1)):
        monkeypatch.setattr(evaluator, "NOISE_KEPT_BYTES", kept)
        tr._kept_noise.clear()
        first = train.evaluate(run)[1]
        n_batches = len(calls)
        assert n_batches == -(-run.data.n_test // run.cfg.local_batch_test)
        second = train.evaluate(run)[1]
        assert len(calls) == n_batches * (1 + draws_per_line)
        for w in evaluator.WEIGHTS:
            np.testing.assert_array_equal(first[w]["bits_x"], second[w]["bits_x"])
        del calls[:]


def _failing_step(monkeypatch, failing_calls):
    """Trainer.train_step raising an op error on the given calls (1-based)."""
    real_step = train.trainer_lib.Trainer.train_step
    calls = {"n": 0}

    def step(self, x, y, lr, loss_scale=1.0, stop=False):
        calls["n"] += 1
        if calls["n"] in failing_calls:
            raise train.tf.errors.InvalidArgumentError(None, None, "Input is not invertible.")
        return real_step(self, x, y, lr, loss_scale, stop)

    monkeypatch.setattr(train.trainer_lib.Trainer, "train_step", step)


def test_op_error_in_a_step_is_skipped_with_one_rank(tmp_path, monkeypatch):
    _failing_step(monkeypatch, {3, 4})
    status, logdir = _run(tmp_path, *SHALLOW, "--epochs", "1", "--max_steps", "8")
    assert status == 0
    skipped = [e for e in _records(logdir, "events.txt") if e.get("event") == "skipped_step"]
    assert [e["step"] for e in skipped] == [3, 4]
    assert all("Input is not invertible" in e["reason"] for e in skipped)


class _TwoRanksInOneProcess(train.runtime.Backend):
    """Rank 0 of 2, with collectives that return their inputs (the other
    rank is not there): enough for train.py to take its multi-rank paths."""

    def __init__(self, device):
        super(_TwoRanksInOneProcess, self).__init__(device, rank=0, size=2)

    def _allreduce_mean_one(self, tensor):
        return tensor

    def _broadcast(self, variables, root):
        return [v.read_value() for v in variables]


def test_op_error_on_one_of_several_ranks_stops_with_resume_advice(tmp_path, monkeypatch):
    """With other ranks in the step's allreduce, a rank cannot skip a failed
    step alone: it stops with a clear error and logs it; rank 0 first saves
    the two steps done, for --resume."""
    _failing_step(monkeypatch, {3})
    monkeypatch.setattr(train.runtime, "make_backend", lambda name, device: _TwoRanksInOneProcess(device))
    logdir = tmp_path / "logs"
    with pytest.raises(RuntimeError, match=r"rank 0 of 2: Input is not invertible.*step 3.*saved a checkpoint "
                                           r"at step 2: rerun with --resume"):
        _run(tmp_path, *SHALLOW, "--epochs", "1", "--max_steps", "8", logdir=logdir)
    failed = [e for e in _records(str(logdir), "events.txt") if e.get("event") == "step_failed"]
    assert [e["step"] for e in failed] == [3]
    assert train.tf.train.latest_checkpoint(str(logdir / "checkpoints")).endswith("model.ckpt-2")
    status, _ = _run(tmp_path, *SHALLOW, "--epochs", "1", "--max_steps", "4", "--resume", logdir=logdir)
    assert status == 0 and [r["step"] for r in _records(str(logdir), "train.txt")] == [4]


@pytest.fixture(scope="module")
def opened(trained, tmp_path_factory):
    """The trained run's graph and session (on 64 test images), for the tests
    that drive a Trainer directly; each first restores the checkpoint, so
    what one changes in the session does not reach the next."""
    logdir = copy_of(trained, tmp_path_factory.mktemp("opened"))
    run = _open_run(train.config.parse_args(TINY + ["--logdir", logdir, "--n_test", "64"]))
    yield run
    run.close()


def _restored(run):
    run.graphs.restore(os.path.join(run.logdir, "checkpoints"))
    return run.graphs


def test_singular_invconv_is_skipped_in_the_graph(opened):
    """A 1x1 conv weight set to a singular matrix makes the loss non-finite:
    the step is not applied (weights unchanged) and counted."""
    tr = _restored(opened)
    assert tr.n_skipped() == 0
    w = [v for v in tr.graph.get_collection("trainable_variables") if v.name.endswith("invconv/W:0")][0]
    w.load(np.zeros(w.get_shape().as_list(), np.float32), tr.sess)
    before = tr.sess.run(tr.graph.get_collection("trainable_variables"))
    x, y = opened.data.init_batch(64)
    applied, _ = tr.train_step(x, y, 1e-3)
    after = tr.sess.run(tr.graph.get_collection("trainable_variables"))
    assert not applied and tr.n_skipped() == 1
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _open_run(args):
    backend = train.runtime.make_backend("none", "cpu")
    data = train.data_loaders.get_data("fashion-mnist", n_train=args.train_subset, n_test=args.n_test)
    cfg = train.config.derive_config(args, data.image_shape, data.n_y, data.n_train, data.n_test, 1)
    tr = train.trainer_lib.Trainer(cfg, backend, lambda g: train.runtime.make_session("cpu", backend, graph=g))
    return train.Run(cfg, data, tr, backend)


def _check_tensorboard(folder):
    """--tensorboard wrote, read back by TensorFlow's own reader: each epoch's sample grids as images, the raw
    and Polyak test bits/dim, the learning rate and images/s as scalars, the test images' bits/dim as a histogram."""
    files = [f for f in os.listdir(folder) if f.startswith("events.out.tfevents")]
    assert len(files) == 1, files
    seen = {}
    for event in tf.train.summary_iterator(os.path.join(folder, files[0])):
        for value in event.summary.value:
            seen.setdefault(value.tag, []).append((event.step, value))
    for tag in ("test/bits_x", "test/bits_x_polyak", "train/lr", "train/images_per_s", "train/bits_x"):
        assert len(seen.get(tag, [])) == 10 and all(np.isfinite(v.simple_value) for _, v in seen[tag]), tag
    assert [step for step, _ in seen["train/lr"]] == [32 * epoch for epoch in range(1, 11)]
    histograms = [v.histo for _, v in seen["test/bits_x_per_image"]]
    assert len(histograms) == 10 and all(h.num == N_TEST and sum(h.bucket) == N_TEST for h in histograms)
    assert histograms[-1].min <= _records(os.path.dirname(folder), "test.txt")[-1]["median_bits_x"]
    images = [v.image for _, v in seen["samples/t0.70"]]
    assert len(images) == 2 and (images[0].height, images[0].width, images[0].colorspace) == (160, 160, 1)
    assert images[0].encoded_image_string.startswith(b"\x89PNG") and len(seen) > 20


def test_modes_inference_evaluate_sample(trained, tmp_path):
    logdir = copy_of(trained, tmp_path)
    _check_tensorboard(os.path.join(logdir, "tensorboard"))
    assert _run(tmp_path, "--inference")[0] == 0
    z = np.load(os.path.join(logdir, "z.npy"))
    x = np.load(os.path.join(logdir, "x.npy"))
    assert z.shape == (N_TEST, 16 * 16) and x.shape == (N_TEST, 16, 16, 1) and x.dtype == np.uint8
    assert _run(tmp_path, "--evaluate", "--n_dequant_draws", "2", "--per_image")[0] == 0
    evaluated = _records(logdir, "test.txt")[-1]
    assert evaluated["mode"] == "evaluate" and evaluated["n_images"] == N_TEST
    worst_index, worst_bits = evaluated["worst_images"][0]
    assert evaluated["median_bits_x"] <= worst_bits and 0 <= worst_index < N_TEST
    # One CSV row per test image, in order, whose means are the logged figures.
    rows = np.genfromtxt(os.path.join(logdir, "test_bits_per_image.csv"), delimiter=",", names=True)
    assert list(rows["index"]) == list(range(N_TEST)) and set(rows["n_dequant_draws"]) == {2}
    np.testing.assert_allclose(rows["bits_x"].mean(), evaluated["bits_x"], rtol=1e-5)
    np.testing.assert_allclose(rows["bits_x_polyak"].mean(), evaluated["bits_x_polyak"], rtol=1e-5)
    assert rows["bits_x"][worst_index] == pytest.approx(worst_bits, rel=1e-5)
    assert _run(tmp_path, "--sample", "20", "--temperature", "0.5", "--weights", "polyak")[0] == 0
    assert os.path.exists(os.path.join(logdir, "samples_t0.50_polyak.png"))


def test_clipping_sees_the_gradient_with_the_loss_scale_divided_out(trained, tmp_path):
    """--max_grad_norm clips the gradient after --loss_scale's factor is divided out again: a step with loss
    scale 2^10 is bit-identical to one without (a power of two scales every backprop product and sum exactly,
    barring overflow), with clipping active on both, and reports the same (unscaled) gradient norm. Clipping
    applied before the division would clip a 1024 times larger norm: another step."""
    logdir = copy_of(trained, tmp_path)
    start, after, norms = None, {}, {}
    for scale in (1.0, 1024.0):  # each in a graph of its own: the same seeds, so the same training noise
        run = _open_run(train.config.parse_args(TINY + ["--logdir", logdir, "--n_test", "64", "--max_grad_norm",
                                                        "0.05"]))
        try:
            tr = _restored(run)
            variables = [v for v in tr.graph.get_collection("variables") if v.dtype.base_dtype != tf.string]
            start = tr.sess.run(variables)
            applied, _ = tr.train_step(*run.data.init_batch(64), 1e-3, loss_scale=scale)
            assert applied
            after[scale], norms[scale] = tr.sess.run(variables), tr.grad_norm
        finally:
            run.close()
    assert norms[1.0] == norms[1024.0] and norms[1.0] > 10 * 0.05, norms  # clipped, by 10x at least
    assert any("W" in v.name and np.any(a != b) for v, a, b in zip(variables, start, after[1.0])), "nothing moved"
    for v, a, b in zip(variables, after[1.0], after[1024.0]):
        np.testing.assert_array_equal(a, b, err_msg=v.name)


def test_raw_and_polyak_evaluations_and_the_worst_image(opened):
    """The two weightings' test figures differ once training moved the
    weights away from their average, and agree exactly (same noise) when
    the average equals the weights; the per-image rows are in test-set
    order (row i is image i evaluated alone); an image the model finds
    very unlikely (here: one replaced by noise) is named worst."""
    run, tr = opened, _restored(opened)
    line, per_image = train.evaluate(run)
    assert abs(line["bits_x"] - line["bits_x_polyak"]) > 1e-3
    assert not np.allclose(per_image["raw"]["bits_x"], per_image["polyak"]["bits_x"])
    # Row i of the whole evaluation is image i alone (its own noise stream). The lone image runs in the same
    # padded test batch, so the kernels are the same; a kernel whose summation order depended on the row could
    # change the log-density, a float32 sum over the 1,024 dims, by up to about n*u = 1024 * 6e-8 = 6e-5
    # relative (Higham): hence rtol 1e-4. Seen here: exactly equal on TF 2.21 and TF 1.15.
    x, y = next(iter(run.data.test_batches(64)))
    for i in (0, 37, 63):
        alone = tr.eval_per_image([(x[i:i + 1], y[i:i + 1])], first_index=i)
        assert sorted(alone) == sorted(evaluator.STATS)
        for k in evaluator.STATS:
            np.testing.assert_allclose(alone[k][0], per_image["raw"][k][i], rtol=1e-4)
    # A test image replaced by noise is the worst.
    noisy = x.copy()
    noisy[21] = np.random.RandomState(0).randint(0, 256, x[21].shape)
    bits = tr.eval_per_image([(noisy, y)])
    worst = train.test_line({"raw": bits, "polyak": bits})["worst_images"]
    assert worst[0][0] == 21 and worst[0][1] > bits["bits_x"][np.arange(64) != 21].max(), worst
    # Each weighting evaluated alone (its runs one after the other) gives exactly what the pass running both at once
    # gave: the runs share no state but the read-only weights.
    for weights in evaluator.WEIGHTS:
        alone = tr.eval_per_image(run.data.test_batches(run.cfg.local_batch_test), weights=weights)
        for k in evaluator.STATS:
            np.testing.assert_array_equal(alone[k], per_image[weights][k], err_msg=weights + " " + k)
    # The average set to the weights: both evaluations agree exactly.
    tr.sess.run(tr.opt.ema.seed_op)
    line, per_image = train.evaluate(run)
    for k in evaluator.STATS:
        np.testing.assert_array_equal(per_image["raw"][k], per_image["polyak"][k])
    assert line["bits_x"] == line["bits_x_polyak"]


def test_loop_steps_trains_and_its_checkpoint_restores_unrolled(tmp_path):
    """--loop_steps with invertible backprop trains; its checkpoint (the one
    layout, stacked.py) restores into the unrolled model too,
    so encoding the test set from it with and without --loop_steps gives
    the same latents."""
    status, logdir = _run(tmp_path, "--epochs", "1", "--max_steps", "10", "--loop_steps",
                          "--gradient_checkpointing", "2")
    assert status == 0
    assert _records(logdir, "train.txt")[-1]["n_skipped"] == 0
    latents = {}
    for flags in (["--loop_steps"], []):
        assert _run(tmp_path, "--inference", *flags)[0] == 0
        latents[bool(flags)] = np.load(os.path.join(logdir, "z.npy"))
    assert np.abs(latents[True]).max() > 0.1
    np.testing.assert_allclose(latents[True], latents[False], rtol=1e-4, atol=1e-4)


def _write_checkpoint(prefix, values):
    with tf.Graph().as_default():
        variables = [tf.get_variable(k, initializer=v, use_resource=True) for k, v in sorted(values.items())]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            tf.train.Saver(variables).save(sess, prefix)


def _as_old_layout(values):
    """{key: value} as the oldest runs wrote them: row i of a level's
    <...>/<level>/step/<name> as <...>/<level>/<i>/<name> (before stacked.py),
    no run/config (it was train.txt's first line only) and the run state as
    run/<field> variables (before RunState)."""
    out = {}
    for key, value in values.items():
        if "/step/" not in key and not key.startswith("run/"):
            out[key] = value
        for i in range(len(value) if "/step/" in key else 0):
            out[key.replace("/step/", "/%d/" % i)] = value[i]
    state = json.loads(values[checkpoints.STATE_KEY].decode("utf-8"))
    out.update(("run/" + k, np.asarray(state[k], np.float64 if k in ("lr_scale", "best_test") else np.int64))
               for k in ("epoch", "n_processed", "lr_scale", "best_test"))
    return out


def test_an_old_run_folder_upgrades_and_then_loads(tmp_path, capsys):
    """A run folder of the oldest checkpoints (each step's variables its own,
    no run config or state string) is refused with a one-line error naming
    the upgrade; after scripts/upgrade_run.py it loads with its run state and
    gives the latents it gave before; upgrading again changes nothing."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import upgrade_run
    status, logdir = _run(tmp_path, "--epochs", "1", "--max_steps", "3")
    assert status == 0 and _run(tmp_path, "--inference")[0] == 0
    latents = np.load(os.path.join(logdir, "z.npy"))
    prefixes = [p[:-len(".index")] for p in sorted(glob.glob(os.path.join(logdir, "*", "*.index")))]
    assert prefixes
    states = [checkpoints.read_state(prefix).as_dict() for prefix in prefixes]
    for prefix in prefixes:
        reader = tf.train.load_checkpoint(prefix)
        values = dict((k, reader.get_tensor(k)) for k in reader.get_variable_to_shape_map())
        assert any("/step/" in k for k in values)
        for path in glob.glob(prefix + ".*"):
            os.remove(path)
        checkpoints.write_values(dict((k, np.asarray(v)) for k, v in _as_old_layout(values).items()), prefix)
    capsys.readouterr()
    assert train.cli(TINY + ["--logdir", logdir, "--inference"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and "scripts/upgrade_run.py" in err[0] and "model/0/step/" in err[0], err
    assert upgrade_run.main([logdir]) == 0
    assert capsys.readouterr().out.count(": upgraded") == len(prefixes)
    assert [checkpoints.read_state(prefix).as_dict() for prefix in prefixes] == states
    assert checkpoints.saved_config(prefixes[0])["depth"] == 2
    assert _run(tmp_path, "--inference")[0] == 0
    np.testing.assert_array_equal(np.load(os.path.join(logdir, "z.npy")), latents)
    assert upgrade_run.main([logdir]) == 0
    assert capsys.readouterr().out.count(": already current") == len(prefixes)
    left = [os.path.join(logdir, "*", pattern) for pattern in ("*.before-upgrade", "*.upgraded*")]
    assert not glob.glob(left[0]) + glob.glob(left[1])


def test_a_checkpoint_must_hold_this_models_variables(tmp_path):
    """check_holds names a variable the checkpoint lacks, one of another
    shape, and one this model does not have (a smaller model must not load
    part of a larger one and train on)."""
    rng = np.random.RandomState(0)
    values = {"model/1/step/actnorm/b": rng.randn(4, 3).astype(np.float32),
              "optim/model/1/step/actnorm/b/m": rng.randn(4, 3).astype(np.float32),
              "model/pool0/conv/W": rng.randn(2, 2).astype(np.float32)}
    prefix = str(tmp_path / "model.ckpt")
    _write_checkpoint(prefix, values)
    shapes = dict((k, list(v.shape)) for k, v in values.items())
    checkpoints.check_holds(prefix, shapes)
    with pytest.raises(ValueError, match="does not hold 1 of this model's variables, e.g. model/2/step/actnorm/b"):
        checkpoints.check_holds(prefix, dict(shapes, **{"model/2/step/actnorm/b": [4, 3]}))
    with pytest.raises(ValueError, match=r"model/1/step/actnorm/b \(shape \[4, 3\] in the checkpoint, \[5, 3\]"):
        checkpoints.check_holds(prefix, dict(shapes, **{"model/1/step/actnorm/b": [5, 3]}))
    fewer = dict((k, s) for k, s in shapes.items() if k != "model/pool0/conv/W")
    with pytest.raises(ValueError, match="holds 1 variables this model does not have, e.g. model/pool0/conv/W"):
        checkpoints.check_holds(prefix, fewer)
    checkpoints.check_holds(prefix, fewer, left_out=lambda k: k.startswith("model/pool"))


@pytest.mark.parametrize("flags,message", [
    (["--weight_y", "0.1"], "--weight_y 0.1 needs --ycond"),
    (["--image_size", "30"], "--image_size 30: must be a power of two"),
    (["--resume", "--restore_path", "x"], "pick one"),
    (["--flow_permutation", "7"], "flow_permutation '7'"),
    (["--image_size", "-1", "--n_levels", "6"], "image size 32 with --n_levels 6"),  # the native 32 px
    (["--lu", "--flow_permutation", "0"], "--lu with --flow_permutation reverse"),
    (["--per_image"], "--per_image writes --evaluate's per-image figures: add --evaluate"),
])
def test_bad_flags_are_clear_errors(tmp_path, capsys, monkeypatch, flags, message):
    """train.py's entry point (cli), in this process: exit status 2 and the
    message, no traceback (an exception other than argparse's exit would
    fail the test); test_bad_flag_on_the_command_line runs one as a process."""
    monkeypatch.delenv("GLOW_TRACEBACK", raising=False)
    try:
        status = train.cli(TINY + ["--logdir", str(tmp_path / "l")] + flags)
    except SystemExit as e:  # argparse's errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    assert message in err


def test_bad_flag_on_the_command_line(tmp_path):
    env = dict(os.environ)
    env.pop("GLOW_TRACEBACK", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + TINY
                          + ["--logdir", str(tmp_path / "l"), "--n_levels", "5"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--image_size 16 is too small for --n_levels 5: needs at least 32" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stop_request_defers_the_first_signal_and_not_the_second():
    stop = train.StopRequest()
    assert not stop.requested()
    stop.check(False)
    stop(signal.SIGINT, None)  # the handler itself does not raise: the loop asks every rank, then checks
    assert stop.requested()
    with pytest.raises(KeyboardInterrupt):
        stop.check(True)
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)  # a second Ctrl-C interrupts at once


def test_ctrl_c_saves_the_step_and_exits_130(tmp_path):
    logdir = str(tmp_path / "logs")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py")] + TINY + SHALLOW
                            + ["--logdir", logdir, "--epochs", "2", "--verbose"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    out, steps = [], 0
    for line in proc.stdout:
        out.append(line)
        if line.split(" ", 1)[0].isdigit() and " lr " in line:
            steps += 1
            if steps == 5:
                proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, "".join(out)[-3000:]
    text = "".join(out)
    saved = re.search(r"interrupted: saving a checkpoint at step (\d+)", text)
    assert saved, text[-3000:]
    assert int(saved.group(1)) >= 5
    assert os.path.exists(os.path.join(logdir, "checkpoints", "model.ckpt-%s.index" % saved.group(1)))
    status, _ = _run(tmp_path, *SHALLOW, "--epochs", "1", "--resume", logdir=logdir)
    assert status == 0
    assert _records(logdir, "train.txt")[-1]["step"] == 32


def test_fresh_run_in_a_logdir_holding_a_run_is_refused(tmp_path):
    logdir = tmp_path / "run"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-7"\n')
    with pytest.raises(ValueError, match="already holds a run .*continue it with --resume"):
        _run(tmp_path, "--epochs", "1", logdir=logdir)
    assert sorted(os.listdir(str(logdir))) == ["checkpoints"]  # no log was started


def test_logdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _run(tmp_path, "--epochs", "1", logdir=path)
