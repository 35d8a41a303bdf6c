"""Batches of work on `workers` processes, results in input order, bounded memory.

Used by convert and tokenize (the rule's threads become the workers). The result never depends on
the number of workers: batches are handed out in order and their results come back in order.
At most 2 x workers batches are in flight (multiprocessing's Pool.imap reads its input ahead
without bound, which would hold a whole corpus in memory when the workers are slower than the
reader). Workers are forked, so `context` (a tokenizer, settings) is shared without pickling.
"""

from __future__ import annotations

import collections
import multiprocessing
import os

_CONTEXT: dict = {}


def _call(fn, batch):
    try:
        return fn(batch, _CONTEXT)
    finally:
        release_freed_memory()


def _libc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_TRIM = _libc_trim()


def release_freed_memory():
    """Hand memory freed by a batch back to the system (glibc keeps it otherwise, and a long job's
    resident size then creeps up with the fragments of its large transient batches)."""
    if _TRIM is not None:
        _TRIM(0)


def usable_cpus() -> int:
    """CPUs this process may run on (Slurm's allocation, not the whole node)."""
    return len(os.sched_getaffinity(0))


class OrderedPool:
    """`with OrderedPool(workers, context) as pool: for batch, result in pool.map(fn, batches)`.
    `fn(batch, context)` must be a module-level function; with 1 worker it runs in this process."""

    def __init__(self, workers: int, context: dict):
        self.workers = max(1, min(workers, usable_cpus()))
        self.context = context
        self.pool = None

    def __enter__(self):
        _CONTEXT.clear()
        _CONTEXT.update(self.context)
        if self.workers > 1:
            self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        _CONTEXT.clear()

    def map(self, fn, batches, send=None):
        """(batch, fn(send(batch), context)) for each batch, in order. `send` picks what the worker
        needs of a batch (default: all of it)."""
        send = send or (lambda batch: batch)
        if self.pool is None:
            for batch in batches:
                result = fn(send(batch), _CONTEXT)
                release_freed_memory()
                yield batch, result
            return
        pending = collections.deque()
        for batch in batches:
            pending.append((batch, self.pool.apply_async(_call, (fn, send(batch)))))
            if len(pending) >= 2 * self.workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
