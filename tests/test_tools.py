"""The tools on a trained run folder (scripts/likelihood.py, latent.py, ood.py, on scripts/trained_run.py), run
on a tiny run trained here: one CSV row per image with --evaluate's mean, a direction that separates two
synthetic classes, grids whose reconstructions and end points are the inputs exactly, and the AUROC of a
model against its own data (about 0.5) and against noise (about 1)."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

import train
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import latent  # noqa: E402
import likelihood  # noqa: E402
import ood  # noqa: E402
import trained_run  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
N_TEST = 300


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("tools") / "run")
    assert train.main(["--problem", "fashion-mnist", "--image_size", "8", "--n_levels", "2", "--depth", "2",
                       "--width", "16", "--flow_permutation", "invconv_lu", "--learntop", "--n_train", "512",
                       "--n_test", "64", "--n_batch_init", "32", "--epochs", "2", "--lr", "0.003", "--optimizer",
                       "adam", "--epochs_warmup", "0.5", "--gradient_checkpointing", "0", "--logdir", logdir]) == 0
    return logdir


@pytest.fixture(scope="module")
def opened(run_folder):
    """The run opened once; the tools' main()s get this one instead of building the graph again."""
    return trained_run.TrainedRun(run_folder)


@pytest.fixture
def tools_share(opened, monkeypatch):
    monkeypatch.setattr(trained_run, "TrainedRun", lambda logdir, checkpoint="", weights="raw": opened)


def _images(shape, seed, n):
    return np.random.RandomState(seed).randint(0, 256, (n,) + shape).astype(np.uint8)


def _write_pngs(folder, images):
    os.makedirs(folder)
    for i, image in enumerate(images):
        Image.fromarray(image[:, :, 0]).save(os.path.join(folder, "img_%02d.png" % i))


def test_likelihood_csv_has_a_row_per_image_and_evaluate_s_mean(run_folder, tools_share, tmp_path, capsys):
    out = str(tmp_path / "test.csv")
    assert likelihood.main([run_folder, "test", "--n", str(N_TEST), "--out", out]) == 0
    rows = [line.split(",") for line in open(out).read().splitlines()]
    assert rows[0] == ["image", "bits_per_dim", "n_dequant_draws"] and len(rows) == N_TEST + 1
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(N_TEST)] and {r[2] for r in rows[1:]} == {"1"}
    bits = np.array([float(r[1]) for r in rows[1:]])
    assert "mean %.4f, median %.4f" % (bits.mean(), np.median(bits)) in capsys.readouterr().out
    assert train.main(["--logdir", run_folder, "--evaluate", "--n_test", str(N_TEST)]) == 0
    evaluated = utils.read_jsonl(os.path.join(run_folder, "test.txt"))[-1]
    assert evaluated["mode"] == "evaluate" and evaluated["n_images"] == N_TEST
    assert bits.mean() == pytest.approx(evaluated["bits_x"], abs=2e-6)


def test_likelihood_of_a_folder_names_files_and_fits_only_when_asked(run_folder, tools_share, opened, tmp_path):
    small = _images((6, 6, 1), 0, 3)
    folder = str(tmp_path / "pngs")
    _write_pngs(folder, small)
    with pytest.raises(ValueError, match=r"img_00.png: 6x6x1, the model takes 8x8x1 images; pass --resize"):
        likelihood.main([run_folder, folder])
    out = str(tmp_path / "folder.csv")
    assert likelihood.main([run_folder, folder, "--resize", "pad", "--out", out, "--n_dequant_draws", "2"]) == 0
    rows = [line.split(",") for line in open(out).read().splitlines()[1:]]
    assert [r[0] for r in rows] == ["img_00.png", "img_01.png", "img_02.png"] and {r[2] for r in rows} == {"2"}
    padded = np.pad(small, ((0, 0), (1, 1), (1, 1), (0, 0)))  # the same images, padded by hand, as an .npy
    np.save(str(tmp_path / "padded.npy"), padded[..., 0])
    x, _, _ = opened.load_images(str(tmp_path / "padded.npy"))
    np.testing.assert_array_equal(x, padded)
    from_npy = opened.bits_per_dim(x, np.zeros(3, np.int32), n_draws=2)
    np.testing.assert_allclose([float(r[1]) for r in rows], from_npy, atol=2e-6)


def test_fitting_images(opened, tmp_path):
    rgb = np.random.RandomState(1).randint(0, 256, (2, 16, 12, 3)).astype(np.uint8)
    np.save(str(tmp_path / "rgb.npy"), rgb)
    x, _, _ = opened.load_images(str(tmp_path / "rgb.npy"), resize="crop")
    assert x.shape == (2, 8, 8, 1)
    x, _, _ = opened.load_images(str(tmp_path / "rgb.npy"), resize="pad")  # larger: centre-cropped, no border
    grey = np.asarray(Image.fromarray(rgb[0]).convert("L"))
    np.testing.assert_array_equal(x[0, :, :, 0], grey[4:12, 2:10])
    np.save(str(tmp_path / "float.npy"), rgb.astype(np.float32))
    with pytest.raises(ValueError, match="float32 array of shape .*expected uint8 images"):
        opened.load_images(str(tmp_path / "float.npy"))
    with pytest.raises(ValueError, match="not a folder, an .npy file, 'test' or a problem"):
        opened.load_images(str(tmp_path / "nothing"))


def test_a_direction_separates_two_synthetic_classes(run_folder, tools_share, opened, tmp_path):
    """Bright squares on the left or on the right: the direction of "right" from 40 images puts 20 new
    images of each kind on either side of a threshold."""
    def kind(right, seed, n):
        x = np.random.RandomState(seed).randint(0, 40, (n, 8, 8, 1)).astype(np.uint8)
        x[:, 2:6, 4:8 if right else 0:4] += 180
        return x
    images = np.concatenate([kind(False, 0, 20), kind(True, 1, 20)])
    folder = str(tmp_path / "squares")
    _write_pngs(folder, images)
    with open(str(tmp_path / "attributes.csv"), "w") as f:
        f.write("image,right\n" + "".join("img_%02d.png,%d\n" % (i, i >= 20) for i in range(40)))
    out = str(tmp_path / "dirs.npy")
    assert latent.main(["directions", run_folder, folder, "--attributes", str(tmp_path / "attributes.csv"),
                        "--out", out]) == 0
    vectors, meta = np.load(out), json.load(open(str(tmp_path / "dirs.json")))
    assert vectors.shape == (1, 64) and meta["names"] == ["right"] and meta["counts"]["right"] == [20, 20]
    new = np.concatenate([kind(False, 2, 20), kind(True, 3, 20)])
    projection = opened.encode(new, np.zeros(40, np.int32)) @ vectors[0]
    assert projection[:20].max() < projection[20:].min()


def test_celeba_attribute_file_is_read(tmp_path):
    path = str(tmp_path / "list_attr_celeba.txt")
    with open(path, "w") as f:
        f.write("3\nSmiling Young\n000001.jpg -1 1\n000002.jpg 1 1\n000003.jpg  1 -1\n")
    found = latent.attributes_of(path, ["faces/000003.jpg", "faces/000001.jpg"])
    assert list(found) == ["Smiling", "Young"]
    np.testing.assert_array_equal(found["Smiling"], [True, False])
    np.testing.assert_array_equal(found["Young"], [False, True])


def test_grids_start_with_exact_reconstructions_and_interpolations_end_at_the_inputs(opened):
    x, y, _ = opened.load_images("test", n=6)
    direction = np.random.RandomState(0).normal(0, 1, sum(opened.model.z_sizes)).astype(np.float32)
    grid = latent.manipulation_grid(opened, x[:3], y[:3], direction, [-1.0, 0.0, 1.0]).reshape((3, 5) + x.shape[1:])
    for row, image in zip(grid, x[:3]):
        np.testing.assert_array_equal(row[0], image)  # the input
        np.testing.assert_array_equal(row[1], image)  # decode(encode(x))
        np.testing.assert_array_equal(row[3], image)  # strength 0
        assert not np.array_equal(row[2], image)
    grid = latent.interpolation_grid(opened, x, y, [(0, 1), (2, 3)], steps=5).reshape((4, 8) + x.shape[1:])
    for row, (i, j) in zip(grid, [(0, 1), (0, 1), (2, 3), (2, 3)]):  # linear, spherical per pair
        for column, image in ((0, x[i]), (1, x[i]), (2, x[i]), (6, x[j]), (7, x[j])):
            np.testing.assert_array_equal(row[column], image)
    assert not np.array_equal(grid[0, 4], grid[1, 4])  # linear and spherical differ half-way


def test_slerp_keeps_each_level_on_its_great_circle():
    a, b = np.array([3.0, 0.0, 0.0, 2.0]), np.array([0.0, 3.0, 2.0, 0.0])
    levels = [slice(0, 2), slice(2, 4)]
    half = latent.slerp(a, b, 0.5, levels)
    np.testing.assert_allclose(half, [3 / np.sqrt(2), 3 / np.sqrt(2), np.sqrt(2), np.sqrt(2)])
    np.testing.assert_array_equal(latent.slerp(a, b, 0.0, levels), a)
    np.testing.assert_array_equal(latent.slerp(a, b, 1.0, levels), b)


def test_grid_commands_write_pngs(run_folder, tools_share, tmp_path, capsys):
    dirs = str(tmp_path / "classes.npy")
    assert latent.main(["directions", run_folder, "--n", "200", "--out", dirs]) == 0
    assert json.load(open(str(tmp_path / "classes.json")))["names"][:2] == ["T-shirt/top", "Trouser"]
    manipulated = str(tmp_path / "m.png")
    assert latent.main(["manipulate", run_folder, "--n", "10", "--directions", dirs, "--direction", "Trouser",
                        "--index", "0", "1", "--strengths", "-1", "1", "--out", manipulated]) == 0
    assert Image.open(manipulated).size == (4 * 8, 2 * 8)
    interpolated = str(tmp_path / "i.png")
    assert latent.main(["interpolate", run_folder, "--n", "4", "--pairs", "0:1", "--steps", "4",
                        "--out", interpolated]) == 0
    assert Image.open(interpolated).size == (7 * 8, 2 * 8)
    out = capsys.readouterr().out
    assert "reconstruction exact for 2 of 2 -> " in out and "reconstruction exact for 2 of 2 rows" in out
    with pytest.raises(ValueError, match="--direction Hat: not one of"):
        latent.main(["manipulate", run_folder, "--n", "2", "--directions", dirs, "--direction", "Hat"])


def test_auroc():
    assert trained_run.auroc([1, 2, 3], [4, 5]) == 1.0
    assert trained_run.auroc([4, 5], [1, 2, 3]) == 0.0
    assert trained_run.auroc([1, 2, 2], [2, 2, 1]) == 0.5
    assert trained_run.auroc([1, 3], [2]) == 0.5


def test_ood_against_the_same_data_and_against_noise(run_folder, tools_share, opened, tmp_path):
    x, _, _ = opened.load_images("test", n=2 * N_TEST)
    for name, part in (("a", x[:N_TEST]), ("b", x[N_TEST:])):
        np.save(str(tmp_path / ("%s.npy" % name)), part)
    same = str(tmp_path / "same.png")
    assert ood.main([run_folder, "--in", str(tmp_path / "a.npy"), "--vs", str(tmp_path / "b.npy"),
                     "--out", same]) == 0
    figures = json.load(open(str(tmp_path / "same.json")))
    assert abs(figures["auroc"] - 0.5) < 0.1 and [s["n"] for s in figures["sets"]] == [N_TEST, N_TEST]
    assert Image.open(same).format == "PNG"
    assert ood.main([run_folder, "--n", str(N_TEST), "--vs", "noise", "--out", str(tmp_path / "noise.png")]) == 0
    assert json.load(open(str(tmp_path / "noise.json")))["auroc"] > 0.98
