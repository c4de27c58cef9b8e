"""utils.py: append-only JSON-lines log, PNG grids, atomic writes.

utils.py does not use TensorFlow, so neither does this file.
"""
import contextlib
import json
import os
import stat
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402


def strict_loads(line):
    """json.loads that rejects the NaN/Infinity literals standard JSON lacks."""
    def reject(name):
        raise ValueError("non-standard JSON constant %s in %r" % (name, line))
    return json.loads(line, parse_constant=reject)


def raw_lines(path):
    with open(path) as f:
        return f.read().splitlines()


CONFIG = {"dataset": "cifar10", "n_levels": 3, "lr": 0.001, "beta2": np.float64(0.999),
          "image_size": np.int64(32), "flags": ["a", "b"]}


def test_new_log_starts_with_config_and_every_line_is_strict_json(tmp_path):
    path = str(tmp_path / "train.jsonl")
    with contextlib.closing(utils.ResultLogger(path, CONFIG)) as logger:
        logger.log(epoch=np.int64(1), loss=np.float32(1.5), bits_x=float("nan"),
                   grad_norm=np.float64(np.inf), low=-np.inf, finite=np.bool_(True),
                   hist=np.array([[1, 2], [3, 4]], np.int32),
                   stats={"mean": np.float32(0.25), "nan": np.array([np.nan, 1.0])},
                   pair=(np.int8(-3), "x"), none=None)
        logger.log(epoch=2, loss=1.25)
    lines = raw_lines(path)
    assert len(lines) == 3
    parsed = [strict_loads(line) for line in lines]
    assert parsed[0] == {"dataset": "cifar10", "n_levels": 3, "lr": 0.001, "beta2": 0.999,
                         "image_size": 32, "flags": ["a", "b"]}
    assert parsed[1] == {"epoch": 1, "loss": 1.5, "bits_x": "NaN", "grad_norm": "Infinity",
                         "low": "-Infinity", "finite": True, "hist": [[1, 2], [3, 4]],
                         "stats": {"mean": 0.25, "nan": ["NaN", 1.0]}, "pair": [-3, "x"],
                         "none": None}
    assert type(parsed[1]["epoch"]) is int and type(parsed[1]["finite"]) is bool
    assert float(parsed[1]["bits_x"]) != float(parsed[1]["bits_x"])  # NaN round-trips via float()
    assert float(parsed[1]["low"]) == -np.inf
    assert utils.read_jsonl(path) == parsed


def test_reopen_appends_resumed_marker_and_keeps_old_lines(tmp_path):
    path = str(tmp_path / "train.jsonl")
    with contextlib.closing(utils.ResultLogger(path, CONFIG)) as logger:
        logger.log(epoch=1, loss=2.0)
    with open(path, "rb") as f:
        before = f.read()
    with contextlib.closing(utils.ResultLogger(path, dict(CONFIG, lr=0.0005))) as logger:
        logger.log(epoch=2, loss=1.0)
    with open(path, "rb") as f:
        after = f.read()
    assert after.startswith(before)
    records = [strict_loads(line) for line in raw_lines(path)]
    assert len(records) == 4
    assert "resumed" not in records[0]
    assert records[1] == {"epoch": 1, "loss": 2.0}
    assert records[2]["resumed"] is True and records[2]["lr"] == 0.0005
    assert records[2]["dataset"] == "cifar10"
    assert records[3] == {"epoch": 2, "loss": 1.0}


def test_empty_existing_file_is_treated_as_new(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("")
    utils.ResultLogger(str(path), {"a": 1}).close()
    assert utils.read_jsonl(str(path)) == [{"a": 1}]


def test_torn_last_line_is_terminated_on_resume(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n{"epoch": 1, "loss": 1.')  # crash mid-line
    with contextlib.closing(utils.ResultLogger(str(path), {"a": 1})) as logger:
        logger.log(epoch=2)
    lines = raw_lines(str(path))
    assert lines[1] == '{"epoch": 1, "loss": 1.'
    with pytest.raises(ValueError, match=r"train\.jsonl:2:"):
        utils.read_jsonl(str(path))
    assert utils.read_jsonl(str(path), skip_invalid=True) == [
        {"a": 1}, {"resumed": True, "a": 1}, {"epoch": 2}]


def test_close_is_idempotent_and_log_after_close_fails(tmp_path):
    path = str(tmp_path / "train.jsonl")
    logger = utils.ResultLogger(path, {"a": 1})
    logger.close()
    logger.close()
    with pytest.raises(ValueError, match="closed"):
        logger.log(loss=1.0)


def test_unserialisable_values_are_named(tmp_path):
    path = str(tmp_path / "train.jsonl")
    with contextlib.closing(utils.ResultLogger(path, {"a": 1})) as logger:
        with pytest.raises(TypeError, match="opt.*set"):
            logger.log(opt={1, 2})
        with pytest.raises(TypeError, match="complex"):
            logger.log(z=np.complex64(1j))
    with pytest.raises(ValueError, match="resumed"):
        utils.ResultLogger(str(tmp_path / "other.jsonl"), {"resumed": False})
    # a refused line writes nothing
    assert utils.read_jsonl(path) == [{"a": 1}]


def test_read_jsonl_accepts_python_json_nan_literals(tmp_path):
    path = tmp_path / "glow_log.txt"
    path.write_text('{"n_levels": 3}\n\n{"loss": NaN, "x": Infinity}\n')
    got = utils.read_jsonl(str(path))
    assert got[0] == {"n_levels": 3} and np.isnan(got[1]["loss"]) and got[1]["x"] == np.inf
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"glow_log\.txt:2: expected a JSON object"):
        utils.read_jsonl(str(path))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n,n_cols,rows,cols", [(5, None, 2, 3), (4, None, 2, 2),
                                                (1, None, 1, 1), (5, 1, 5, 1), (3, 5, 1, 5)])
def test_png_grid_round_trips_pixel_exact(tmp_path, channels, n, n_cols, rows, cols):
    h, w = 3, 4
    rng = np.random.RandomState(n * 10 + channels)
    images = rng.randint(0, 256, size=(n, h, w, channels)).astype(np.uint8)
    path = str(tmp_path / "samples.png")
    utils.save_image_grid(images, path, n_cols=n_cols)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == ("L" if channels == 1 else "RGB")
        assert img.size == (cols * w, rows * h)  # PIL size is (width, height)
        grid = np.array(img)
    grid = grid.reshape(rows * h, cols * w, channels)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        tile = grid[r * h:(r + 1) * h, c * w:(c + 1) * w]
        expected = images[i] if i < n else np.zeros((h, w, channels), np.uint8)
        np.testing.assert_array_equal(tile, expected)
    assert os.listdir(str(tmp_path)) == ["samples.png"]


@pytest.mark.parametrize("images,needle", [
    (np.zeros((2, 3, 4, 3), np.float32), r"float32 with shape \(2, 3, 4, 3\)"),
    (np.zeros((3, 4, 3), np.uint8), r"shape \(3, 4, 3\)"),
    (np.zeros((2, 3, 4, 2), np.uint8), r"shape \(2, 3, 4, 2\)"),
    (np.zeros((0, 3, 4, 3), np.uint8), r"shape \(0, 3, 4, 3\)"),
    ([[0]], "list"),
])
def test_bad_images_are_named(tmp_path, images, needle):
    with pytest.raises(ValueError, match=needle):
        utils.save_image_grid(images, str(tmp_path / "x.png"))
    assert os.listdir(str(tmp_path)) == []


def test_bad_n_cols_is_named(tmp_path):
    with pytest.raises(ValueError, match="n_cols=0"):
        utils.save_image_grid(np.zeros((2, 3, 4, 3), np.uint8), str(tmp_path / "x.png"), n_cols=0)


def test_atomic_write_replaces_and_respects_umask(tmp_path):
    path = str(tmp_path / "state.txt")
    old_mask = os.umask(0o022)
    try:
        utils.atomic_write_bytes(path, b"old contents, longer than the new")
        utils.atomic_write_bytes(path, b"new")
    finally:
        os.umask(old_mask)
    with open(path, "rb") as f:
        assert f.read() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(str(tmp_path)) == ["state.txt"]


@pytest.mark.parametrize("writer", ["bytes", "png"])
def test_failed_replace_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, writer):
    path = str(tmp_path / "target")
    with open(path, "wb") as f:
        f.write(b"previous contents")

    def failing_replace(src, dst):
        assert os.path.exists(src)  # the new bytes were written before the rename
        raise OSError("disk said no")

    monkeypatch.setattr(utils.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk said no"):
        if writer == "bytes":
            utils.atomic_write_bytes(path, b"new contents")
        else:
            utils.save_image_grid(np.zeros((2, 3, 4, 3), np.uint8), path)
    with open(path, "rb") as f:
        assert f.read() == b"previous contents"
    assert os.listdir(str(tmp_path)) == ["target"]


def test_failed_write_leaves_no_temp(tmp_path):
    path = str(tmp_path / "target")
    with pytest.raises(TypeError):
        utils.atomic_write_bytes(path, "text, not bytes")
    assert os.listdir(str(tmp_path)) == []


def test_check_choice_names_the_value_and_the_choices():
    assert utils.check_choice("weights", "raw", ("raw", "polyak")) == "raw"
    with pytest.raises(ValueError, match=r"^weights 'mean': expected one of raw, polyak$"):
        utils.check_choice("weights", "mean", ("raw", "polyak"))
