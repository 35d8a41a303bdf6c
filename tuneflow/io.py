"""Small I/O helpers: every output is written under a temporary name and renamed into place when
complete, so a crash never leaves a half-written file that looks finished."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path


def open_text(path, mode="rt"):
    """Open a text file for reading, transparently gunzipping `.gz` files.

    Newlines are kept as-is (`newline=""`) so callers can split on \\r, \\r\\n or \\n themselves;
    decoding errors are raised, not replaced, so bad bytes are reported rather than hidden.
    """
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix="") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_file(path, mode="w", encoding="utf-8"):
    """Write `path` through a temporary sibling that is renamed over it only on success."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path, obj, indent=2):
    with atomic_file(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path) -> list:
    """The records of a JSON-lines file that tuneflow wrote (canonical data, predictions)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory that replaces `path` once the block completes.

    On any failure the temporary directory is removed and `path` is left untouched (absent if it
    did not exist). Leftovers of a killed process (`.<name>.tmp-*`) are removed on the next call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_empty_parents(path, stop):
    """Remove `path`'s parent directories while they are empty, up to (not including) `stop`."""
    path, stop = Path(path).resolve(), Path(stop).resolve()
    for parent in path.parents:
        if parent == stop or stop not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break


STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
                  errno.EACCES: "Permission denied", errno.EDQUOT: "Disk quota exceeded", errno.EFBIG: "File too large",
                  errno.EIO: "Input/output error"}
STORAGE_PATTERNS = [(re.compile(p, re.I), e) for p, e in (
    (r"no space left on device|os error 28", errno.ENOSPC), (r"read-only file system|os error 30", errno.EROFS),
    (r"permission denied|os error 13", errno.EACCES), (r"disk quota exceeded", errno.EDQUOT),
    (r"file write failed|failed writing", errno.EIO))]


def storage_error(exc: BaseException) -> tuple[int, str] | None:
    """(errno, description) when `exc` (or what caused it) is a failed write to disk.

    torch.save and safetensors wrap OS errors in their own exception types, so the chain and the
    messages are inspected too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc.errno, exc.strerror or STORAGE_ERRNOS[exc.errno]
        for pattern, code in STORAGE_PATTERNS:
            if pattern.search(str(exc)):
                return code, STORAGE_ERRNOS[code]
        exc = exc.__cause__ or exc.__context__
    return None
