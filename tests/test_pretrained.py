"""The pretrained model in the repository (pretrained/fashion-mnist: the main job's weights and Polyak averages,
without optimizer state): it opens with no model flag and re-evaluates the first test images to the per-image
bits/dim recorded beside it (test_bits_per_image.csv, from `train.py --evaluate --per_image` on the run that
trained it), with both weightings; the recorded figures' mean is the one its README and test.txt give."""
import csv
import os
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import evaluator
import optim
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import trained_run  # noqa: E402

PRETRAINED = os.path.join(ROOT, "pretrained", "fashion-mnist")
FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
N = 400


def _recorded():
    with open(os.path.join(PRETRAINED, "test_bits_per_image.csv")) as f:
        rows = list(csv.DictReader(f))
    return dict((w, np.array([float(r["bits_x" if w == "raw" else "bits_x_polyak"]) for r in rows]))
                for w in evaluator.WEIGHTS)


def test_the_pretrained_folder_is_a_model_to_use():
    prefix = trained_run.checkpoints.latest(os.path.join(PRETRAINED, "checkpoints"))
    keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert not any(optim.is_state(k) for k in keys) and any(k.endswith("/ema") for k in keys)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(PRETRAINED) for f in fs)
    assert size < 10e6, size
    recorded = _recorded()
    assert len(recorded["raw"]) == 10000
    final = [r for r in utils.read_jsonl(os.path.join(PRETRAINED, "test.txt")) if r.get("mode") == "evaluate"][-1]
    assert recorded["raw"].mean() == pytest.approx(final["bits_x"], abs=1e-5)
    assert recorded["polyak"].mean() == pytest.approx(final["bits_x_polyak"], abs=1e-5)


@pytest.mark.parametrize("weights", evaluator.WEIGHTS)
def test_it_reevaluates_to_its_recorded_figures(weights):
    """The first N test images, each with its own recorded dequantisation draw (evaluator.dequantization_noise).
    Recorded on TF 2.21 with the CPU kernels here; on another stack, CPU or kernel the float32 sums run in other
    orders: each coupling conv output sums up to 9 * 129 products (sqrt(1161) * u = 2e-6 relative, u = 2^-24,
    rounding errors adding like a random walk), through 24 steps whose differences add the same way (x5), so
    about 1e-5 relative: rtol 1e-4, ten times that. The CSV rounds to 1e-6. Worst seen: 2.0e-6 relative (2.9e-6
    bits/dim) on TF 1.15 here; on TF 2.21 here, the CSV's rounding (5e-7)."""
    run = trained_run.TrainedRun(PRETRAINED)
    x, y, _ = run.load_images("test", n=N)
    batches = ((x[i:i + 100], y[i:i + 100]) for i in range(0, N, 100))
    got = run.model.eval_per_image(batches, 0, 1, weights)["bits_x"]
    np.testing.assert_allclose(got, _recorded()[weights][:N], rtol=1e-4, atol=1e-6)
