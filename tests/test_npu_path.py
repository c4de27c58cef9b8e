"""The Ascend NPU path as far as this machine allows (npu_bridge cannot be
installed here): the config it derives, static shapes with padding, the
ModelArts entry defaults, the multi-device launch script, and the clear error
when npu_bridge is missing. The session config proto is tested in
test_runtime.py."""
import os
import stat
import subprocess
import sys
import types

import numpy as np
import pytest

import config
import runtime
import train
import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import modelarts_entry  # noqa: E402


def _cfg(*flags):
    args = config.parse_args(["--problem", "fashion-mnist", "--n_levels", "2", "--depth", "1", "--width", "8",
                              "--n_batch_test", "8", "--n_batch_train", "4", "--n_batch_init", "16",
                              "--gradient_checkpointing", "0", "--anchor_size", "8"] + list(flags))
    return config.derive_config(args, (8, 8, 1), 10, 64, 16, 1)


def test_npu_uses_lu_invconv_and_other_devices_keep_plain():
    assert _cfg("--device", "npu").permutation == "invconv_lu"
    assert _cfg("--device", "cpu").permutation == "invconv"
    assert _cfg("--device", "npu", "--flow_permutation", "shuffle").permutation == "shuffle"


def test_static_shapes_pad_short_batches():
    cfg = _cfg("--device", "npu")
    backend = runtime.Backend("npu")  # single process; the session below is a plain CPU one
    tr = trainer_lib.Trainer(cfg, backend, lambda g: runtime.make_session("cpu", runtime.Backend("cpu"), graph=g))
    assert tr.x.get_shape().as_list() == [4, 8, 8, 1]
    assert tr.x_test.get_shape().as_list() == [8, 8, 8, 1]
    rng = np.random.RandomState(0)
    tr.initialize(rng.randint(0, 256, (16, 8, 8, 1)).astype(np.uint8), np.zeros(16, np.int32))
    x = rng.randint(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    z = tr.encode(x, np.zeros(5, np.int32))
    assert z.shape == (5, 64) and tr.z_in.get_shape().as_list() == [8, 64]
    x_back = tr.decode(z, np.zeros(5, np.int32))
    np.testing.assert_array_equal(x_back, x)
    images = tr.sample(np.zeros(6, np.int32), np.zeros(6, np.float32))
    assert images.shape == (6, 8, 8, 1)
    per_image = tr.eval_per_image([(x, np.zeros(5, np.int32))], weights="polyak")
    assert sorted(per_image) == ["bits_x", "bits_y", "loss", "pred_loss"]
    assert all(v.shape == (5,) and np.isfinite(v).all() for v in per_image.values())


def test_loss_scale_dynamic_and_fixed():
    state = types.SimpleNamespace(loss_scale=None)  # stands in for the run state
    fixed = trainer_lib.LossScale("128")
    fixed.start(state, restored=False)
    assert state.loss_scale == 128.0 and fixed.update(state, False) is False and state.loss_scale == 128.0
    dyn = trainer_lib.LossScale("dynamic", period=3)
    dyn.start(state, restored=False)
    assert state.loss_scale == 2.0 ** 15
    assert dyn.update(state, False) is True and state.loss_scale == 2.0 ** 14
    for _ in range(3):
        assert dyn.update(state, True) is False
    assert state.loss_scale == 2.0 ** 15
    state.loss_scale = 2.0 ** 10
    dyn.start(state, restored=True)  # a resumed run keeps its saved scale
    assert state.loss_scale == 2.0 ** 10
    with pytest.raises(ValueError, match="--loss_scale 'huge'"):
        _cfg("--loss_scale", "huge")


def test_modelarts_entry_defaults():
    assert modelarts_entry.with_defaults(["--problem", "cifar10"]) == [
        "--device", "npu", "--logdir", "/cache/glow_logs", "--problem", "cifar10"]
    assert modelarts_entry.with_defaults(["--device=cpu", "--logdir", "x"]) == ["--device=cpu", "--logdir", "x"]


def test_launch_script_gives_each_rank_its_device(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"$RANK_ID $ASCEND_DEVICE_ID $DEVICE_ID $RANK_SIZE $RANK_TABLE_FILE $*\"\n"
                    "[ \"$RANK_ID\" != 2 ]\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    env = dict(os.environ, PYTHON=str(fake), LAUNCH_LOGDIR=str(tmp_path / "logs"))
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "launch_ascend.sh"), "4", str(table),
                           "--problem", "cifar10"], env=env, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 1 and "rank 2 failed" in proc.stderr  # the fake fails on rank 2
    for i in range(4):
        line = (tmp_path / "logs" / ("rank_%d.log" % i)).read_text().split()
        assert line[:5] == [str(i), str(i), str(i), "4", str(table)]
        assert line[-6:] == ["--device", "npu", "--backend", "hccl", "--problem", "cifar10"]


def test_npu_without_npu_bridge_is_one_clear_error(monkeypatch, capsys):
    """train.py's entry point (cli), in this process: status 2 and one line
    naming npu_bridge and CANN (an exception would fail the test; as a
    process, test_train.py's test_bad_flag_on_the_command_line)."""
    monkeypatch.delenv("GLOW_TRACEBACK", raising=False)
    monkeypatch.setitem(sys.modules, "npu_bridge", None)  # not installed here; an import of it fails
    assert train.cli(["--device", "npu", "--problem", "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    assert "npu_bridge" in err and "CANN" in err and "Traceback" not in err
