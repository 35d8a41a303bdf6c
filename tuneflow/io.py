"""Small I/O helpers: every output is written under a temporary name and renamed into place when
complete, so a crash never leaves a half-written file that looks finished; a directory output
carries a manifest of its files (size + sha256) that the jobs reading it verify first, so a file
deleted or changed afterwards is named instead of crashing a later job."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tuneflow.errors import DataError


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


class HashingReader(io.RawIOBase):
    """A binary file wrapper that hashes exactly the bytes read through it, so that what a job
    records about its input (sha256, size) describes the content it read, even if the file is
    replaced meanwhile. Wrap it in gzip / bz2 / lzma to hash the compressed bytes while
    decompressing; `finish()` hashes whatever the reader left unread and returns the digest."""

    def __init__(self, f):
        self._f = f
        self._sha256 = hashlib.sha256()
        self.bytes = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        if n:
            self._sha256.update(memoryview(buffer)[:n])
            self.bytes += n
        return n

    def readall(self):
        chunks = []
        while block := self.read(1 << 20):
            chunks.append(block)
        return b"".join(chunks)

    def close(self):
        self._f.close()
        super().close()

    def finish(self) -> str:
        while block := self._f.read(1 << 20):
            self._sha256.update(block)
            self.bytes += len(block)
        return self._sha256.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(directory):
    """Give every file under `directory` the mode any other output gets (0666 minus the umask;
    executables keep their x bits). safetensors and mkstemp create files 0600."""
    mode = 0o666 & ~_umask()
    for p in Path(directory).rglob("*"):
        if p.is_file() and not p.is_symlink():
            current = p.stat().st_mode
            os.chmod(p, mode | (current & 0o111 & ~_umask()))


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
def atomic_dir(path, rule: str | None = None):
    """Yield a temporary directory that replaces `path` once the block completes.

    On any failure the temporary directory is removed and `path` is left untouched (absent if it
    did not exist). Leftovers of a killed process (`.<name>.tmp-*`) are removed on the next call.
    `rule`: the Snakemake rule that writes `path`; when given, the directory gets its manifest
    (write_dir_manifest), which the jobs reading it verify (verify_dir).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        follow_umask(tmp)
        if rule:
            write_dir_manifest(tmp, rule)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- manifests of directory outputs ------------------------------------------------------------------

DIR_MANIFEST = "files.json"
_UNLISTED = {DIR_MANIFEST, ".snakemake_timestamp"}  # the manifest itself; Snakemake's own marker


def file_digests(directory, exclude=(), workers=4) -> dict:
    """{relative path: {"bytes", "sha256"}} of every file under `directory` (hashed in parallel:
    hashlib releases the GIL on large blocks)."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in _UNLISTED
                   and str(p.relative_to(directory)) not in exclude)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_file, files))
    return {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": d} for p, d in zip(files, digests)}


def write_dir_manifest(directory, rule: str):
    """Record every file of a finished directory output (size + sha256) and the rule that wrote it."""
    write_json(Path(directory) / DIR_MANIFEST, {"rule": rule, "files": file_digests(directory)})
    os.chmod(Path(directory) / DIR_MANIFEST, 0o666 & ~_umask())


def rebuild_hint(directory, rule) -> str:
    return (f"rebuild it: snakemake --forcerun {directory} <your targets> (or -R {rule} to rerun every {rule} job)")


def verify_dir(directory, required: bool = True) -> dict | None:
    """Check a directory output against its manifest before reading it: every listed file present,
    with its size and sha256. Raises DataError naming the file and how to rebuild the directory.
    A directory without a manifest (a model of the user's, say) passes when not `required`."""
    directory = Path(directory)
    try:
        manifest = read_json(directory / DIR_MANIFEST)
    except FileNotFoundError:
        if not required:
            return None
        raise DataError(directory, f"has no {DIR_MANIFEST} (the list of its files with their sizes and hashes), so it "
                                   f"cannot be checked: it was written by an older tuneflow or by hand; "
                                   f"{rebuild_hint(directory, 'the rule that writes it')}") from None
    except (OSError, ValueError) as e:
        raise DataError(directory / DIR_MANIFEST, f"unreadable manifest ({e}); "
                                                  f"{rebuild_hint(directory, 'the rule that writes it')}") from None
    rule = manifest.get("rule", "?")
    files = manifest["files"]

    def refuse(rel, problem):
        raise DataError(directory / rel, f"{problem}: {directory} was damaged after the `{rule}` job wrote it; "
                                         f"{rebuild_hint(directory, rule)}")

    for rel, want in files.items():  # cheap checks first: every file there, with its size
        f = directory / rel
        if not f.is_file():
            refuse(rel, "is missing")
        if f.stat().st_size != want["bytes"]:
            refuse(rel, f"has {f.stat().st_size} bytes, {want['bytes']} when written")
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(lambda rel: sha256_file(directory / rel), files))
    for (rel, want), got in zip(files.items(), digests):
        if got != want["sha256"]:
            refuse(rel, "changed since it was written (sha256 differs)")
    return manifest


def is_regular_file(path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


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
