"""train.py --export (export.py): a trained run as a SavedModel and frozen graphs that a program without this
project runs (tests/export_loader.py, in an isolated interpreter of the same stack): the same per-image bits/dim
as --evaluate on the same noise, decode(encode(x)) == x exactly, samples of the model's shape, no determinant,
inverse or float64 op in the frozen graphs; for a --loop_steps run with the plain 1x1 conv and for a class-
conditional run with the LU one."""
import os
import subprocess
import sys

import numpy as np
import pytest

import data_loaders
import evaluator
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
N_TEST, BATCH = 24, 8
TINY = ["--problem", "fashion-mnist", "--image_size", "8", "--n_levels", "2", "--depth", "2", "--width", "16",
        "--n_train", "256", "--n_test", str(N_TEST), "--n_batch_init", "32", "--epochs", "1", "--lr", "0.003",
        "--optimizer", "adam", "--epochs_warmup", "0", "--gradient_checkpointing", "0"]
RUNS = {"loop_invconv": ["--flow_permutation", "invconv", "--loop_steps"],
        "ycond_lu": ["--flow_permutation", "invconv_lu", "--flow_coupling", "affine", "--learntop", "--ycond"]}
# The ops an Ascend NPU lacks (float64 LU, inverse): the export computes them from the weights.
FORBIDDEN = ("MatrixDeterminant", "LogMatrixDeterminant", "MatrixInverse", "MatrixTriangularSolve")


@pytest.fixture(scope="module", params=sorted(RUNS))
def exported(request, tmp_path_factory):
    """A tiny run trained here, --evaluate --per_image on it, exported (batch BATCH) and run by export_loader."""
    tmp = tmp_path_factory.mktemp(request.param)
    logdir, out = str(tmp / "run"), str(tmp / "export")
    assert train.main(TINY + RUNS[request.param] + ["--logdir", logdir]) == 0
    assert train.main(["--logdir", logdir, "--evaluate", "--per_image", "--n_test", str(N_TEST)]) == 0
    assert train.main(["--logdir", logdir, "--export", out, "--export_batch", str(BATCH)]) == 0
    data = data_loaders.get_data("fashion-mnist", image_size=8, n_test=N_TEST, dal=0)
    xs, ys = zip(*data.test_batches(N_TEST))
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    noise = evaluator.dequantization_noise(range(N_TEST), 0, x.shape[1:], 256.0)
    inputs = str(tmp / "inputs.npz")
    np.savez(inputs, x=x, y=y, noise=noise, temperature=np.linspace(0, 1, N_TEST).astype(np.float32))
    outputs = str(tmp / "outputs.npz")
    proc = subprocess.run([sys.executable, "-I", os.path.join(ROOT, "tests", "export_loader.py"), out, inputs,
                           outputs], cwd=str(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    rows = [line.split(",") for line in open(os.path.join(logdir, "test_bits_per_image.csv")).read().split()[1:]]
    return dict(np.load(outputs), x=x, evaluated=np.array([float(r[1]) for r in rows]), out=out)


@pytest.mark.parametrize("kind", ["saved", "frozen"])
def test_bits_per_dim_equal_evaluate_s(exported, kind):
    """The export computes the coupling networks with tf.nn.conv2d where --evaluate on a CPU uses kernels.py's
    matmuls, and its 1x1 convs with W^-1 and log|det W| folded in: other float32 summation orders. A coupling
    conv's output is a sum of up to 9 * 17 = 153 products here, which another order changes by about
    sqrt(153) * u = 7e-7 relative (u = 2^-24; rounding errors add like a random walk); the log-density inherits
    differences of that order through its 4 steps and priors: rtol 1e-5 is over ten times it. Worst seen: 1.8e-7
    relative (1.5e-6 bits/dim) on TF 1.15, 1.6e-7 on TF 2.21."""
    got = exported[kind + "_bits_per_dim"]
    assert got.shape == (N_TEST,) and got.dtype == np.float32
    np.testing.assert_allclose(got, exported["evaluated"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", ["saved", "frozen"])
def test_decode_of_encode_is_the_image_and_samples_have_its_shape(exported, kind):
    x = exported["x"]
    assert exported[kind + "_z"].shape == (N_TEST, 64) and exported[kind + "_z"].dtype == np.float32
    decoded = exported[kind + "_decoded"]
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, x)
    images = exported[kind + "_images"]
    assert images.dtype == np.uint8 and images.shape == x.shape
    assert len(np.unique(images.reshape(N_TEST, -1), axis=0)) == N_TEST  # temperature 0 is one image, the rest differ
    np.testing.assert_array_equal(exported["saved_z"], exported["frozen_z"])


def test_frozen_graphs_hold_no_determinant_inverse_or_float64(exported):
    ops = list(exported["frozen_ops"])
    assert any(op.startswith("Conv2D:") for op in ops) and any(op.startswith("MatMul:") for op in ops), ops
    assert [op for op in ops if op.split(":")[0] in FORBIDDEN or "float64" in op] == []


def test_export_without_a_checkpoint_is_one_line(tmp_path, capsys):
    os.makedirs(str(tmp_path / "empty"))
    assert train.cli(["--logdir", str(tmp_path / "empty"), "--export", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: --logdir %s has no checkpoint in checkpoints/ to use; give --restore_path" % (
        tmp_path / "empty") and len(err) == 2 and not os.path.exists(str(tmp_path / "out"))
