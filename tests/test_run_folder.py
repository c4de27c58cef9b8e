"""A run folder describes itself (checkpoints.py, config.adopt_run): its
checkpoints carry the run's config and RunState, so --evaluate, --sample,
--inference, --resume and --restore_path need no model flag, and a model
flag that contradicts the run is refused with both values named."""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import checkpoints
import config
import evaluator
import model as glow_model
import optim
import train
import utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import pack_run  # noqa: E402

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
    assert state["epoch"] == 2 and state["step"] == int(prefix.rsplit("-", 1)[1]) == 8
    assert state["n_processed"] == 2 * 256 and np.isfinite(state["best_test"])


def test_modes_need_no_model_flags(run_folder):
    assert train.main(["--logdir", run_folder, "--evaluate"]) == 0
    line = _last_test_line(run_folder)
    assert line["mode"] == "evaluate" and line["n_images"] == 10000
    trained = [r for r in utils.read_jsonl(os.path.join(run_folder, "test.txt")) if "epoch" in r][-1]
    assert line["bits_x"] == pytest.approx(trained["bits_x"], abs=0.2)
    assert train.main(["--logdir", run_folder, "--sample", "4"]) == 0
    assert os.path.exists(os.path.join(run_folder, "samples_t0.70_raw.png"))
    # The mode's config line records the run's recipe, not the flags' defaults (adamax, --n_train 50000).
    mode_line = utils.read_jsonl(os.path.join(run_folder, "train.txt"))[-1]
    assert mode_line["sample"] == 4 and (mode_line["optimizer"], mode_line["lr"], mode_line["n_train"],
                                         mode_line["gradient_checkpointing"]) == ("adam", 0.003, 256, "none")
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


def test_what_a_run_passes_on_is_an_allow_list_derived_from_the_architecture(run_folder):
    saved = dict(checkpoints.saved_config(checkpoints.latest(os.path.join(run_folder, "checkpoints"))),
                 brand_new_flag=7, verbose=True, epochs=99, device="gpu", n_test=64)
    flags = set(vars(config.parse_args([])))
    # Every field of the one declaration is set by a flag (n_y by --problem's data), and nothing else is a model flag.
    fields = set(glow_model.ARCHITECTURE) - {"n_y", "image_shape"}
    assert fields <= {field for _, field in config.MODEL_FLAGS} and {f for f, _ in config.MODEL_FLAGS} <= flags
    assert set(config.RESUME_FLAGS) <= flags and not set(config.RESUME_FLAGS) & {f for f, _ in config.MODEL_FLAGS}
    for argv, recipe, test_set in ((["--resume"], True, True), (["--evaluate"], True, False),
                                   (["--restore_path", "x"], False, False)):
        args = config.parse_args(["--logdir", run_folder] + argv)
        args.brand_new_flag = None  # a flag added tomorrow: not in the lists, so never taken from a run
        got = config.adopt_run(args, saved, "the run")
        assert (got.depth, got.width, got.problem) == (1, 8, "fashion-mnist")
        assert (got.optimizer == "adam", got.lr == 0.003, got.n_train == 256) == (recipe,) * 3, argv
        assert got.n_test == (64 if test_set else -1), argv
        assert (got.brand_new_flag, got.verbose, got.epochs, got.device) == (None, False, 1000000, "cpu"), argv
        assert args.optimizer == "adamax" and args.depth == 32, "adopt_run changed its argument"
    given = config.adopt_run(config.parse_args(["--logdir", run_folder, "--resume", "--lr", "0.01"]), saved, "r")
    assert given.lr == 0.01 and given.optimizer == "adam"


def test_config_is_read_only():
    args = config.parse_args(["--depth", "4", "--flow_permutation", "3", "--learntop"])
    cfg = config.derive_config(args, (32, 32, 1), 10, 60000, 10000, 1)
    assert (cfg.depth, cfg.permutation, cfg.learntop, cfg.kernels) == (4, "invconv_lu", True, "cpu")
    # Derived values replace their raw flags: one field a reader can take.
    assert not any(hasattr(cfg, raw) for raw in ("flow_permutation", "flow_coupling", "lu"))
    with pytest.raises(AttributeError, match="read-only"):
        cfg.depth = 5
    assert cfg.depth == 4


def _ops_and_variables(graph):
    return set(op.type for op in graph.get_operations()), [v.op.name for v in graph.get_collection("variables")]


def test_modes_build_the_model_only(run_folder):
    """A mode's graph (evaluator.Evaluator) holds the model's weights and their Polyak averages, no optimizer
    state, no gradient; training's (trainer.Trainer) is the same graphs plus its step."""
    seen = {}
    real_init = evaluator.Evaluator.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen[type(self).__name__] = self

    evaluator.Evaluator.__init__ = keep
    try:
        assert train.main(["--logdir", run_folder, "--sample", "2"]) == 0
        assert train.main(["--logdir", run_folder, "--resume", "--epochs", "2"]) == 0  # builds, trains nothing
    finally:
        evaluator.Evaluator.__init__ = real_init
    model_ops, model_vars = _ops_and_variables(seen["Evaluator"].graph)
    train_ops, train_vars = _ops_and_variables(seen["Trainer"].graph)
    weights = [v for v in model_vars if v.startswith("model/")]
    assert weights and sorted(model_vars) == sorted(weights + ["optim/%s/ema" % v for v in weights
                                                                if "optim/%s/ema" % v in train_vars])
    assert not any(optim.is_state(v) for v in model_vars) and any(optim.is_state(v) for v in train_vars)
    assert "ResourceApplyAdam" in train_ops and not any("Apply" in op or "Grad" in op for op in model_ops)
    assert set(model_vars) < set(train_vars)


def test_packed_run_is_used_like_the_run_and_not_resumed(run_folder, tmp_path, capsys):
    """scripts/pack_run.py: the weights and averages without the optimizer state evaluate to the same figures;
    resuming from it is a one-line error; a variable missing or extra (other than optimizer state) still is."""
    packed = str(tmp_path / "packed")
    assert pack_run.main([run_folder, packed]) == 0
    prefix, packed_prefix = [checkpoints.latest(os.path.join(d, "checkpoints")) for d in (run_folder, packed)]
    keys = tf.train.load_checkpoint(packed_prefix).get_variable_to_shape_map()
    assert not any(optim.is_state(k) for k in keys) and any(k.endswith("/ema") for k in keys)
    assert checkpoints.saved_config(packed_prefix) == checkpoints.saved_config(prefix)
    for folder in (run_folder, packed):
        assert train.main(["--logdir", folder, "--evaluate", "--n_test", "32"]) == 0
    lines = [_last_test_line(d) for d in (run_folder, packed)]
    assert (lines[0]["bits_x"], lines[0]["bits_x_polyak"]) == (lines[1]["bits_x"], lines[1]["bits_x_polyak"])
    capsys.readouterr()
    assert train.cli(["--logdir", packed, "--resume"]) == 2
    assert "holds no optimizer state (a model packed for use" in capsys.readouterr().err
    # Without one average, or with a variable of another model: errors that name it.
    values = dict((k, np.asarray(tf.train.load_checkpoint(packed_prefix).get_tensor(k))) for k in keys)
    ema = sorted(k for k in keys if k.endswith("/ema"))[0]
    for name, changed in (("missing", dict((k, v) for k, v in values.items() if k != ema)),
                          ("extra", dict(values, **{"model/9/0/actnorm/b": np.zeros(3, np.float32)}))):
        folder = str(tmp_path / name)
        pack_run.write_model_only(packed_prefix, os.path.join(folder, "checkpoints"), lambda k: False)
        checkpoints.write_values(changed, checkpoints.latest(os.path.join(folder, "checkpoints")))
        assert train.cli(["--logdir", folder, "--evaluate", "--n_test", "8"]) == 2
        assert (ema if name == "missing" else "model/9/0/actnorm/b") in capsys.readouterr().err
