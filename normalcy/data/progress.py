"""One progress display for the whole package: a tqdm bar on a terminal, plain periodic lines in logs, and at most
one visible at a time (a bar opened while another is running stays silent, so a command shows one bar)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

# Seconds between plain progress lines when the stream is not a terminal (CI logs, files, pipes).
LOG_INTERVAL_S = float(os.environ.get("NORMALCY_PROGRESS_INTERVAL", "15"))

_lock = threading.Lock()
_open_bars = 0


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class ProgressBar:
    """tqdm-compatible subset (`update`, `set_postfix`, `close`, context manager) used by every loop in normalcy."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False,
                 leave: bool = False, file: TextIO | None = None, interval: float | None = None) -> None:
        global _open_bars
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = file if file is not None else sys.stderr
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.n = 0
        self.postfix = ""
        self._closed = False
        self._t0 = self._last = time.monotonic()
        with _lock:
            self.silent = disable or _open_bars > 0
            if not self.silent:
                _open_bars += 1
        self._tqdm: Any = None
        if not self.silent and _is_tty(self.stream):
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=self.stream)

    def update(self, n: int = 1) -> None:
        """Advance by `n`; in a log, print a line when `interval` seconds have passed since the last one."""
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif not self.silent and time.monotonic() - self._last >= self.interval:
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Extra figures shown after the count (e.g. the loss)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._tqdm is not None:
            self._tqdm.set_postfix(refresh=refresh, **values)

    def _line(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self._t0
        self._last = time.monotonic()
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        eta = ""
        if not final and self.total and self.n:
            eta = f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        done = f" done in {_duration(elapsed)}" if final else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc or 'progress'}: {count} {self.unit}{rate}{eta}{done}{extra}", file=self.stream,
              flush=True)

    def close(self) -> None:
        """Finish the display (in a log: one closing line if this bar ever printed or ran over `interval`)."""
        global _open_bars
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()
        elif not self.silent and time.monotonic() - self._t0 >= self.interval:
            self._line(final=True)
        if not self.silent:
            with _lock:
                _open_bars -= 1

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False,
                 leave: bool = False, file: TextIO | None = None) -> ProgressBar:
    """A progress display over `total` steps (see ProgressBar); `disable=True` shows nothing."""
    return ProgressBar(total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=file)


def progress_iter(iterable: Iterable[Any], total: int | None = None, desc: str = "", unit: str = "it",
                  disable: bool = False, file: TextIO | None = None) -> Iterator[Any]:
    """Iterate over `iterable` with a progress display (replaces `tqdm(iterable)`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with ProgressBar(total=total, desc=desc, unit=unit, disable=disable, file=file) as bar:
        for item in iterable:
            yield item
            bar.update(1)
