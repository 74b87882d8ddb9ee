"""Progress lines: exact text under a stepped clock, and at most one line per interval plus the final one."""

import io
import threading

import pytest

from alumi_pipelines.lib.progress import (
    EpochClock,
    Progress,
    Tracked,
    format_duration,
    format_rate,
    terminal_progress,
)


class SteppedClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lines_say_count_percent_rate_and_time_left():
    clock, lines = SteppedClock(), []
    progress = Progress("ingest batch-0003", 4000, unit="images", emit=lines.append, every_s=10, clock=clock)
    clock.now += 5
    progress.advance(425)  # 5 s: below the interval, no line
    assert lines == []
    clock.now += 9.2
    progress.advance(782)  # 14.2 s, 1,207 images: 85 images/s, 2,793 left → 33 s
    assert lines == ["ingest batch-0003: 1,207/4,000 images (30 %), 85 images/s, 33 s left"]
    clock.now += 32.8
    progress.advance(2793)
    progress.finish()
    progress.finish()  # once only
    assert lines[1:] == [
        "ingest batch-0003: 4,000/4,000 images (100 %), 85 images/s, 0 s left",
        "ingest batch-0003: 4,000/4,000 images (100 %), 85 images/s, done in 47 s",
    ]


def test_bytes_rate_unknown_total_and_slow_units():
    clock, lines = SteppedClock(), []
    with Progress("stage gold 1a2b", unit="images", emit=lines.append, every_s=0, clock=clock) as progress:
        clock.now += 2
        progress.advance(3, nbytes=6 * 1024 * 1024)
    assert lines == [
        "stage gold 1a2b: 3 images, 1.5 images/s, 3.0 MB/s",
        "stage gold 1a2b: 3 images, 1.5 images/s, 3.0 MB/s, done in 2 s",
    ]
    assert format_rate(0.25, "epochs") == "4.0 s/epoch"
    assert [format_duration(s) for s in (0.4, 59.6, 250, 3900)] == ["0 s", "1 min 0 s", "4 min 10 s", "1 h 05 min"]


def test_no_line_before_any_time_passed_has_a_rate():
    clock, lines = SteppedClock(), []
    progress = Progress("x", 10, emit=lines.append, every_s=0, clock=clock)
    progress.advance(2)
    assert lines == ["x: 2/10 images (20 %)"]


@pytest.mark.parametrize("every_s", [1.0, 10.0])
def test_lines_are_bounded_by_the_interval(every_s):
    """1,000 ticks over 100 s emit at most one line per interval, and always the final one."""
    clock, lines, times = SteppedClock(0.0), [], []
    progress = Progress(
        "work", 1000, emit=lambda line: (lines.append(line), times.append(clock.now)), every_s=every_s, clock=clock
    )
    for i in range(1, 1001):
        clock.now = i / 10
        progress.advance()
    progress.finish()
    intermediate = times[:-1]
    assert len(intermediate) == 100 / every_s
    gaps = [b - a for a, b in zip([0.0, *intermediate], intermediate)]
    assert min(gaps) >= every_s - 1e-9
    assert lines[-1] == "work: 1,000/1,000 images (100 %), 10 images/s, done in 1 min 40 s"


def test_advance_from_many_threads_counts_every_item():
    lines = []
    progress = Progress("pool", 8000, emit=lines.append, every_s=3600)

    def work():
        for _ in range(1000):
            progress.advance(1, nbytes=10)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress.finish()
    assert (progress.count, progress.nbytes) == (8000, 80000)
    assert len(lines) == 1 and lines[0].startswith("pool: 8,000/8,000 images (100 %)")


def test_tracked_sequence_ticks_on_iteration_only():
    clock, lines = SteppedClock(), []
    progress = Progress("calibration", unit="images", emit=lines.append, every_s=0, clock=clock)
    items = Tracked(["a.jpg", "b.jpg", "c.jpg"], progress)
    assert (len(items), items[1], progress.total, progress.count) == (3, "b.jpg", 3, 0)
    seen = []
    for item in items:
        clock.now += 1
        seen.append(item)
    assert seen == ["a.jpg", "b.jpg", "c.jpg"]
    assert lines == [
        "calibration: 1/3 images (33 %), 1.0 images/s, 2 s left",
        "calibration: 2/3 images (66 %), 1.0 images/s, 1 s left",
        "calibration: 3/3 images (100 %), 1.0 images/s, 0 s left",
        "calibration: 3/3 images (100 %), 1.0 images/s, done in 3 s",
    ]


def test_terminal_progress_writes_plain_lines_when_not_a_terminal():
    stream, clock = io.StringIO(), SteppedClock()
    progress = terminal_progress("import cr7", 2, unit="files", every_s=0, stream=stream, clock=clock)
    assert isinstance(progress, Progress)
    clock.now += 1
    progress.advance(1, nbytes=2048)
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "import cr7: 1/2 files (50 %), 1.0 files/s, 2.0 KB/s, 1 s left",
        "import cr7: 1/2 files (50 %), 1.0 files/s, 2.0 KB/s, done in 1 s",
    ]


def test_terminal_progress_draws_a_tqdm_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with terminal_progress("import cr7", 4, unit="files", stream=stream) as progress:
        for _ in range(4):
            progress.advance()
    text = stream.getvalue()
    assert "import cr7: 100%" in text and "4/4" in text and "files" in text


def test_epoch_clock_leaves_setup_out_after_the_first_epoch():
    clock = SteppedClock(0.0)
    timing = EpochClock(clock)
    clock.now = 30.0  # setup + first epoch
    assert timing(1, 10) == "30.0 s/epoch, 4 min 30 s left"
    clock.now = 42.0
    assert timing(2, 10) == "12.0 s/epoch, 1 min 36 s left"
    clock.now = 56.0
    assert timing(3, 10) == "13.0 s/epoch, 1 min 31 s left"


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="progress interval -1: must be 0 or more seconds"):
        Progress("x", every_s=-1)
