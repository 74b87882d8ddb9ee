"""Progress of long work: a count (and bytes), its rate and the time left, as one line at a bounded rate.

``Progress`` emits ``<label>: 1,200/4,000 images (30 %), 85 images/s, 33 s left`` through a callback at most every
``every_s`` seconds, plus a final line (``..., done in 47 s``). The clock is injectable, so the lines are exact
under test. Steps pass ``context.log.info`` as the callback; the CLI uses :func:`terminal_progress` (a tqdm bar on a
terminal, the same plain lines otherwise). ``EpochClock`` says the time per epoch and the time left of a training.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

DEFAULT_EVERY_S = 10.0


def format_count(n: int) -> str:
    return f"{n:,}"


def format_duration(seconds: float) -> str:
    """``33 s``, ``4 min 10 s``, ``1 h 05 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_rate(per_second: float, unit: str) -> str:
    """``85 images/s``, ``8.5 images/s``; below one a second, the time per item: ``12.1 s/epoch``."""
    if per_second >= 10:
        return f"{format_count(round(per_second))} {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{1 / per_second:.1f} s/{unit[:-1] if unit.endswith('s') else unit}"


def format_bytes_rate(per_second: float) -> str:
    for scale, name in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if per_second >= scale:
            return f"{per_second / scale:.1f} {name}/s"
    return f"{per_second:.0f} B/s"


class Progress:
    """Counts items (and bytes) of a piece of work and emits a progress line at most every ``every_s`` seconds.

    Thread-safe: workers of a pool may call :meth:`advance`. ``total`` may be set after construction (when the
    work learns its size). :meth:`finish` emits the final line once; leaving a ``with`` block without an error
    calls it.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "images",
        emit: Callable[[str], Any] | None = None,
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"progress interval {every_s}: must be 0 or more seconds")
        self.label, self.total, self.unit = label, total, unit
        self.count = self.nbytes = 0
        self._emit = emit
        self._every = every_s
        self._clock = clock
        self._start = self._last = clock()
        self._finished = False
        self._lock = threading.Lock()

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        """``n`` more items (``nbytes`` more bytes) done; emits a line when ``every_s`` has passed since the last."""
        with self._lock:
            self.count += n
            self.nbytes += nbytes
            now = self._clock()
            if self._emit is not None and not self._finished and now - self._last >= self._every:
                self._last = now
                self._emit(self.line(now))

    def finish(self) -> None:
        """Emit the final line (once)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if self._emit is not None:
                self._emit(self.line(self._clock(), final=True))

    def line(self, now: float | None = None, final: bool = False) -> str:
        """``<label>: <count>[/<total> <unit> (<percent> %)], <rate>[, <bytes rate>], <left | done in>``."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        if self.total is not None:
            percent = 100 * self.count // self.total if self.total else 100
            parts = [f"{format_count(self.count)}/{format_count(self.total)} {self.unit} ({percent} %)"]
        else:
            parts = [f"{format_count(self.count)} {self.unit}"]
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(format_rate(rate, self.unit))
            if self.nbytes:
                parts.append(format_bytes_rate(self.nbytes / elapsed))
        if final:
            parts.append(f"done in {format_duration(elapsed)}")
        elif rate > 0 and self.total is not None:
            parts.append(f"{format_duration(max(0, self.total - self.count) / rate)} left")
        return f"{self.label}: {', '.join(parts)}"

    def track(self, items: Iterable[T], nbytes: Callable[[T], int] | None = None) -> Iterator[T]:
        """Yield ``items``, counting each once the consumer asks for the next; finish at the end."""
        for item in items:
            yield item
            self.advance(1, nbytes(item) if nbytes is not None else 0)
        self.finish()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()


class Tracked(Sequence[T]):
    """A sequence whose iteration ticks a :class:`Progress` (indexing and ``len`` do not): hand it to code that
    loops over a list of images once (prediction, calibration) to follow that loop without changing it."""

    def __init__(self, items: Sequence[T], progress: Progress) -> None:
        self._items, self.progress = items, progress
        if progress.total is None:
            progress.total = len(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        return self.progress.track(self._items)


class TerminalProgress:
    """A tqdm bar on ``stream`` (a terminal), with the :class:`Progress` methods the commands use."""

    def __init__(self, label: str, total: int | None, unit: str, stream: TextIO) -> None:
        from tqdm import tqdm

        self.label, self.unit = label, unit
        self._bar = tqdm(total=total, desc=label, unit=f" {unit}", file=stream, dynamic_ncols=True, leave=True)
        self._lock = threading.Lock()
        self._finished = False

    @property
    def total(self) -> int | None:
        return self._bar.total

    @total.setter
    def total(self, value: int | None) -> None:
        self._bar.total = value
        self._bar.refresh()

    @property
    def count(self) -> int:
        return int(self._bar.n)

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        with self._lock:
            self._bar.update(n)

    def finish(self) -> None:
        with self._lock:
            if not self._finished:
                self._finished = True
                self._bar.close()

    def track(self, items: Iterable[T], nbytes: Callable[[T], int] | None = None) -> Iterator[T]:
        for item in items:
            yield item
            self.advance(1)
        self.finish()

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish()


def terminal_progress(
    label: str,
    total: int | None = None,
    *,
    unit: str = "files",
    every_s: float = DEFAULT_EVERY_S,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Progress | TerminalProgress:
    """For a command line: a tqdm bar when ``stream`` (default stderr) is a terminal, else plain progress lines on
    it at most every ``every_s`` seconds (a log file or a CI job then stays readable)."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        return TerminalProgress(label, total, unit, stream)
    return Progress(
        label, total, unit=unit, every_s=every_s, clock=clock, emit=lambda text: print(text, file=stream, flush=True)
    )


class EpochClock:
    """The time per epoch and the time left of a training, from the end of each epoch.

    The first epoch is timed from the clock's creation (data loading included); from the second on, the mean of
    the epochs after the first, so setup does not inflate the estimate. Early stopping can only make it shorter.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._first: tuple[int, float] | None = None

    def __call__(self, epoch: int, epochs: int) -> str:
        """``12.1 s/epoch, 1 min 25 s left`` after epoch ``epoch`` (1-based) of ``epochs``."""
        now = self._clock()
        if self._first is None or epoch <= self._first[0]:
            self._first = (epoch, now)
            per_epoch = (now - self._start) / max(1, epoch)
        else:
            first_epoch, first_end = self._first
            per_epoch = (now - first_end) / (epoch - first_epoch)
        left = per_epoch * max(0, epochs - epoch)
        return f"{per_epoch:.1f} s/epoch, {format_duration(left)} left"
