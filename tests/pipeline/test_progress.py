"""Progress: log lines off a terminal (rate, ETA), a tqdm bar on one."""
from __future__ import annotations

import io
import logging

from pipeline.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_it_logs_done_total_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="prefstack")
    with Progress(100, "embed all-MiniLM-L6-v2", unit="text", every=0.0, stream=io.StringIO()) as bar:
        bar.update(40)
        bar.set_postfix(loss="0.6931")
        bar.update(30)
        bar.update(30)  # done: no line for the last update
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("embed all-MiniLM-L6-v2: 40/100 text (40%)") and "text/s" in lines[0]
    assert "ETA" in lines[0] and lines[1].startswith("embed all-MiniLM-L6-v2: 70/100") and "loss 0.6931" in lines[1]


def test_off_a_terminal_short_work_prints_nothing(caplog):
    caplog.set_level(logging.INFO, logger="prefstack")
    with Progress(10, "x", every=60.0, stream=io.StringIO()) as bar:
        for _ in range(10):
            bar.update()
    assert not caplog.records and bar.done == 10


def test_on_a_terminal_it_draws_a_bar_and_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="prefstack")
    tty = _Tty()
    with Progress(5, "stack: member m", unit="model", every=0.0, stream=tty) as bar:
        for _ in range(5):
            bar.update()
    assert "stack: member m" in tty.getvalue() and "5/5" in tty.getvalue()
    assert not caplog.records


def test_disabled_shows_nothing(caplog):
    caplog.set_level(logging.INFO, logger="prefstack")
    tty = _Tty()
    with Progress(5, "x", every=0.0, enabled=False, stream=tty) as bar:
        bar.update(2)
    assert tty.getvalue() == "" and not caplog.records


def test_slow_work_shows_seconds_per_unit():
    bar = Progress(5, "stack: member m", unit="model", stream=io.StringIO())
    bar.t0 -= 60.0
    bar.done = 2
    assert "30.0 s/model" in bar.line() and "ETA 90s" in bar.line()
