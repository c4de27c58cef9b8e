"""utils.Progress, the progress report within an epoch: plain newline-ended
lines every N seconds off a terminal (a log, ModelArts), a tqdm bar on one.
No TensorFlow: a fake clock and in-memory streams."""
import io
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402


class FakeClock(object):
    """time.time stand-in that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _epoch(progress, clock, bits, seconds_per_step=0.5, first=1):
    for done, b in enumerate(bits, start=first):
        clock.now += seconds_per_step
        progress.update(done, b)
    progress.close()


def test_plain_lines_every_n_seconds_with_step_rate_bits_and_eta_and_no_carriage_return():
    out, clock = io.StringIO(), FakeClock()
    progress = utils.Progress(10, "epoch 3", 64, out, every_seconds=1.0, clock=clock)
    # Step 3 was not applied (None): not in the running mean.
    _epoch(progress, clock, [3.0, 4.0, None, 5.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    text = out.getvalue()
    assert "\r" not in text
    lines = text.split("\n")
    assert lines[-1] == ""  # each line ends with a newline
    # 0.5 s a step, a line each second: after steps 2, 4, 6, 8, 10; 2 steps/s of 64 images.
    assert lines[:-1] == [
        "epoch 3 step 2/10 (20%)  images/s 128.0  bits/dim 3.5000  eta 0:00:04",
        "epoch 3 step 4/10 (40%)  images/s 128.0  bits/dim 4.0000  eta 0:00:03",
        "epoch 3 step 6/10 (60%)  images/s 128.0  bits/dim 3.4000  eta 0:00:02",
        "epoch 3 step 8/10 (80%)  images/s 128.0  bits/dim 3.2857  eta 0:00:01",
        "epoch 3 step 10/10 (100%)  images/s 128.0  bits/dim 3.2222  eta 0:00:00"]


def test_resumed_epoch_counts_its_rate_from_where_it_started():
    """An epoch resumed after step 6 of 10: the rate is of the steps this
    process did, the ETA hours:minutes:seconds."""
    out, clock = io.StringIO(), FakeClock()
    progress = utils.Progress(10, "epoch 1", 8, out, every_seconds=100.0, initial=6, clock=clock)
    _epoch(progress, clock, [1.0, 1.0], seconds_per_step=3000.0, first=7)  # a step in 50 minutes
    assert out.getvalue() == ("epoch 1 step 7/10 (70%)  images/s 0.0  bits/dim 1.0000  eta 2:30:00\n"
                              "epoch 1 step 8/10 (80%)  images/s 0.0  bits/dim 1.0000  eta 1:40:00\n")


def test_no_lines_with_interval_zero_or_no_stream():
    out, clock = io.StringIO(), FakeClock()
    _epoch(utils.Progress(10, "epoch 1", 64, out, every_seconds=0, clock=clock), clock, [3.0] * 10)
    assert out.getvalue() == ""
    _epoch(utils.Progress(10, "epoch 1", 64, None, every_seconds=1e-9, clock=clock), clock, [3.0] * 10)


def test_terminal_gets_a_tqdm_bar_not_plain_lines():
    term, clock = Terminal(), FakeClock()
    progress = utils.Progress(10, "epoch 2", 64, term, every_seconds=1e-9, clock=clock)
    for done in range(1, 6):
        clock.now += 0.5
        progress.update(done, 3.0 + done)
    bar = str(progress.bar)
    assert bar.startswith("epoch 2:") and "5/10" in bar, bar
    assert "images/s 128.0" in bar and "bits/dim 6.0000" in bar, bar
    progress.bar.refresh()  # tqdm draws at most every 0.1 s of its own clock
    progress.close()
    text = term.getvalue()
    assert "5/10" in text and "\r" in text  # tqdm redraws in place
    assert not re.search(r"step \d+/10", text)  # no plain line
