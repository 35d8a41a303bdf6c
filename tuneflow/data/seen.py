"""What convert has seen so far, in little memory per record, whatever the corpus size.

SeenDigests: 16-byte content digests (dedupe). Recent ones sit in a Python set; every
FLUSH_AT of them become a sorted numpy array of 16-byte strings, and arrays of like size are
merged (a log-structured set) up to MERGE_UP_TO digests, so a record costs 16 bytes once flushed,
a merge never needs more than 2 x 128 MB on top, and a batch of records is looked up with one
binary search per array. Exact dedupe has to remember every record: 16 bytes each, about 11 MB
per GB of 1.4 kB records (`dedupe: none` remembers nothing).
SeenIds: sample_ids (as 16-byte digests) with where each was first seen, for the message naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FLUSH_AT = 1 << 12  # the recent set stays under 0.5 MB
MERGE_UP_TO = 1 << 23  # digests in one array (128 MB): a merge's transient copy stays that small


class SeenDigests:
    def __init__(self):
        import numpy as np

        self.np = np
        self.levels: list = []  # sorted arrays of dtype S16, larger first
        self.recent: set[bytes] = set()

    def __len__(self):
        return len(self.recent) + sum(len(a) for a in self.levels)

    def in_levels(self, digests: list[bytes]):
        """A boolean per digest: already in the flushed arrays."""
        np = self.np
        if not self.levels or not digests:
            return [False] * len(digests)
        keys = np.array(digests, dtype="S16")
        found = np.zeros(len(keys), dtype=bool)
        for level in self.levels:
            at = np.searchsorted(level, keys)
            hit = at < len(level)
            found[hit] |= level[at[hit]] == keys[hit]
        return found.tolist()

    def add_if_new(self, digest: bytes, in_levels: bool) -> bool:
        """Remember `digest`; False if it was seen before (`in_levels`: from in_levels, asked for
        the batch since the last flush)."""
        if in_levels or digest in self.recent:
            return False
        self.recent.add(digest)
        return True

    def flush_if_full(self):
        """Between batches: the recent digests become a sorted array once there are FLUSH_AT."""
        if len(self.recent) < FLUSH_AT:
            return
        np = self.np
        self.levels.append(np.sort(np.array(list(self.recent), dtype="S16")))
        self.recent.clear()
        while (len(self.levels) > 1 and len(self.levels[-2]) <= 2 * len(self.levels[-1])
               and len(self.levels[-2]) + len(self.levels[-1]) <= MERGE_UP_TO):
            last = self.levels.pop()
            self.levels[-1] = np.sort(np.concatenate([self.levels[-1], last]), kind="stable")


class SeenIds:
    """sample_ids seen so far, as 16-byte digests, each with where it was first seen (file index and
    line or record number packed in one int): bounded memory per record, whatever the id's length."""

    def __init__(self):
        self._where: dict[bytes, int] = {}

    @staticmethod
    def _digest(sample_id: str) -> bytes:
        return hashlib.blake2b(sample_id.encode("utf-8"), digest_size=16).digest()

    def __contains__(self, sample_id: str) -> bool:
        return self._digest(sample_id) in self._where

    def add(self, sample_id: str, file_index: int, raw):
        is_line = raw.line is not None
        self._where[self._digest(sample_id)] = (file_index << 41) | (int(is_line) << 40) | (raw.line if is_line else raw.index)

    def where(self, sample_id: str, files) -> str:
        packed = self._where[self._digest(sample_id)]
        number = packed & ((1 << 40) - 1)
        return f"{Path(files[packed >> 41]).name} " + (f"line {number}" if packed >> 40 & 1 else f"record {number}")
