"""Read raw records from files, globs and directories, remembering where each record came from.

Every problem is a DataError naming the file and line (JSON lines, text) or record index (JSON
arrays). Line ends may be \\n, \\r\\n or a bare \\r (old-Mac files in the PromptCBLUE data); `.gz`,
`.bz2` and `.xz` files are read transparently; a UTF-8 byte-order mark is stripped (and reported
in the manifest); UTF-16 / UTF-32 files are named as such. The sha256 and size recorded for a
source are those of the bytes read (tuneflow.io.HashingReader), never of a later state of the file.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tuneflow.errors import DataError
from tuneflow.io import HashingReader, is_regular_file

# What a file holds, by its extension (case-insensitive), and how it may be compressed.
KINDS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "txt"}
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
DATA_SUFFIXES = tuple(k + c for k in KINDS for c in ("", *COMPRESSIONS))
LINE_SPLIT = re.compile(r"\r\n|\r|\n")
BOM = "\ufeff"
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 little-endian"), (b"\x00\x00\xfe\xff", "UTF-32 big-endian"),
             (b"\xff\xfe", "UTF-16 little-endian"), (b"\xfe\xff", "UTF-16 big-endian"))
# A JSON escape of half a UTF-16 surrogate pair: decodes to a str that cannot be written as UTF-8.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def file_kind(path) -> tuple[str | None, str | None]:
    """("json" | "jsonl" | "txt" | None, compression suffix or None) from the file name."""
    name = Path(path).name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    return next((kind for suffix, kind in KINDS.items() if name.endswith(suffix)), None), compression


@dataclass
class RawRecord:
    value: object  # dict for JSON sources, str for plain-text lines
    path: str
    line: int | None = None
    index: int | None = None
    size: int = 0  # bytes of the record's source text


@dataclass
class SourceInfo:
    path: str
    notes: list = field(default_factory=list)
    sha256: str | None = None  # of the bytes read (set by read_text)
    bytes: int | None = None


def _refuse_special(path, key):
    if not os.path.exists(path):
        raise DataError(path, f"is a broken symbolic link (config key {key})")
    raise DataError(path, f"is not a regular file (a named pipe, socket or device): datasets are read from regular "
                          f"files only; copy the data into a file (config key {key})")


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def resolve_paths(pattern: str, key: str = "path") -> list[Path]:
    """A file, a glob or a directory -> sorted list of files. Errors name the config key.

    A path that exists is taken literally, so a file named `data[1].jsonl` is that file, not a glob.
    In a directory, hidden files are ignored and a file whose extension is not a data format is
    refused by name (nothing is skipped silently)."""
    p = Path(pattern)
    if not os.path.lexists(pattern) and any(ch in pattern for ch in "*?["):
        matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if not os.path.isdir(m))
        for m in matches:
            if not is_regular_file(m):
                _refuse_special(m, key)
        if not matches:
            raise DataError(pattern, f"glob matches no files (config key {key})")
        return matches
    if p.is_dir():
        files, unknown = [], []
        for f in sorted(p.rglob("*")):
            if _hidden(f.relative_to(p)) or f.is_dir():
                continue
            if not is_regular_file(f):
                _refuse_special(f, key)
            (files if file_kind(f)[0] else unknown).append(f)
        if unknown:
            names = ", ".join(str(f.relative_to(p)) for f in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise DataError(pattern, f"directory holds files that are not a data format tuneflow reads: {names} (it reads "
                                     f"{', '.join(KINDS)}, each optionally {', '.join(COMPRESSIONS)}); move them out or "
                                     f"select the data files with a glob (config key {key})")
        if not files:
            raise DataError(pattern, f"directory holds no data files ({', '.join(KINDS)}, each optionally "
                                     f"{', '.join(COMPRESSIONS)}) (config key {key})")
        return files
    if not os.path.lexists(pattern) or not p.exists():
        raise DataError(pattern, f"file does not exist (config key {key})")
    if not is_regular_file(p):
        _refuse_special(p, key)
    return [p]


def _read_bytes(path: Path, source: SourceInfo | None) -> bytes:
    compression = file_kind(path)[1]
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from None
    with f:
        hashing = HashingReader(f)
        try:
            if compression:
                with COMPRESSIONS[compression](hashing, "rb") as stream:
                    raw = stream.read()
            else:
                raw = hashing.readall()
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise DataError(path, f"not a valid {compression} file ({e}): truncated, damaged or not compressed "
                                  f"that way; fix or replace the file") from None
        digest = hashing.finish()
    if source is not None:
        source.sha256, source.bytes = digest, hashing.bytes
    return raw


def _wide_encoding(raw: bytes) -> str | None:
    """The name of a UTF-16 / UTF-32 encoding the bytes are evidently in, from a byte-order mark or
    from the NUL bytes every other byte of ASCII text holds in UTF-16 (UTF-8 text has no NULs)."""
    for bom, name in WIDE_BOMS:
        if raw.startswith(bom):
            return f"{name} (byte-order mark {bom.hex(' ')})"
    head = raw[:4096]
    if len(head) >= 4 and head.count(0) >= len(head) // 4:
        odd, even = head[1::2].count(0), head[0::2].count(0)
        return "UTF-16 little-endian (no byte-order mark)" if odd > even else "UTF-16 big-endian (no byte-order mark)"
    return None


def read_text(path: Path, source: SourceInfo | None = None) -> str:
    """Decode a whole file as UTF-8, reporting the line of the first undecodable byte. `source`
    receives the sha256 and size of the bytes read (compressed bytes for a compressed file)."""
    raw = _read_bytes(Path(path), source)
    wide = _wide_encoding(raw)
    if wide:
        family = "UTF-32" if wide.startswith("UTF-32") else "UTF-16"
        raise DataError(path, f"is encoded as {wide}, not UTF-8: re-encode it as UTF-8, e.g. "
                              f"iconv -f {family} -t UTF-8 {Path(path).name} > utf8-{Path(path).name}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = len(LINE_SPLIT.findall(raw[: e.start].decode("utf-8", errors="replace"))) + 1
        raise DataError(path, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
                              "(re-encode the file as UTF-8)", line=line) from None


def _parse_json(text: str, path, **where):
    """json.loads with the two failures that are not syntax errors named: nesting deeper than the
    parser can follow, and an unpaired surrogate escape (a string no UTF-8 file can hold)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(path, "JSON nested too deeply (more than about 1000 levels of arrays / objects)", **where) from None
    if SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(path, f"contains an unpaired UTF-16 surrogate escape (\\u{ord(e.object[e.start]):04x}), which is not a "
                                  "character and cannot be written as UTF-8; fix or remove it", **where) from None
    return value


def _looks_like_json_array(text: str) -> bool:
    return text.lstrip()[:1] == "["


LINE_WITH_END = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def iter_records(path: Path, source: SourceInfo, plain_text: bool = False, max_record_bytes: int | None = None,
                 keep_linebreaks: bool = False):
    """Yield RawRecord from one file: a JSON array, JSON lines, or (plain_text) one record per line:
    non-blank lines without their line break, or with keep_linebreaks every line as it is in the
    file, line break included (blank lines too)."""
    text = read_text(path, source)
    if text.startswith(BOM):
        text = text[1:]
        source.notes.append("UTF-8 byte-order mark stripped")
    if not text.strip():
        raise DataError(path, "file is empty")
    name = str(path)
    kind = file_kind(path)[0]

    def check_size(size, **where):
        if max_record_bytes and size > max_record_bytes:
            raise DataError(path, f"record is {size / 1e6:.1f} MB, above the limit of "
                                  f"{max_record_bytes / 1e6:.1f} MB (data.max_record_bytes)", **where)

    if plain_text and kind == "txt" and keep_linebreaks:
        for lineno, match in enumerate(LINE_WITH_END.finditer(text), 1):
            line = match.group(0)
            size = len(line.encode("utf-8"))
            check_size(size, line=lineno)
            yield RawRecord(line, name, line=lineno, size=size)
        return
    if plain_text and kind == "txt":
        for lineno, line in enumerate(LINE_SPLIT.split(text), 1):
            if line.strip():
                size = len(line.encode("utf-8"))
                check_size(size, line=lineno)
                yield RawRecord(line, name, line=lineno, size=size)
        return
    if _looks_like_json_array(text):
        try:
            data = _parse_json(text, path)
        except json.JSONDecodeError as e:
            raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
        if not isinstance(data, list):
            raise DataError(path, "expected a JSON array of records or JSON lines")
        for i, value in enumerate(data):
            size = len(json.dumps(value, ensure_ascii=False).encode("utf-8")) if max_record_bytes else 0
            check_size(size, index=i)
            yield RawRecord(value, name, index=i, size=size)
        return
    for lineno, line in enumerate(LINE_SPLIT.split(text), 1):
        if not line.strip():
            continue
        size = len(line.encode("utf-8"))
        check_size(size, line=lineno)
        try:
            value = _parse_json(line, path, line=lineno)
        except json.JSONDecodeError as e:
            hint = ""
            if lineno == 1 and kind != "jsonl" and line.lstrip()[:1] == "{" and e.msg.startswith("Expecting"):
                hint = " (if this is a single JSON object, wrap the records in a JSON array)"
            raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno}){hint}", line=lineno) from None
        yield RawRecord(value, name, line=lineno, size=size)
