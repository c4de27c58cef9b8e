"""The faults a long run meets, on one process (issue 28): a full disk while saving a checkpoint or writing a
log line (injected ENOSPC), a corrupt newest checkpoint, a log line torn by a crash. Each ends with one clear
line or a recovery, loses at most the steps since the last complete checkpoint, and --resume finishes the run
with continuous logs."""
import errno
import os
import sys

import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import train
import utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import plot_logs  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
# 4 steps an epoch; a checkpoint after each.
TINY = ["--problem", "fashion-mnist", "--image_size", "8", "--n_levels", "2", "--depth", "1", "--width", "8",
        "--n_train", "256", "--n_test", "32", "--n_batch_init", "32", "--epochs_warmup", "0",
        "--gradient_checkpointing", "0", "--optimizer", "adam"]


def _records(logdir, name):
    return [r for r in utils.read_jsonl(os.path.join(logdir, name), skip_invalid=True) if "problem" not in r]


def _epochs(logdir):
    return [r["epoch"] for r in _records(logdir, "train.txt")]


def _events(logdir, kind):
    return [r for r in _records(logdir, "events.txt") if r.get("event") == kind]


def _kept(logdir):
    return [os.path.basename(p) for p in tf.train.get_checkpoint_state(
        os.path.join(logdir, "checkpoints")).all_model_checkpoint_paths]


def _no_space(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "model.ckpt-8_temp; No space left on device")


def test_full_disk_at_a_save_drops_the_older_checkpoint_and_goes_on(tmp_path, monkeypatch):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--logdir", logdir, "--epochs", "1"]) == 0
    assert _kept(logdir) == ["model.ckpt-0", "model.ckpt-4"]
    real, calls = tf.train.Saver.save, []

    def first_fails(self, sess, save_path, **kwargs):
        calls.append(kwargs.get("global_step"))
        if len(calls) == 1:  # what a full disk leaves: part of the data file
            with open("%s-%d.data-00000-of-00001" % (save_path, kwargs["global_step"]), "w") as f:
                f.write("partial")
            _no_space()
        return real(self, sess, save_path, **kwargs)

    monkeypatch.setattr(tf.train.Saver, "save", first_fails)
    assert train.main(["--logdir", logdir, "--resume", "--epochs", "2"]) == 0
    # The older checkpoint made room; the epoch's was saved on the second try; the newest is never dropped.
    assert calls[:2] == [8, 8] and _kept(logdir) == ["model.ckpt-4", "model.ckpt-8"]
    assert checkpoints.unreadable(os.path.join(logdir, "checkpoints", "model.ckpt-8")) is None
    assert _epochs(logdir) == [1, 2]


def test_full_disk_that_stays_full_is_one_line_and_resume_finishes(tmp_path, monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--logdir", logdir, "--epochs", "1"]) == 0
    monkeypatch.setattr(tf.train.Saver, "save", lambda self, *a, **k: _no_space())
    capsys.readouterr()
    assert train.cli(["--logdir", logdir, "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: no space left on the device of %s" % logdir), err
    assert "MB free, about" in err[0] and "then continue with --resume" in err[0]
    # The newest complete checkpoint (step 4) is what is left; no partial files beside it.
    assert _kept(logdir)[-1] == "model.ckpt-4" and not [f for f in os.listdir(os.path.join(logdir, "checkpoints"))
                                                         if "ckpt-8" in f]
    monkeypatch.undo()
    assert train.main(["--logdir", logdir, "--resume", "--epochs", "3"]) == 0
    # Epoch 2's line was written before its save failed: it is trained and logged again after the resume.
    assert _epochs(logdir) == [1, 2, 2, 3] and _kept(logdir)[-1] == "model.ckpt-12"


def test_full_disk_at_a_log_line_makes_room_and_writes_it_whole(tmp_path, monkeypatch):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--logdir", logdir, "--epochs", "1"]) == 0
    real, failed = utils.ResultLogger._write, []

    def once(self, text):
        if self.path.endswith("train.txt") and '"epoch": 2' in text and not failed:
            failed.append(text)
            self._file.write(text[:10])  # part of the line, as a full disk leaves it
            self._torn = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text)

    monkeypatch.setattr(utils.ResultLogger, "_write", once)
    assert train.main(["--logdir", logdir, "--resume", "--epochs", "2"]) == 0
    assert failed and _epochs(logdir) == [1, 2]
    torn = []
    utils.read_jsonl(os.path.join(logdir, "train.txt"), skip_invalid=True, skipped=torn)
    assert len(torn) == 1  # the part-line, on a line of its own; every other line whole


def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--logdir", logdir, "--epochs", "2"]) == 0
    newest = os.path.join(logdir, "checkpoints", "model.ckpt-8")
    with open(newest + ".data-00000-of-00001", "r+b") as f:
        f.truncate(1000)
    assert checkpoints.unreadable(newest)
    capsys.readouterr()
    assert train.main(["--logdir", logdir, "--resume", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint_unreadable" in out and "restored %s" % os.path.join(logdir, "checkpoints", "model.ckpt-4") in out
    event, = _events(logdir, "checkpoint_unreadable")
    assert event["checkpoint"] == newest and event["instead"].endswith("model.ckpt-4")
    # Epoch 2 again from step 4, then 3: the logs go on from the restored step.
    assert _epochs(logdir) == [1, 2, 2, 3] and _records(logdir, "train.txt")[-1]["step"] == 12


def test_a_run_folder_given_by_a_relative_path_resumes(tmp_path, monkeypatch, capsys):
    """--logdir relative to the working directory (the README's ./logs/...): TF gives the checkpoints' paths
    already joined to the folder, and `latest` must not join them again."""
    monkeypatch.chdir(tmp_path)
    assert train.main(TINY + ["--logdir", "run", "--epochs", "1"]) == 0
    assert checkpoints.latest("run") == str(tmp_path / "run" / "checkpoints" / "model.ckpt-4")
    assert checkpoints.resolve(os.path.join("run", "checkpoints")) == checkpoints.latest("run")
    capsys.readouterr()
    assert train.main(["--logdir", "run", "--resume", "--epochs", "2"]) == 0
    assert "restored %s" % (tmp_path / "run" / "checkpoints" / "model.ckpt-4") in capsys.readouterr().out


def test_no_readable_checkpoint_is_one_line_naming_them(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--logdir", logdir, "--epochs", "1"]) == 0
    for step in (0, 4):
        with open(os.path.join(logdir, "checkpoints", "model.ckpt-%d.index" % step), "r+b") as f:
            f.truncate(10)
    capsys.readouterr()
    assert train.cli(["--logdir", logdir, "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: no readable checkpoint in %s: " % os.path.join(
        logdir, "checkpoints")) and "model.ckpt-4 (" in err[0] and "model.ckpt-0 (" in err[0], err


def test_torn_log_line_is_reported_and_skipped(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--logdir", logdir, "--epochs", "1"]) == 0
    with open(os.path.join(logdir, "train.txt"), "a") as f:
        f.write('{"epoch": 2, "bits_x": 7.')  # a crash mid-write
    assert train.main(["--logdir", logdir, "--resume", "--epochs", "2"]) == 0
    event, = _events(logdir, "torn_log_line")
    assert event["file"].endswith("train.txt") and _epochs(logdir) == [1, 2]
    capsys.readouterr()
    assert [x for x, _ in plot_logs.read_curve(os.path.join(logdir, "train.txt"), "epoch")] == [1.0, 2.0]
    assert "warning: skipped a line that is not JSON (torn by a crash?): %s:" % os.path.join(
        logdir, "train.txt") in capsys.readouterr().err


def test_lost_rank_line_tells_a_collective_failure_from_a_rank_s_own_error(tmp_path):
    """The line of an op error in a run of several ranks (train.lost_rank): an allreduce that failed because
    another rank stalled or died names that rank; any other op error (here out of memory) is this rank's own and
    says so; both name the intact checkpoint and --resume. (The real collective failures: tests/test_horovod.py.)"""
    import types
    os.makedirs(str(tmp_path / "checkpoints"))
    backend = types.SimpleNamespace(rank=lambda: 0, size=lambda: 2)
    run = types.SimpleNamespace(backend=backend, chief=True, logdir=str(tmp_path), state=types.SimpleNamespace(
        step=19))
    shut = tf.errors.UnknownError(None, None, "Horovod has been shut down. This was caused by an exception")
    oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[64,128,16,16]\nmore")
    assert "after step 19: rank 1 stalled or died" in train.lost_rank(run, shut)
    line = train.lost_rank(run, oom)
    assert line.startswith("rank 0 of 2: ResourceExhaustedError in an op after step 19: OOM when allocating")
    assert "this rank's own error" in line and "stalled" not in line and "more" not in line
    assert "no checkpoint was written yet" in line
    run.chief = False
    assert "the last checkpoint is intact: rerun with --resume" in train.lost_rank(run, shut)
