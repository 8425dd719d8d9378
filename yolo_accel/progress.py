"""A progress line that redraws in place on a terminal and prints sparse whole lines into log files."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`with Progress(total, "Scanning") as bar: bar.update(1, "3 corrupt")`.

    On a TTY the line is redrawn at most 10 times a second; otherwise a full line is written every
    `log_every` seconds and at the end, so a log file stays readable.
    """

    def __init__(self, total: int, description: str, enabled: bool = True, stream: TextIO | None = None,
                 log_every: float = 30.0):
        self.total, self.description, self.enabled = total, description, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.count, self.postfix = 0, ""
        self.start = self.last_draw = time.perf_counter()
        self.log_every = log_every

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and now - self.last_draw >= (0.1 if self.tty else self.log_every):
            self._draw(final=False)
            self.last_draw = now

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        fraction = self.count / self.total if self.total else 1.0
        width = 20
        filled = int(fraction * width)
        bar = "█" * filled + "·" * (width - filled)
        return (f"{self.description} {fraction:4.0%} {bar} {self.count}/{self.total} "
                f"[{elapsed:.0f}s, {rate:.1f}it/s] {self.postfix}").rstrip()

    def _draw(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)
            self.enabled = False
