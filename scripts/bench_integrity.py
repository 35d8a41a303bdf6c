#!/usr/bin/env python
"""What the integrity checks cost: hashing a directory output into its manifest (files.json: what
every directory output and every checkpoint's .complete marker carry) and verifying it (what every
job reading the directory does first), on files the size of model shards.

    python scripts/bench_integrity.py               # 4 GB in 8 files
    python scripts/bench_integrity.py --gb 0.05     # quick
Prints the numbers; asserts nothing. The files are written first and read back while still in the
page cache, so this measures hashing, not the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=4.0, help="total size of the files")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--dir", default=None, help="where to write them (default: a temporary directory)")
    a = p.parse_args()

    from tuneflow.io import verify_dir, write_dir_manifest

    root = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        size = int(a.gb * 1e9 / a.files)
        block = os.urandom(1 << 20)
        for i in range(a.files):
            with open(root / f"model-{i:05d}-of-{a.files:05d}.safetensors", "wb") as f:
                left = size
                while left > 0:
                    f.write(block[:min(left, len(block))])
                    left -= len(block)
        total = size * a.files / 1e9
        t0 = time.perf_counter()
        write_dir_manifest(root, "bench")
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_dir(root)
        t_verify = time.perf_counter() - t0
        print(f"manifest: {a.files} files, {total:.2f} GB hashed in {t_write:.2f} s ({total / t_write:.2f} GB/s, "
              f"{os.cpu_count()} cores)")
        print(f"verify:   {total:.2f} GB checked in {t_verify:.2f} s ({total / t_verify:.2f} GB/s)")
        print(f"per 14 GB (a 7B model in bf16): manifest {14 / total * t_write:.1f} s, verify {14 / total * t_verify:.1f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
