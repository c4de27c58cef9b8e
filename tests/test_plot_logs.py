"""scripts/plot_logs.py: which log lines become points, and that no point is
hidden: one off the scale (or not finite) is drawn on the edge and reported."""
import contextlib
import os
import sys

from PIL import Image

import utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import plot_logs  # noqa: E402


def test_curve_skips_config_mode_and_partial_lines(tmp_path):
    with contextlib.closing(utils.ResultLogger(str(tmp_path / "train.txt"), {"problem": "mnist"})) as log:
        log.log(epoch=1, step=20, bits_x=5.0, partial=True)  # cut short by --max_steps
        log.log(epoch=1, step=32, bits_x=4.0)
        log.log(epoch=2, step=64, bits_x=float("nan"))
        log.log(epoch=3, step=96, bits_x=3.0)
    with contextlib.closing(utils.ResultLogger(str(tmp_path / "test.txt"), {"problem": "mnist"})) as log:
        log.log(epoch=1, step=32, bits_x=4.5, bits_x_polyak=5.5)
        log.log(mode="evaluate", epoch=3, step=96, bits_x=3.9, bits_x_polyak=4.0)
    resumed = utils.ResultLogger(str(tmp_path / "train.txt"), {"problem": "mnist"})  # a resumed run
    with contextlib.closing(resumed) as log:
        log.log(epoch=4, step=128, bits_x=2.5)
    train = plot_logs.read_curve(str(tmp_path / "train.txt"), "epoch")
    assert [p for p in train if p[0] != 2.0] == [(1.0, 4.0), (3.0, 3.0), (4.0, 2.5)]
    assert [p[0] for p in train] == [1.0, 2.0, 3.0, 4.0]  # the NaN epoch is kept, to be drawn off the scale
    assert [p[0] for p in plot_logs.read_curve(str(tmp_path / "train.txt"), "step")] == [32.0, 64.0, 96.0, 128.0]
    assert plot_logs.read_curve(str(tmp_path / "test.txt"), "epoch") == [(1.0, 4.5)]
    assert plot_logs.read_curve(str(tmp_path / "test.txt"), "epoch", "bits_x_polyak") == [(1.0, 5.5)]
    out = str(tmp_path / "curve.png")
    assert plot_logs.main([str(tmp_path), "--out", out]) == 0
    assert Image.open(out).format == "PNG" and min(Image.open(out).size) > 100
    # The figure's name picks its format.
    for ext, magic in ((".svg", b"<?xml"), (".pdf", b"%PDF-")):
        out = str(tmp_path / ("curve" + ext))
        assert plot_logs.main([str(tmp_path), "--out", out, "--x", "step"]) == 0
        with open(out, "rb") as f:
            assert f.read(5) == magic, out


def test_points_off_the_scale_are_drawn_on_the_edge_and_named(tmp_path):
    curves = {"train": [(1.0, 5.0), (2.0, 3.7), (3.0, 3.2), (4.0, 2.9), (5.0, 2.9)],
              "test": [(1.0, 6.5), (2.0, 5.1), (3.0, 4.3), (4.0, 34.7), (5.0, 1285391.0)],
              "test polyak": [(1.0, 6.6), (2.0, float("inf"))]}
    out = str(tmp_path / "curve.png")
    off = plot_logs.plot(curves, out, "epoch", "t")
    assert sorted(off) == [("test", 4.0, 34.7), ("test", 5.0, 1285391.0), ("test polyak", 2.0, float("inf"))]
    # The same points with the range given: only those above it are on the edge.
    assert plot_logs.plot(curves, out, "epoch", "t", top=40.0) == [("test", 5.0, 1285391.0),
                                                                   ("test polyak", 2.0, float("inf"))]
    # Every point in range: none on the edge, and the top is the largest value.
    assert plot_logs.plot({"train": curves["train"]}, out, "epoch", "t") == []
    assert plot_logs.auto_top([5.0, 3.7, 3.2]) == 5.0
