"""scripts/plot_logs.py: which log lines become points, and a PNG is written."""
import os
import sys

from PIL import Image

import utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import plot_logs  # noqa: E402


def test_curve_skips_config_mode_partial_and_nonfinite_lines(tmp_path):
    with utils.ResultLogger(str(tmp_path / "train.txt"), {"problem": "mnist"}) as log:
        log.log(epoch=1, step=20, bits_x=5.0, partial=True)  # cut short by --max_steps
        log.log(epoch=1, step=32, bits_x=4.0)
        log.log(epoch=2, step=64, bits_x=float("nan"))
        log.log(epoch=3, step=96, bits_x=3.0)
    with utils.ResultLogger(str(tmp_path / "test.txt"), {"problem": "mnist"}) as log:
        log.log(epoch=1, step=32, bits_x=4.5)
        log.log(mode="evaluate", epoch=3, step=96, bits_x=3.9)
    with utils.ResultLogger(str(tmp_path / "train.txt"), {"problem": "mnist"}) as log:  # a resumed run
        log.log(epoch=4, step=128, bits_x=2.5)
    assert plot_logs.read_curve(str(tmp_path / "train.txt"), "epoch") == [(1.0, 4.0), (3.0, 3.0), (4.0, 2.5)]
    assert plot_logs.read_curve(str(tmp_path / "train.txt"), "step") == [(32.0, 4.0), (96.0, 3.0), (128.0, 2.5)]
    assert plot_logs.read_curve(str(tmp_path / "test.txt"), "epoch") == [(1.0, 4.5)]
    out = str(tmp_path / "curve.png")
    assert plot_logs.main([str(tmp_path), "--out", out]) == 0
    assert Image.open(out).size == (800, 500)
