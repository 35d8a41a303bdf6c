"""Read raw records from files, globs and directories, remembering where each record came from.

Every problem is a DataError naming the file and line (JSON lines, text) or record index (JSON
arrays). Line ends may be \\n, \\r\\n or a bare \\r (old-Mac files in the PromptCBLUE data); `.gz`
files are read transparently; a UTF-8 byte-order mark is stripped (and reported in the manifest).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tuneflow.errors import DataError

DATA_SUFFIXES = (".json", ".jsonl", ".txt", ".json.gz", ".jsonl.gz", ".txt.gz")
LINE_SPLIT = re.compile(r"\r\n|\r|\n")
BOM = "\ufeff"


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


def resolve_paths(pattern: str, key: str = "path") -> list[Path]:
    """A file, a glob or a directory -> sorted list of files. Errors name the config key."""
    p = Path(pattern)
    if any(ch in pattern for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(pattern, f"glob matches no files (config key {key})")
        return files
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(DATA_SUFFIXES))
        if not files:
            raise DataError(pattern, f"directory holds no data files ({', '.join(DATA_SUFFIXES)}) (config key {key})")
        return files
    if not p.exists():
        raise DataError(pattern, f"file does not exist (config key {key})")
    return [p]


def read_text(path: Path) -> str:
    """Decode a whole file as UTF-8, reporting the line of the first undecodable byte."""
    try:
        raw = gzip.open(path, "rb").read() if str(path).endswith(".gz") else Path(path).read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = len(LINE_SPLIT.findall(raw[: e.start].decode("utf-8", errors="replace"))) + 1
        raise DataError(path, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
                              "(re-encode the file as UTF-8)", line=line) from None


def _looks_like_json_array(text: str) -> bool:
    return text.lstrip()[:1] == "["


LINE_WITH_END = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def iter_records(path: Path, source: SourceInfo, plain_text: bool = False, max_record_bytes: int | None = None,
                 keep_linebreaks: bool = False):
    """Yield RawRecord from one file: a JSON array, JSON lines, or (plain_text) one record per line:
    non-blank lines without their line break, or with keep_linebreaks every line as it is in the
    file, line break included (blank lines too)."""
    text = read_text(path)
    if text.startswith(BOM):
        text = text[1:]
        source.notes.append("UTF-8 byte-order mark stripped")
    if not text.strip():
        raise DataError(path, "file is empty")
    name = str(path)
    is_txt = name.endswith((".txt", ".txt.gz"))

    def check_size(size, **where):
        if max_record_bytes and size > max_record_bytes:
            raise DataError(path, f"record is {size / 1e6:.1f} MB, above the limit of "
                                  f"{max_record_bytes / 1e6:.1f} MB (data.max_record_bytes)", **where)

    if plain_text and is_txt and keep_linebreaks:
        for lineno, match in enumerate(LINE_WITH_END.finditer(text), 1):
            line = match.group(0)
            size = len(line.encode("utf-8"))
            check_size(size, line=lineno)
            yield RawRecord(line, name, line=lineno, size=size)
        return
    if plain_text and is_txt:
        for lineno, line in enumerate(LINE_SPLIT.split(text), 1):
            if line.strip():
                size = len(line.encode("utf-8"))
                check_size(size, line=lineno)
                yield RawRecord(line, name, line=lineno, size=size)
        return
    if _looks_like_json_array(text):
        try:
            data = json.loads(text)
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
            value = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ""
            if lineno == 1 and not name.endswith((".jsonl", ".jsonl.gz")) and line.lstrip()[:1] == "{" and e.msg.startswith("Expecting"):
                hint = " (if this is a single JSON object, wrap the records in a JSON array)"
            raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno}){hint}", line=lineno) from None
        yield RawRecord(value, name, line=lineno, size=size)
