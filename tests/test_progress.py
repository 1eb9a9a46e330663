"""Progress for people (sftc_core/progress.py) and the figures beside it (sftc_core/text.py): lines now and then
in a log, a bar on a terminal, plain lines on a pipe, rates and ETAs that leave resumed work out, and numbers
rounded to 3 significant digits."""

from __future__ import annotations

import io

import pytest

from sftc_core import progress
from sftc_core.progress import Progress, Tracker, reporting, terminal_bars
from sftc_core.text import format_duration, format_number, format_share, round_significant


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_tracker_logs_now_and_then_and_once_when_done():
    clock, lines = Clock(), []
    with Tracker("training", 10, "step", log=lines.append, every_s=30, clock=clock) as tracker:
        for step in range(1, 11):
            clock.now += 10  # one step every 10 s: a line every third step, and the last
            tracker.update(step, loss=1 / step)
        tracker.update(10)  # reported again at the end: not logged twice
    assert lines == [
        "training: 3/10 steps (30%), loss 0.333, 0.1 steps/s, ETA 1 min 10 s",
        "training: 6/10 steps (60%), loss 0.167, 0.1 steps/s, ETA 40 s",
        "training: 9/10 steps (90%), loss 0.111, 0.1 steps/s, ETA 10 s",
        "training: 10/10 steps (100%), loss 0.1, 0.1 steps/s, in 1 min 40 s",
    ]


def test_rate_and_eta_count_only_the_work_done_here():
    resumed = Progress("eval_csv 2012-09", done=20, total=32, unit="row", elapsed_s=5.0, initial=16)
    assert resumed.rate == pytest.approx(0.8) and resumed.eta_s == pytest.approx(15.0)
    assert resumed.line() == "eval_csv 2012-09: 20/32 rows (62%), 16 resumed, 0.8 rows/s, ETA 15 s"
    assert (
        Progress("convert-fp8", 1536, 4096, progress.BYTES, 2.0).line()
        == "convert-fp8: 1.5 KiB/4.0 KiB (38%), 768 B/s, ETA 3.3 s"
    )
    assert Progress("t", 0, 10, "step", 0.0).eta_s is None  # nothing done yet: no rate to guess from
    figures = Progress("training", 1, 2, "step", 1.0, figures={"loss": 0.81234, "tokens/s": 14555.3}).figures_text()
    assert figures == "loss 0.812, 14,600 tokens/s"  # a rate after its value


def test_no_bar_without_a_terminal_a_bar_on_one_and_plain_lines_on_a_pipe(monkeypatch):
    clock = Clock()
    with Tracker("quiet", 3, clock=clock) as tracker:  # no command asked for a terminal: nothing drawn
        tracker.update(3)
    tty = Tty()
    with terminal_bars(tty), Tracker("parsing theses", 4, "file") as tracker:
        tracker.update(2)
        assert progress.drawing(tty)
        progress.echo("a line above the bar")
    assert not progress.drawing(tty)
    assert "parsing theses" in tty.getvalue() and "a line above the bar\n" in tty.getvalue()

    pipe = io.StringIO()
    with terminal_bars(pipe), Tracker("training", 100, "step", clock=clock) as tracker:
        tracker.update(1)  # at once: short work writes no line
        clock.now += progress.TERMINAL_LINE_EVERY_S
        tracker.update(50)
        clock.now += 1
        tracker.update(51)  # within the interval: no line
    assert pipe.getvalue().splitlines() == ["training: 50/100 steps (50%), 1.67 steps/s, ETA 30 s"]
    with terminal_bars(pipe), Tracker("convert", 3, bar=False, clock=clock) as tracker:  # --no-progress
        clock.now += 100
        tracker.update(2)
    assert len(pipe.getvalue().splitlines()) == 1


def test_reporting_makes_its_tracker_at_the_first_report_with_the_total_and_what_was_resumed():
    lines = []
    with reporting("evaluate", "row", log=lines.append, every_s=0) as report:
        report(16, 32, initial=16)
        report(32, 32, initial=16)
    assert lines[0].startswith("evaluate: 16/32 rows (50%), 16 resumed")
    assert lines[-1].startswith("evaluate: 32/32 rows (100%), 16 resumed") and " in " in lines[-1]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1542028985507246, "0.154"),
        (14555.3, "14,600"),
        (6.9437, "6.94"),
        (0.000211, "0.000211"),
        (2.1e-05, "2.10e-05"),
        (99.96, "100"),
        (-0.0648, "-0.0648"),
        (1152, "1,152"),
        (None, "n/a"),
        (True, "True"),
        (float("nan"), "nan"),
    ],
)
def test_figures_have_three_significant_digits(value, text):
    assert format_number(value) == text


def test_shares_durations_and_rounding():
    assert (format_share(0.2890625), format_share(1.0), format_share(-0.066), format_share(None)) == (
        "28.9%",
        "100%",
        "-6.6%",
        "n/a",
    )
    assert [format_duration(s) for s in (0.04, 45.2, 200, 3725)] == ["0.0 s", "45 s", "3 min 20 s", "1 h 02 min"]
    assert (round_significant(0.1542028985507246), round_significant(14555.3), round_significant(0.0)) == (
        0.154,
        14600.0,
        0.0,
    )


def test_a_table_cell_without_a_value_is_empty():
    from sftc_core.text import markdown_table

    assert markdown_table([{"id": "a", "confidence": None}, {"id": "b", "confidence": 0.7}]).splitlines()[2:] == [
        "| a |  |",
        "| b | 0.7 |",
    ]


def test_training_rows_that_arrive_together_are_timed_by_when_their_steps_ended():
    """A launched job's rows reach the launching side in batches (Pipes messages):
    the rate is the job's, not the batch's."""
    from sftc_assets.training.hf_backend import training_progress

    lines = []
    rows = [
        {"step": s, "max_steps": 4, "loss": 1.0, "lr": 1e-3, "tokens_per_s": 100.0, "time": 5000.0 + 2 * s}
        for s in range(1, 5)
    ]
    with training_progress(lines.append) as on_step:
        for row in rows:  # all at once, as one poll of the message reader hands them over
            on_step(row)
    assert lines == [
        "training: 4/4 steps (100%), loss 1, lr 0.001, 100 tokens/s, 0.667 steps/s, in 6.0 s"
    ]  # 4 steps, 6 s from step 1's end
