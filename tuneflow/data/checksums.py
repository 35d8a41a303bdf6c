"""Content checksums of the raw data files, for the convert rule's params: a raw file whose content
changed reruns its conversion even when its modification time was kept or restored (Snakemake
itself compares only times).

Hashing is cached per file by (size, mtime, ctime, inode, device): a file is hashed again only when
one of them changed. Restoring an mtime cannot restore the ctime, so such an edit is hashed again
and seen; a copied or moved project hashes its files once more and, the content being the same,
reruns nothing. `data.checksum_raw_files: false` turns this off (then only a newer mtime reruns).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tuneflow.io import atomic_file, sha256_file

CACHE = Path(".snakemake") / "tuneflow" / "raw-checksums.json"


def _stat_key(path) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def raw_checksums(paths, cache: Path = CACHE) -> dict:
    """{path: sha256} of `paths`, hashing only files whose stat changed since the cached hash."""
    try:
        known = json.loads(Path(cache).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    out, changed = {}, False
    for path in map(str, paths):
        key = _stat_key(path)
        entry = known.get(path)
        if not entry or entry.get("stat") != key:
            size = key[0]
            if size > 1 << 30:
                print(f"tuneflow: hashing {path} ({size / 1e9:.1f} GB) to notice content changes of raw data "
                      f"(once; cached in {cache}; data.checksum_raw_files: false turns it off)", file=sys.stderr, flush=True)
            entry = known[path] = {"stat": key, "sha256": sha256_file(path)}
            changed = True
        out[path] = entry["sha256"]
    if changed:
        try:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(cache) as f:
                json.dump(known, f)
        except OSError:
            pass  # a read-only project still plans; the hashes are computed again next time
    return out
