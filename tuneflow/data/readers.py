"""Read raw records from files, globs and directories, remembering where each record came from.

Every problem is a DataError naming the file and line (JSON lines, text) or record index (JSON
arrays). Line ends may be \\n, \\r\\n or a bare \\r (old-Mac files in the PromptCBLUE data); `.gz`,
`.bz2` and `.xz` files are read transparently; a UTF-8 byte-order mark is stripped (and reported
in the manifest); UTF-16 / UTF-32 files are named as such. The sha256 and size recorded for a
source are those of the bytes read (tuneflow.io.HashingReader), never of a later state of the file.

Files are read as a stream, whatever their size: one line at a time, and JSON arrays one element
at a time (json.JSONDecoder.raw_decode over a window that grows only while one element does not
fit in it), so memory does not depend on the size of the file.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import io
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
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
LINE_SPLIT = re.compile(r"\r\n|\r|\n")
BOM = "\ufeff"
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 little-endian"), (b"\x00\x00\xfe\xff", "UTF-32 big-endian"),
             (b"\xff\xfe", "UTF-16 little-endian"), (b"\xfe\xff", "UTF-16 big-endian"))
# A JSON escape of half a UTF-16 surrogate pair: decodes to a str that cannot be written as UTF-8.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
CHUNK_CHARS = 1 << 18  # how much of a JSON array is read at a time
WHITESPACE = " \t\n\r"


def file_kind(path) -> tuple[str | None, str | None]:
    """("json" | "jsonl" | "txt" | None, compression suffix or None) from the file name."""
    name = Path(path).name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    return next((kind for suffix, kind in KINDS.items() if name.endswith(suffix)), None), compression


@dataclass
class RawRecord:
    value: object  # dict for JSON sources, str for plain-text lines (the JSON text itself while json_text)
    path: str
    line: int | None = None
    index: int | None = None
    size: int = 0  # bytes of the record's source text (0 when no limit asked for it)
    json_text: bool = False  # `value` is a JSON line still to parse (parse_json_line), e.g. in a worker process

    def parsed(self):
        """The record's value, parsing a JSON line now if it was read unparsed."""
        return parse_json_line(self) if self.json_text else self.value


@dataclass
class SourceInfo:
    path: str
    notes: list = field(default_factory=list)
    sha256: str | None = None  # of the bytes read, set once the whole file was read
    bytes: int | None = None
    bytes_read: int = 0  # of the file as stored (compressed for a compressed file): progress while reading


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
    _check_value(path, text, value, **where)
    return value


def _open_binary(path: Path):
    """(stream of the decompressed bytes, HashingReader over the file as stored: what it counted is
    the progress, what it hashed the source's sha256)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from None
    stored = HashingReader(f)
    compression = file_kind(path)[1]
    data = COMPRESSIONS[compression](stored, "rb") if compression else io.BufferedReader(stored)
    return data, stored


def _decompression_error(path: Path, e) -> DataError:
    compression = file_kind(path)[1]
    if compression is None:
        return DataError(path, f"cannot read: {getattr(e, 'strerror', None) or e}")
    return DataError(path, f"not a valid {compression} file ({e}): truncated, damaged or not compressed that way; "
                           "fix or replace the file")


def _utf8_error(path: Path) -> DataError:
    """The DataError for the first byte of `path` that is not UTF-8 (a second, streaming pass
    made only once decoding failed): its value, offset and line."""
    data, stored = _open_binary(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    prev_cr = False
    with stored, data:
        while chunk := data.read(1 << 20):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                buf = pending + chunk
                start = offset - len(pending) + e.start
                before = buf[len(pending):e.start] if e.start >= len(pending) else b""
                lines += _line_breaks(before, prev_cr)
                return DataError(path, f"not valid UTF-8: byte 0x{buf[e.start]:02x} at offset {start} "
                                       "(re-encode the file as UTF-8)", line=lines + 1)
            lines += _line_breaks(chunk, prev_cr)
            prev_cr = chunk.endswith(b"\r")
            offset += len(chunk)
        pending = decoder.getstate()[0]  # a character cut off by the end of the file
    return DataError(path, f"not valid UTF-8: byte 0x{pending[0]:02x} at offset {offset - len(pending)} "
                           "(re-encode the file as UTF-8)", line=lines + 1) if pending else \
        DataError(path, "not valid UTF-8 (re-encode the file as UTF-8)")


def _line_breaks(chunk: bytes, prev_cr: bool) -> int:
    """Line ends (\\r\\n, \\r, \\n) in `chunk`, when the chunk before it ended with \\r or not."""
    n = chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
    return n - 1 if prev_cr and chunk.startswith(b"\n") else n


class _TextStream:
    """A file's text, decoded as a stream (line ends kept as they are)."""

    def __init__(self, path: Path, source: SourceInfo):
        self.path, self.source = path, source
        data, self.stored = _open_binary(path)
        self.text = io.TextIOWrapper(data, encoding="utf-8", errors="strict", newline="")
        self.first = True

    def _checked(self, read):
        try:
            s = read()
        except UnicodeDecodeError:
            raise _utf8_error(self.path) from None
        except DECOMPRESSION_ERRORS as e:  # a truncated or corrupt compressed file
            raise _decompression_error(self.path, e) from None
        if self.first and s:
            self.first = False
            if s.startswith(BOM):
                self.source.notes.append("UTF-8 byte-order mark stripped")
                s = s[1:] or self._checked(read)  # the mark alone was read: read on
        self.source.bytes_read = self.stored.bytes
        return s

    def readline(self, limit=-1) -> str:
        return self._checked(lambda: self.text.readline(limit))

    def read(self, n) -> str:
        return self._checked(lambda: self.text.read(n))

    def finish(self):
        """The file was read to its end: record the sha256 and size of the bytes read."""
        self.source.sha256, self.source.bytes = self.stored.finish(), self.stored.bytes

    def close(self):
        self.text.close()
        self.stored.close()


def _check_encoding(path: Path):
    """UTF-16 / UTF-32 files are named as such (decoding them as UTF-8 would fail somewhere less clear)."""
    data, stored = _open_binary(path)
    try:
        with stored, data:
            head = data.read(4096)
    except DECOMPRESSION_ERRORS as e:
        raise _decompression_error(path, e) from None
    wide = _wide_encoding(head)
    if wide:
        family = "UTF-32" if wide.startswith("UTF-32") else "UTF-16"
        raise DataError(path, f"is encoded as {wide}, not UTF-8: re-encode it as UTF-8, e.g. "
                              f"iconv -f {family} -t UTF-8 {Path(path).name} > utf8-{Path(path).name}")


def _first_char(path: Path, source: SourceInfo) -> str:
    """The first character that is not whitespace ('' for an empty file)."""
    _check_encoding(path)
    stream = _TextStream(path, source)
    try:
        while chunk := stream.read(1 << 16):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
        return ""
    finally:
        stream.close()


def iter_records(path: Path, source: SourceInfo, plain_text: bool = False, max_record_bytes: int | None = None,
                 parse: bool = True, keep_linebreaks: bool = False):
    """Yield RawRecord from one file: a JSON array, JSON lines, or (plain_text) one record per line:
    non-blank lines without their line break, or with keep_linebreaks every line as it is in the
    file, line break included (blank lines too). parse=False leaves JSON lines as text
    (RawRecord.parsed() parses them, in whichever process)."""
    path = Path(path)
    name = str(path)
    first = _first_char(path, SourceInfo(name))
    if not first:
        raise DataError(path, "file is empty")
    is_txt = file_kind(path)[0] == "txt"
    stream = _TextStream(path, source)
    try:
        if plain_text and is_txt:
            yield from _lines(stream, max_record_bytes, parse=False, keep_linebreaks=keep_linebreaks)
        elif first == "[":
            yield from _json_array(stream, max_record_bytes)
        else:
            yield from _lines(stream, max_record_bytes, parse=parse, json_lines=True)
        stream.finish()
    finally:
        stream.close()


def _too_large(path, size, limit, at_least=False, **where):
    return DataError(path, f"record is {'at least ' if at_least else ''}{size / 1e6:.1f} MB, above the limit of "
                           f"{limit / 1e6:.1f} MB (data.max_record_bytes)", **where)


def _lines(stream: _TextStream, max_record_bytes, parse: bool, json_lines: bool = False, keep_linebreaks: bool = False):
    """One record per non-blank line: the line itself (plain text) or the JSON value on it; with
    keep_linebreaks (plain text) every line as it is, line break included, blank lines too."""
    path, name = stream.path, str(stream.path)
    # A line longer than the limit is never held whole: the rest of it is only counted.
    limit = max_record_bytes + 2 if max_record_bytes else -1  # + 2: room for "\r\n", never split
    lineno = 0
    while True:
        line = stream.readline(limit)
        if not line:
            return
        lineno += 1
        size = 0
        if max_record_bytes and len(line) * 4 > max_record_bytes:  # UTF-8: at most 4 bytes a character
            size = len(line.rstrip("\r\n").encode("utf-8"))
            if size > max_record_bytes:
                while not line.endswith(("\n", "\r")):
                    line = stream.readline(limit)
                    if not line:
                        break
                    size += len(line.rstrip("\r\n").encode("utf-8"))
                raise _too_large(path, size, max_record_bytes, line=lineno)
        if keep_linebreaks:
            yield RawRecord(line, name, line=lineno, size=size)
            continue
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        raw = RawRecord(line, name, line=lineno, size=size, json_text=json_lines)
        yield RawRecord(parse_json_line(raw), name, line=lineno, size=size) if json_lines and parse else raw


def parse_json_line(raw: RawRecord):
    """The JSON value of a line read unparsed; a DataError naming the file and line if it is not JSON."""
    try:
        return _parse_json(raw.value, raw.path, line=raw.line)
    except json.JSONDecodeError as e:
        hint = ""
        if raw.line == 1 and file_kind(raw.path)[0] != "jsonl" and raw.value.lstrip()[:1] == "{" \
                and e.msg.startswith("Expecting"):
            hint = " (if this is a single JSON object, wrap the records in a JSON array)"
        raise DataError(raw.path, f"invalid JSON: {e.msg} (column {e.colno}){hint}", line=raw.line) from None


# Near the end of the window, a JSON error may only mean that the element continues beyond it.
_TAIL = 16
_DECODER = json.JSONDecoder()


def _json_array(stream: _TextStream, max_record_bytes):
    """The elements of a JSON array, one at a time. Errors carry the line and column in the whole
    file, as json.loads of the whole text would report them."""
    path, name = stream.path, str(stream.path)
    buf, pos, eof = "", 0, False
    line_base, col_base = 0, 0  # newlines before buf[0], and characters since the last one

    def more(minimum=CHUNK_CHARS):
        nonlocal buf, pos, eof, line_base, col_base
        if pos:  # drop what was consumed, remembering where buf now starts
            dropped = buf[:pos]
            nl = dropped.count("\n")
            line_base += nl
            col_base = len(dropped) - dropped.rfind("\n") - 1 if nl else col_base + len(dropped)
            buf, pos = buf[pos:], 0
        chunk = stream.read(max(minimum, CHUNK_CHARS))
        if not chunk:
            eof = True
        buf += chunk

    def fail(msg, at):
        nl = buf.count("\n", 0, at)
        col = at - buf.rfind("\n", 0, at) if nl else col_base + at + 1
        return DataError(path, f"invalid JSON: {msg} (column {col})", line=line_base + nl + 1)

    def skip_ws():
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in WHITESPACE:
                pos += 1
            if pos < len(buf) or eof:
                return
            more()

    more()
    skip_ws()
    if buf[pos:pos + 1] != "[":  # other whitespace before it (iter_records strips more than JSON does)
        raise fail("Expecting value", pos)
    pos += 1
    skip_ws()
    if pos < len(buf) and buf[pos] == "]":
        pos += 1
    else:
        index = 0
        while True:
            if pos >= len(buf):
                raise fail("Expecting value", pos)
            start = pos
            while True:
                try:
                    value, end = _DECODER.raw_decode(buf, start)
                    if end < len(buf) or eof:  # else a number or literal may go on in the next chunk
                        _check_value(path, buf[start:end], value, index=index)
                        break
                except RecursionError:
                    raise DataError(path, "JSON nested too deeply (more than about 1000 levels of arrays / objects)",
                                    index=index) from None
                except json.JSONDecodeError as e:
                    if eof or (e.pos < len(buf) - _TAIL and not e.msg.startswith("Unterminated string")):
                        raise fail(e.msg, e.pos) from None
                if max_record_bytes and len(buf) - start > max_record_bytes:  # characters: at least as many bytes
                    size = len(buf[start:].encode("utf-8"))
                    raise _too_large(path, size, max_record_bytes, at_least=True, index=index)
                held = len(buf) - start
                pos = start
                more(minimum=held)  # double the window for an element that does not fit
                start = pos
            size = 0
            if max_record_bytes and (end - start) * 4 > max_record_bytes:
                size = len(buf[start:end].encode("utf-8"))
                if size > max_record_bytes:
                    raise _too_large(path, size, max_record_bytes, index=index)
            yield RawRecord(value, name, index=index, size=size)
            index += 1
            pos = end
            skip_ws()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
                skip_ws()
                continue
            if pos < len(buf) and buf[pos] == "]":
                pos += 1
                break
            raise fail("Expecting ',' delimiter", pos)
    skip_ws()
    if pos < len(buf):
        raise fail("Extra data", pos)


def _check_value(path, text: str, value, **where):
    """A JSON value whose text holds an unpaired surrogate escape (a str no UTF-8 file can hold) is
    refused, naming the file and where."""
    if SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(path, f"contains an unpaired UTF-16 surrogate escape (\\u{ord(e.object[e.start]):04x}), which is "
                                  "not a character and cannot be written as UTF-8; fix or remove it", **where) from None
