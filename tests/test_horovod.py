"""Data-parallel training with Horovod, proven with 2 processes on CPU.

`horovodrun -np 2 -H localhost:2 --gloo python train.py ...` (through
tests/horovod_worker.py, which records what each rank ends with) trains a
tiny Glow on real Fashion-MNIST for 2 epochs (32 steps) from a checkpoint:

1. both ranks end with bit-identical variables (weights, Polyak averages,
   optimizer slots);
2. 2 ranks x batch 16 follow the loss trajectory of 1 rank x batch 32 fed,
   at each step, the union of the two ranks' batches (the same examples;
   see horovod_worker.py for why the union and why the noise is centred),
   up to float32 rounding as this machine amplifies it (`_rounding_bound`),
   and end with the same weights and test bits/dim, with --max_grad_norm
   clipping some of the steps (it must see the gradient averaged over ranks);
3. only rank 0 wrote files: rank 1's --logdir (a folder of its own) stays
   empty, rank 1 printed nothing, and rank 0's --logdir holds exactly the
   files of the 1-rank run.

Needs a Python with TensorFlow 1.15 and Horovod built with Gloo:
`scripts/setup_env.sh tf115-horovod` (scripts/test.sh passes it as
GLOW_PY_HOROVOD). Without it the tests skip, except under CI=true, where
they fail.
"""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "horovod_worker.py")
FMNIST = "/usr/share/datasets/fashion-mnist"
TIMEOUT = 600

TINY = ["--problem", "fashion-mnist", "--n_levels", "2", "--depth", "2", "--width", "16",
        "--flow_coupling", "affine", "--gradient_checkpointing", "0", "--n_train", "512",
        "--n_test", "128", "--n_batch_init", "64", "--seed", "3", "--lr", "0.002",
        "--epochs_warmup", "0", "--device", "cpu"]
N_RANKS, BATCH, EPOCHS = 2, 16, 2
N_STEPS = EPOCHS * 512 // (N_RANKS * BATCH)
# Gradient clipping by global norm, set between the smallest and the largest norm of these 32 steps (2.1 to 3.9
# on the 1-rank run): clipped steps and unclipped ones. The norm is of the gradient averaged over the ranks; a
# rank clipping its own (noisier) half would take other steps than the 1-rank run.
MAX_GRAD_NORM = 2.7


def _has_horovod(python):
    return subprocess.call([python, "-c", "import horovod.tensorflow"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0


def _horovod_python():
    """The interpreter with Horovod: this one, or $GLOW_PY_HOROVOD."""
    try:
        import horovod.tensorflow  # noqa: F401
        return sys.executable
    except ImportError:
        pass
    python = os.environ.get("GLOW_PY_HOROVOD", "")
    if python and _has_horovod(python):
        return python
    why = ("no Horovod: build it with scripts/setup_env.sh tf115-horovod and set GLOW_PY_HOROVOD "
           "to its bin/python (GLOW_PY_HOROVOD=%r)" % python)
    if os.environ.get("CI"):
        pytest.fail(why + "; CI needs it")
    pytest.skip(why)


def _run(cmd, cwd, log):
    t0 = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=TIMEOUT)
    with open(log, "w") as f:
        f.write("$ %s\n%s" % (" ".join(cmd), proc.stdout))
    assert proc.returncode == 0, "%s failed (%.0f s):\n%s" % (cmd[0], time.time() - t0, proc.stdout[-4000:])
    return proc.stdout


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _records(logdir, name):
    return [r for r in train.utils.read_jsonl(os.path.join(logdir, name)) if "problem" not in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not os.path.isdir(FMNIST):
        if os.environ.get("CI"):
            pytest.fail("%s missing: .ci/run installs dataset-fashion-mnist" % FMNIST)
        pytest.skip("needs Debian's dataset-fashion-mnist")
    python = _horovod_python()
    horovodrun = os.path.join(os.path.dirname(python), "horovodrun")
    tmp = tmp_path_factory.mktemp("horovod")
    d = dict((name, str(tmp / name)) for name in ("init", "hvd", "rank1", "ref", "nudged", "out_hvd", "out_ref",
                                                  "out_nudged"))
    os.makedirs(d["rank1"])
    # The shared starting point: a fresh 1-rank init, saved before its first step.
    _run([python, os.path.join(ROOT, "train.py")] + TINY
         + ["--logdir", d["init"], "--n_batch_train", "32", "--epochs", "1", "--max_steps", "1"],
         ROOT, str(tmp / "init.log"))
    ckpt = os.path.join(d["init"], "checkpoints", "model.ckpt-0")
    common = TINY + ["--restore_path", ckpt, "--epochs", str(EPOCHS), "--verbose", "--max_grad_norm",
                     str(MAX_GRAD_NORM)]
    hvd_out = _run([horovodrun, "-np", str(N_RANKS), "-H", "localhost:%d" % N_RANKS, "--gloo",
                    python, WORKER, "--out", d["out_hvd"], "--centre_noise", "--nonchief_logdir", d["rank1"],
                    "--"] + common + ["--logdir", d["hvd"], "--n_batch_train", str(BATCH)],
                   str(tmp), str(tmp / "hvd.log"))
    _run([python, WORKER, "--out", d["out_ref"], "--centre_noise", "--union_of", str(N_RANKS), "--"]
         + common + ["--logdir", d["ref"], "--n_batch_train", str(N_RANKS * BATCH), "--backend", "none"],
         str(tmp), str(tmp / "ref.log"))
    # The reference again from weights one ulp away: how far rounding-sized differences grow on this machine.
    _run([python, WORKER, "--out", d["out_nudged"], "--centre_noise", "--union_of", str(N_RANKS), "--nudge_weights",
          "--"] + common + ["--logdir", d["nudged"], "--n_batch_train", str(N_RANKS * BATCH), "--backend", "none"],
         str(tmp), str(tmp / "nudged.log"))
    d["hvd_stdout"] = hvd_out
    d["ckpt"] = ckpt
    d["ranks"] = [dict(np.load(os.path.join(d["out_hvd"], "rank%d.npz" % r))) for r in range(N_RANKS)]
    d["single"] = dict(np.load(os.path.join(d["out_ref"], "rank0.npz")))
    d["nudged_steps"] = np.load(os.path.join(d["out_nudged"], "rank0.npz"))["steps"]
    return d


def _rounding_bound(reference, nudged):
    """Per step, how far a loss computed with other float32 summation orders may be from `reference` [N] (the
    1-rank run's losses), from the computation itself rather than from one CPU's figures:

    - within one step, on the same weights: the batch mean sums B = N_RANKS*BATCH per-image losses in another order
      (two halves, then Horovod's average), each per-image loss with other kernels (batch 16 vs 32): Higham's bound
      for reordering a sum of B terms of one sign, (B - 1) u relative, u = 2^-24, doubled for the per-image terms;
    - across steps the weights differ, by roundings of this size in each step's gradients and updates, and the
      training dynamics amplify them. `nudged` [N] is the reference run again from weights one ulp away (one
      rounding, injected at step 0): |nudged - reference| up to step t is how much this machine's arithmetic and
      these dynamics grow one rounding over t steps. The 2-rank run injects a rounding at each of its t + 1 steps,
      each growing at most as much: (t + 1) times that envelope.

    Worst seen: 1.43e-5 relative (3 of 32 steps, the machine where rtol 1e-5 failed); on another, 9.8e-7 at step 32
    against 6.3e-7 for the nudged run, with this bound at 2.0e-5 there. A wrong batch (the same steps on a
    1-rank run's own batches of 32) differs by 5e-3 to 1e-2 from step 1 on: far above the bound."""
    u = 2.0 ** -24
    within = 2 * (N_RANKS * BATCH - 1) * u * np.abs(reference)
    grown = np.maximum.accumulate(np.abs(nudged - reference))
    return within + (np.arange(len(reference)) + 1) * grown


def _variables(dump):
    """The numeric variables of a rank's dump: weights, Polyak averages,
    optimizer slots and counters. Not the run's two JSON strings (run/config,
    run/state), which only go into the checkpoints rank 0 writes: rank 1's
    config names its own --logdir, and its state is never saved."""
    return dict((k, v) for k, v in dump.items() if k.startswith("var/") and v.dtype.kind not in "SUO")


def test_both_ranks_end_bit_identical(runs):
    rank0, rank1 = runs["ranks"]
    assert int(rank0["size"]) == int(rank1["size"]) == N_RANKS
    v0, v1 = _variables(rank0), _variables(rank1)
    assert sorted(v0) == sorted(v1) and len(v0) > 20
    differ = [k for k in v0 if v0[k].dtype != v1[k].dtype or v0[k].tobytes() != v1[k].tobytes()]
    assert not differ, "variables that differ between the ranks: %s" % differ[:10]
    # ... and training moved them away from the shared start.
    start = tf.train.load_checkpoint(runs["ckpt"])
    moved = [k for k in v0 if "polyak" not in k and "/W" in k
             and np.max(np.abs(v0[k] - start.get_tensor(k[len("var/"):]))) > 1e-3]
    assert moved, "no weight changed by training"


def test_two_ranks_follow_the_one_rank_trajectory(runs):
    rank0, rank1 = runs["ranks"]
    single = runs["single"]
    steps = rank0["steps"]
    assert steps.shape == (N_STEPS, 4) and single["steps"].shape == (N_STEPS, 4)
    np.testing.assert_array_equal(steps, rank1["steps"])  # allreduced: the same on every rank
    loss = steps[:, 0]
    assert np.mean(loss[-8:]) < np.mean(loss[:8]) - 0.05, loss  # it trained
    norms = [float(g) for g in re.findall(r" grad_norm (\S+)", runs["hvd_stdout"])]  # rank 0's, before clipping
    assert len(norms) == N_STEPS and min(norms) < MAX_GRAD_NORM < max(norms), norms  # clipped and unclipped steps
    # Same examples per step; only the summation order differs (two halves
    # averaged by Horovod vs one batch): float32 rounding, as amplified by
    # the steps on this machine.
    for column in (0, 1):  # loss, bits_x
        ref = single["steps"][:, column]
        bound = _rounding_bound(ref, runs["nudged_steps"][:, column])
        assert np.all(bound < 1e-3 * np.abs(ref)), ("rounding grows too fast here to tell a wrong batch", bound)
        off = np.abs(steps[:, column] - ref) > bound
        assert not off.any(), "steps %s: 2 ranks %s, 1 rank %s, bound %s" % (
            np.flatnonzero(off) + 1, steps[off, column], ref[off], bound[off])
    # The weights: the two runs' difference is measured against how far
    # training moved each variable from the shared start. Elementwise
    # tolerances do not fit Adam: it divides each gradient by its own running
    # RMS, so an entry whose gradient hovers near zero turns a rounding
    # difference into an update of up to lr per step (seen: 8e-5 on a weight
    # that 32 steps of lr 2e-3 moved by ~1e-2 in norm).
    v0, vs = _variables(rank0), _variables(single)
    assert sorted(v0) == sorted(vs)
    start = tf.train.load_checkpoint(runs["ckpt"])
    far = []
    for k in v0:
        s = start.get_tensor(k[len("var/"):]) if start.has_tensor(k[len("var/"):]) else np.zeros_like(vs[k])
        moved = np.linalg.norm((vs[k] - s).ravel())
        apart = np.linalg.norm((v0[k] - vs[k]).ravel())
        if apart > 1e-2 * moved + 1e-6 * np.sqrt(vs[k].size):
            far.append((k, apart, moved))
    assert not far, "variables whose 2-rank and 1-rank values differ by >1%% of training's move: %s" % far[:5]
    # Per-epoch train means and the test bits/dim, which each rank computes
    # on its half of the test set and Horovod adds up: within the relative
    # bound of the epoch's last step (a mean of its steps' losses; the test
    # set on the weights after it).
    bound = _rounding_bound(single["steps"][:, 0], runs["nudged_steps"][:, 0]) / np.abs(single["steps"][:, 0])
    for name, keys in (("train.txt", ("loss", "bits_x")), ("test.txt", ("loss", "bits_x"))):
        hvd, ref = _records(runs["hvd"], name), _records(runs["ref"], name)
        assert [r["epoch"] for r in hvd] == [r["epoch"] for r in ref] == list(range(1, EPOCHS + 1))
        for a, b in zip(hvd, ref):
            rel = float(np.max(bound[:b["step"]]))
            for key in keys:
                assert a[key] == pytest.approx(b[key], rel=rel), (name, key, rel, a, b)


def test_only_rank0_writes(runs):
    assert os.listdir(runs["rank1"]) == []
    written = _files(runs["hvd"])
    assert written == _files(runs["ref"])
    assert "train.txt" in written and "checkpoints/checkpoint" in written and any(
        f.startswith("samples/") for f in written)
    header = train.utils.read_jsonl(os.path.join(runs["hvd"], "train.txt"))[0]
    assert header["n_ranks"] == N_RANKS and header["local_batch_train"] == BATCH
    # horovodrun tags each line with the rank that printed it.
    lines = runs["hvd_stdout"].splitlines()
    assert sum(line.startswith("[0]<stdout>:") for line in lines) >= N_STEPS
    assert [line for line in lines if line.startswith("[1]<stdout>")] == []


def test_op_error_on_one_rank_ends_the_job_with_resume_advice(runs, tmp_path):
    """Rank 1's third step raises an op error while rank 0 is in that step's
    allreduce: rank 1 stops with train.py's error (skipping alone would pair
    its next gradients with rank 0's current ones), and horovodrun ends the
    job instead of leaving rank 0 waiting."""
    python = _horovod_python()
    horovodrun = os.path.join(os.path.dirname(python), "horovodrun")
    cmd = [horovodrun, "-np", str(N_RANKS), "-H", "localhost:%d" % N_RANKS, "--gloo",
           python, WORKER, "--out", str(tmp_path / "out"), "--op_error", "1:3", "--"] + TINY + [
        "--restore_path", runs["ckpt"], "--epochs", "1", "--logdir", str(tmp_path / "logs"),
        "--n_batch_train", str(BATCH)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1")
    try:
        # About 45 s here; skipped on one rank instead, the step left rank 0
        # waiting in its allreduce for good (the job hung).
        proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail("the job did not end within 300 s of rank 1's op error:\n%s" % (e.output or "")[-4000:])
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert re.search(r"\[1\]<stderr>:.*rank 1 of 2: Input is not invertible.* training step 3.*"
                     r"the last checkpoint is intact: rerun with --resume",
                     proc.stdout), proc.stdout[-4000:]


@pytest.mark.parametrize("flags,env,message", [
    (["--backend", "horovod"], {}, "backend 'horovod' needs horovod"),
    (["--backend", "auto"], {"HOROVOD_RANK": "0"}, "started by horovodrun (HOROVOD_RANK=0)"),
])
def test_missing_horovod_is_a_clear_error(tmp_path, monkeypatch, flags, env, message):
    """Where horovod is not importable (simulated), asking for it, or being
    launched by horovodrun, fails before any work instead of training alone."""
    for name in ("horovod", "horovod.tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)  # `import horovod.tensorflow` raises ImportError
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="pip install horovod") as err:
        train.main(TINY + ["--logdir", str(tmp_path / "logs")] + flags)
    assert message in str(err.value)
    assert not os.path.exists(tmp_path / "logs")


def _interrupted_run(runs, tmp_path, fault, **env):
    """A 2-rank run from the shared checkpoint with the worker's `fault` flags (e.g. ["--signal_at", "1:5"]),
    extra environment `env`: (the finished process, its --logdir, the launch command). The bound on how long a
    fault takes to end the job is the subprocess timeout (no timing assert)."""
    python = _horovod_python()
    horovodrun = os.path.join(os.path.dirname(python), "horovodrun")
    logdir, out = str(tmp_path / "logs"), str(tmp_path / "out")
    launch = [horovodrun, "-np", str(N_RANKS), "-H", "localhost:%d" % N_RANKS, "--gloo", python, WORKER]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1", **env)
    proc = subprocess.run(launch + ["--out", out] + fault + ["--"] + TINY + [
        "--restore_path", runs["ckpt"], "--epochs", str(EPOCHS), "--logdir", logdir, "--n_batch_train", str(BATCH)],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=300)
    return proc, logdir, launch


def _resume_finishes(launch, logdir, tmp_path, from_step):
    """--resume on 2 ranks runs the steps after `from_step` and leaves continuous train lines."""
    assert _run(launch + ["--out", str(tmp_path / "resumed"), "--"] + [
        "--logdir", logdir, "--resume", "--epochs", str(EPOCHS), "--n_batch_train", str(BATCH)], str(tmp_path),
        str(tmp_path / "resume.log"))
    assert np.load(os.path.join(str(tmp_path / "resumed"), "rank0.npz"))["steps"].shape[0] == N_STEPS - from_step
    assert [(r["epoch"], r["step"]) for r in _records(logdir, "train.txt")] == [(1, N_STEPS // 2), (2, N_STEPS)]


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(runs, tmp_path):
    """SIGTERM reaching rank 1 alone (before its 5th step, so it asks at its 6th): both ranks learn it with that
    step's allreduce, stop after step 6, rank 0 saves there, both exit 130; --resume on 2 ranks then finishes the
    run from step 6 with continuous logs."""
    proc, logdir, launch = _interrupted_run(runs, tmp_path, ["--signal_at", "1:5"])
    assert proc.returncode != 0, proc.stdout[-3000:]  # (and within the timeout: the stop is bounded)
    for rank in range(N_RANKS):
        assert np.load(str(tmp_path / "out" / ("rank%d.npz" % rank)))["steps"].shape[0] == 6, proc.stdout[-3000:]
    assert "interrupted: saving a checkpoint at step 6" in proc.stdout
    assert checkpoints.latest(os.path.join(logdir, "checkpoints")).endswith("model.ckpt-6")
    _resume_finishes(launch, logdir, tmp_path, 6)


@pytest.mark.parametrize("fault", ["stall_at", "kill_at"])
def test_a_stalled_or_killed_rank_ends_the_job_naming_it_and_resume_continues(runs, tmp_path, fault):
    """Rank 1 stops (SIGSTOP: a hung filesystem or device) or dies (SIGKILL) before its 20th step, in epoch 2
    (16 steps an epoch): rank 0 is left waiting in that step's allreduce until Gloo's timeout (set to 10 s here;
    30 s by default) or the closed connection ends it, then ends with one line that names rank 1 and the intact
    checkpoint of step 16, saving nothing; horovodrun ends the job. --resume on 2 ranks then finishes the run from
    step 16 with continuous logs. The bound is the subprocess timeout (no timing assert)."""
    proc, logdir, launch = _interrupted_run(runs, tmp_path, ["--" + fault, "1:20"], HOROVOD_GLOO_TIMEOUT_SECONDS="10")
    assert proc.returncode != 0, proc.stdout[-3000:]
    line = [text for text in proc.stdout.splitlines() if "stalled or died" in text]
    assert len(line) == 1 and "rank 0 of 2:" in line[0] and "after step 19: rank 1 stalled or died" in line[0] \
        and "model.ckpt-16, is intact" in line[0] and "--resume" in line[0], proc.stdout[-3000:]
    assert "Traceback" not in "\n".join(t for t in proc.stdout.splitlines() if t.startswith("[0]")), \
        proc.stdout[-3000:]  # (horovodrun's own RuntimeError is the launcher's, not rank 0's)
    assert checkpoints.latest(os.path.join(logdir, "checkpoints")).endswith("model.ckpt-16")
    _resume_finishes(launch, logdir, tmp_path, 16)
