"""A run folder describes itself (checkpoints.py, config.adopt_run): its
checkpoints carry the run's config and RunState, so --evaluate, --sample,
--inference, --resume and --restore_path need no model flag, and a model
flag that contradicts the run is refused with both values named."""
import json
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import config
import train
import utils

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")

# Not the defaults, so that a mode which ignored the run's config would
# build another model and fail to restore.
MODEL = ["--n_levels", "2", "--depth", "1", "--width", "8", "--flow_permutation", "invconv_lu",
         "--flow_coupling", "affine", "--learntop", "--image_size", "8"]
DATA = ["--problem", "fashion-mnist", "--n_test", "64", "--n_batch_init", "32"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("run") / "logs")
    status = train.main(DATA + MODEL + ["--logdir", logdir, "--n_train", "256", "--epochs", "2", "--lr", "0.003",
                                        "--optimizer", "adam", "--epochs_warmup", "0.5", "--gradient_checkpointing",
                                        "0"])
    assert status == 0
    return logdir


def _last_test_line(logdir):
    return utils.read_jsonl(os.path.join(logdir, "test.txt"))[-1]


def test_checkpoint_carries_config_and_state(run_folder):
    prefix = checkpoints.latest(os.path.join(run_folder, "checkpoints"))
    saved = checkpoints.saved_config(prefix)
    assert (saved["depth"], saved["width"], saved["permutation"], saved["learntop"]) == (1, 8, "invconv_lu", True)
    state = json.loads(tf.train.load_checkpoint(prefix).get_tensor(checkpoints.STATE_KEY).decode("utf-8"))
    assert state["epoch"] == 2 and state["step"] == checkpoints.step_of(prefix) == 8
    assert state["n_processed"] == 2 * 256 and np.isfinite(state["best_test"])


def test_modes_need_no_model_flags(run_folder):
    assert train.main(["--logdir", run_folder, "--evaluate"]) == 0
    line = _last_test_line(run_folder)
    assert line["mode"] == "evaluate" and line["n_images"] == 10000
    trained = [r for r in utils.read_jsonl(os.path.join(run_folder, "test.txt")) if "epoch" in r][-1]
    assert line["bits_x"] == pytest.approx(trained["bits_x"], abs=0.2)
    assert train.main(["--logdir", run_folder, "--sample", "4"]) == 0
    assert os.path.exists(os.path.join(run_folder, "samples_t0.70_raw.png"))
    prefix = checkpoints.latest(os.path.join(run_folder, "checkpoints"))
    other = os.path.join(os.path.dirname(run_folder), "other")
    assert train.main(["--logdir", other, "--restore_path", prefix, "--evaluate", "--n_test", "64"]) == 0
    assert _last_test_line(other)["bits_x"] == pytest.approx(
        [r for r in utils.read_jsonl(os.path.join(run_folder, "test.txt")) if "epoch" in r][-1]["bits_x"],
        abs=1e-4)


def test_resume_continues_with_the_runs_flags(run_folder):
    assert train.main(["--logdir", run_folder, "--resume", "--epochs", "3"]) == 0
    lines = [r for r in utils.read_jsonl(os.path.join(run_folder, "train.txt")) if "epoch" in r]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and lines[-1]["step"] == 12  # --n_train 256: 4 steps
    resumed = [r for r in utils.read_jsonl(os.path.join(run_folder, "train.txt")) if r.get("resumed")][-1]
    assert resumed["optimizer"] == "adam" and resumed["lr"] == 0.003 and resumed["depth"] == 1


@pytest.mark.parametrize("flag,value,message", [
    ("--depth", "2", "--depth 2 contradicts the run's --depth 1"),
    ("--flow_coupling", "additive", "--flow_coupling additive contradicts the run's --flow_coupling affine"),
    ("--lu", None, None),  # the run's own 1x1 conv: no contradiction
    ("--flow_permutation", "2", "--flow_permutation invconv contradicts the run's --flow_permutation invconv_lu"),
])
def test_a_contradicting_model_flag_is_refused(run_folder, flag, value, message):
    args = config.parse_args(["--logdir", run_folder, "--evaluate", flag] + ([value] if value else []))
    saved = checkpoints.saved_config(checkpoints.latest(os.path.join(run_folder, "checkpoints")))
    if message is None:
        assert config.adopt_run(args, saved, "the run").flow_permutation == "invconv_lu"
        return
    with pytest.raises(ValueError, match=message):
        config.adopt_run(args, saved, "the run")


def test_config_is_read_only_and_built_from_code():
    cfg = config.from_flags((32, 32, 1), 10, 60000, 10000, depth=4, flow_permutation="3", learntop=True)
    assert (cfg.depth, cfg.permutation, cfg.learntop, cfg.kernels) == (4, "invconv_lu", True, "cpu")
    with pytest.raises(AttributeError, match="read-only"):
        cfg.depth = 5
    assert cfg.replace(depth=5).depth == 5 and cfg.depth == 4
    with pytest.raises(ValueError, match="no flag --deepness"):
        config.from_flags((32, 32, 1), 10, 60000, 10000, deepness=4)
