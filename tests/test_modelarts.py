"""modelarts.py: copies against tests/fake_moxing, where obs://bucket/path is
$FAKE_OBS_ROOT/bucket/path on the local disk."""
import os
import sys

import pytest
import tensorflow.compat.v1 as tf

import modelarts

tf.disable_v2_behavior()

FAKE_MOXING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_moxing")


@pytest.fixture
def obs(monkeypatch, tmp_path):
    """Fake moxing importable; returns the local folder behind obs://."""
    root = tmp_path / "obs"
    root.mkdir()
    monkeypatch.setenv("FAKE_OBS_ROOT", str(root))
    monkeypatch.syspath_prepend(FAKE_MOXING)
    for name in ("moxing", "moxing.file"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import moxing
    del moxing.file.calls[:]
    return root


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_local_data_url_is_used_in_place_without_moxing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "moxing", None)
    assert modelarts.sync_in(str(tmp_path), str(tmp_path / "cache")) == str(tmp_path)
    assert not (tmp_path / "cache").exists()


def test_obs_url_without_moxing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "moxing", None)
    with pytest.raises(RuntimeError, match="obs://bucket/data.*moxing"):
        modelarts.sync_in("obs://bucket/data", str(tmp_path / "cache"))
    (tmp_path / "logs").mkdir()
    with pytest.raises(RuntimeError, match="moxing"):
        modelarts.sync_out(str(tmp_path / "logs"), "obs://bucket/out")


def test_sync_in_copies_obs_data_to_the_local_cache(obs, tmp_path):
    write(obs / "bucket" / "data" / "train" / "a.tfrecords", "A")
    write(obs / "bucket" / "data" / "b.npy", "B")
    cache = tmp_path / "cache" / "data"
    assert modelarts.sync_in("obs://bucket/data", str(cache)) == str(cache)
    assert (cache / "train" / "a.tfrecords").read_text() == "A"
    assert (cache / "b.npy").read_text() == "B"
    import moxing
    assert ("copy_parallel", "obs://bucket/data", str(cache)) in moxing.file.calls


def test_sync_in_missing_obs_data_names_the_url(obs, tmp_path):
    with pytest.raises(ValueError, match="--data_url obs://bucket/nothing"):
        modelarts.sync_in("obs://bucket/nothing", str(tmp_path / "cache"))


def test_sync_out_copies_logs_back_and_later_calls_update_them(obs, tmp_path):
    logdir = tmp_path / "logs"
    write(logdir / "train.txt", "epoch 1")
    write(logdir / "ckpt" / "model.ckpt.index", "1")
    modelarts.sync_out(str(logdir), "obs://bucket/out")
    assert (obs / "bucket" / "out" / "train.txt").read_text() == "epoch 1"
    assert (obs / "bucket" / "out" / "ckpt" / "model.ckpt.index").read_text() == "1"
    write(logdir / "train.txt", "epoch 2")
    write(logdir / "samples" / "epoch2.png", "png")
    modelarts.sync_out(str(logdir), "obs://bucket/out")
    assert (obs / "bucket" / "out" / "train.txt").read_text() == "epoch 2"
    assert (obs / "bucket" / "out" / "samples" / "epoch2.png").read_text() == "png"


def test_sync_out_to_a_local_folder(tmp_path):
    logdir = tmp_path / "logs"
    write(logdir / "ckpt" / "model.ckpt.index", "1")
    modelarts.sync_out(str(logdir), str(tmp_path / "out"))
    assert (tmp_path / "out" / "ckpt" / "model.ckpt.index").read_text() == "1"
    modelarts.sync_out(str(logdir), str(logdir))  # same folder: nothing to do


def test_sync_out_errors_are_not_swallowed(obs, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        modelarts.sync_out(str(tmp_path / "missing"), "obs://bucket/out")
    import moxing

    def broken(src, dst):
        raise OSError("OBS is down")

    monkeypatch.setattr(moxing.file, "copy_parallel", broken)
    (tmp_path / "logs").mkdir()
    with pytest.raises(OSError, match="OBS is down"):
        modelarts.sync_out(str(tmp_path / "logs"), "obs://bucket/out")
