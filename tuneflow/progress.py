"""Progress lines for long data jobs (convert, tokenize): records/s, MB/s and the time left, in
the job's log at least every `every` seconds, since on real corpora these jobs run for hours."""

from __future__ import annotations

import sys
import time

PROGRESS_SECONDS = 30.0


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


class Progress:
    """`update(records, nbytes)` with running totals; a line is printed when `every` seconds
    have passed since the last one. `total_bytes` (of the input as stored) gives the ETA."""

    def __init__(self, label: str, total_bytes: int, every: float = PROGRESS_SECONDS, out=None):
        self.label, self.total, self.every = label, max(1, total_bytes), every
        self.out = out or sys.stderr
        self.started = self.last = time.monotonic()
        self.records = self.bytes = 0

    def update(self, records: int, nbytes: int):
        self.records, self.bytes = records, nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.print(now)

    def print(self, now=None, final=False):
        now = now or time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        rate_b = self.bytes / elapsed
        left = (self.total - self.bytes) / rate_b if rate_b > 0 and not final else 0
        done = min(100.0, 100.0 * self.bytes / self.total)
        print(f"{self.label}: {self.records:,} records, {self.bytes / 1e6:,.1f} of {self.total / 1e6:,.1f} MB "
              f"({done:.0f}%) in {duration(elapsed)}: {self.records / elapsed:,.0f} records/s, "
              f"{rate_b / 1e6:,.2f} MB/s, " + ("done" if final else f"ETA {duration(left)}"),
              file=self.out, flush=True)
