"""Progress of long work (embedding, fine-tuning, member fits) that people can see in any
console: a tqdm bar when stderr is a terminal, else a log line every ``every`` seconds
(done/total, rate, ETA), so notebooks running ``!python``, CI logs and ``nohup`` show
progress too. Log lines never break a bar: ``pipeline.runner`` routes logging through
tqdm while stages run."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("prefstack")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """``with Progress(total, "embed", unit="text") as bar: bar.update(n)``.

    ``enabled`` False shows nothing; ``every``: seconds between log lines off a terminal
    (the first after ``every`` seconds, so short work prints nothing).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = 10.0,
                 enabled: bool = True, leave: bool = True, stream=None):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, float(every)
        self.done = 0
        self.postfix = ""
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        self.enabled = bool(enabled) and self.total > 0
        stream = sys.stderr if stream is None else stream
        if self.enabled and _is_terminal(stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=leave, smoothing=0.1,
                            file=stream)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        speed = (f"{rate:,.1f} {self.unit}/s" if rate >= 1 or rate == 0
                 else f"{1 / rate:,.1f} s/{self.unit}")
        text = (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
                f"{speed}, elapsed {elapsed:.0f}s, ETA {eta:.0f}s")
        return text + (f", {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            log.info("%s", self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
