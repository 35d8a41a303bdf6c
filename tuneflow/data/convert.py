"""Convert one registered dataset into canonical JSONL with a deterministic train/validation split.

Output directory (written under a temporary name, renamed into place when complete):
  train.jsonl, validation.jsonl   canonical records (see tuneflow.data.formats)
  manifest.json                   source hashes, counts read/kept/dropped with reasons, duplicates,
                                  dropped turns, warnings, split
The split puts a record in validation when sha256("<seed>:<key>") falls below the fraction, where
the key comes from the record alone: its sample_id, its group (`group_by`: a raw field, or its
position for aligned files) or a hash of its own content (never of settings such as the dataset's
default system prompt). Adding records never moves old ones.
Duplicates (`dedupe`): a record equal to an earlier one (exact: same content and id; normalized:
also after Unicode NFKC, case folding and collapsing whitespace) is dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import tuneflow
from tuneflow.data.formats import CONVERTERS, BadTurn, Options, RecordError, with_default_system
from tuneflow.data.readers import RawRecord, SourceInfo, file_kind, iter_records, parse_json_line, resolve_paths
from tuneflow.data.seen import SeenDigests, SeenIds
from tuneflow.errors import DataError
from tuneflow.io import atomic_dir
from tuneflow.parallel import OrderedPool
from tuneflow.progress import PROGRESS_SECONDS, Progress

MAX_DROP_EXAMPLES = 20
BATCH_RECORDS = 1000
BATCH_BYTES = 4 << 20
RECORD_INDEX = "record_index"  # group_by: the n-th record read (aligned files: line n of each)
JSON_IN_TXT_SAMPLE = 200       # lines of a .txt file looked at for JSON objects


def record_key(rec: dict) -> str:
    sample_id = (rec.get("meta") or {}).get("sample_id")
    if sample_id is not None:
        return f"id:{sample_id}"
    body = {k: v for k, v in rec.items() if k not in ("id", "meta")}
    return "sha:" + hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def is_validation(key: str, seed: int, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _normalized(value):
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFKC", value).casefold().split())
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def duplicate_digest(rec: dict, record_id: str, mode: str) -> bytes | None:
    """16 bytes that equal for duplicate records: the content and the id (a sample_id, or the
    content hash), normalized first in `normalized` mode; None for `none`."""
    if mode == "none":
        return None
    body = {k: v for k, v in rec.items() if k not in ("id", "meta")}
    if mode == "normalized":
        body = _normalized(body)
    text = json.dumps([record_id if rec.get("meta", {}).get("sample_id") is not None else None, body],
                      ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _group_key(value, group_by: str) -> str:
    if not isinstance(value, dict) or group_by not in value:
        raise RecordError(f"missing field '{group_by}' (group_by)")
    return "group:" + json.dumps(value[group_by], ensure_ascii=False, sort_keys=True)


def _convert_batch(batch, job):
    """In a worker: [(file index, line, value, is JSON text)] -> per record a dict (split key,
    sample_id, output line, duplicate digest, dropped turns, ...) or (problem, category, is a bad
    turn). A JSON syntax error is a DataError: it stops the job."""
    convert, opts, files = CONVERTERS[job["format"]], job["options"], job["files"]
    group_by = job["group_by"]
    out = []
    for file_index, line, value, json_text in batch:
        try:
            if json_text:
                value = parse_json_line(RawRecord(value, files[file_index], line=line, json_text=True))
            rec = convert(value, opts)
            group = _group_key(value, group_by) if group_by and group_by != RECORD_INDEX else None
        except RecordError as e:
            out.append((str(e), e.category, isinstance(e, BadTurn)))
            continue
        dropped_turns = rec.pop("_dropped_turns", [])
        key = record_key(rec)  # the record's own content: before the dataset's default system prompt
        sample_id = (rec.get("meta") or {}).get("sample_id")
        record_id = sample_id if sample_id is not None else key[4:20]
        result = {"key": key, "sample_id": sample_id, "group": group, "dropped_turns": dropped_turns,
                  "duplicate": duplicate_digest(rec, record_id, job["dedupe"]), "id": record_id}
        if sample_id is not None:  # what a renamed duplicate id is made of (duplicate_ids: rename)
            result["content_hash"] = record_key({k: v for k, v in rec.items() if k != "meta"})[4:12]
        rec = {"id": record_id, **with_default_system(rec, job["system"])}
        result["line"] = json.dumps(rec, ensure_ascii=False)
        out.append(result)
    return out


def _batches(files, infos, plain_text, max_record_bytes, keep_linebreaks=False):
    """Raw records of every file in order, in batches of (file index, RawRecord); JSON lines stay
    unparsed (the workers parse them)."""
    batch, size = [], 0
    for i, path in enumerate(files):
        for raw in iter_records(path, infos[i], plain_text=plain_text, max_record_bytes=max_record_bytes, parse=False,
                                keep_linebreaks=keep_linebreaks):
            batch.append((i, raw))
            size += raw.size or (len(raw.value) if isinstance(raw.value, str) else 200)
            if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _work(batch):
    """What a worker needs of a batch (plain tuples: cheap to send)."""
    return [(i, raw.line, raw.value, raw.json_text) for i, raw in batch]


class JsonInText:
    """Counts, over the first lines of each .txt file read as plain text, those that are JSON
    objects: most of them means the file is JSON lines that `format: text` would train on as raw
    JSON strings, braces and keys included."""

    def __init__(self):
        self.seen, self.objects, self.keys = Counter(), Counter(), {}

    def look(self, file_index, text: str):
        if self.seen[file_index] >= JSON_IN_TXT_SAMPLE:
            return
        self.seen[file_index] += 1
        if text.lstrip()[:1] == "{":
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return
            if isinstance(value, dict):
                self.objects[file_index] += 1
                self.keys.setdefault(file_index, Counter()).update(value.keys())

    def warnings(self, files, dataset):
        out = []
        for i, n in self.objects.items():
            if n * 2 > self.seen[i]:
                keys = ", ".join(k for k, _ in self.keys[i].most_common(5))
                out.append(f"{files[i]}: {n} of its first {self.seen[i]} lines are JSON objects (keys: {keys}), which "
                           "format 'text' trains on as raw text, braces and keys included; to train on one field, "
                           f"set datasets.{dataset}.columns: {{text: <key>}} (the lines are then read as JSON)")
        return out


def convert_dataset(settings: dict, out_dir, workers: int = 1, progress_every: float = PROGRESS_SECONDS) -> dict:
    """Convert per `settings` (tuneflow.plan.Plan.convert_settings: a dataset entry of the config
    plus the data settings); returns the manifest.

    keys: name, path, format, columns, tags, system, validation_fraction, split_seed, group_by,
    dedupe ("exact" | "normalized" | "none"), on_bad_record ("error" | "skip"), on_bad_turn
    (None | "drop_turn" | "drop_record" | "error"), duplicate_ids ("error" | "rename"), max_records,
    max_record_bytes, llamafactory (where a LLaMA-Factory registry entry came from), held_out (every
    record is validation data), keep_linebreaks (text files: lines kept as they are).

    Records stream from the raw files to train.jsonl / validation.jsonl (in the temporary output
    directory); `workers` processes parse and convert batches of them (the result does not depend
    on their number). What stays in memory per record is its 16-byte content digest (dedupe;
    tuneflow.data.seen), and for records with a sample_id a digest of it and where it was seen.
    """
    name, fmt = settings["name"], settings["format"]
    columns = settings.get("columns") or {}
    skip_bad = settings.get("on_bad_record", "error") == "skip"
    on_bad_turn = settings.get("on_bad_turn")
    rename_ids = settings.get("duplicate_ids", "error") == "rename"
    dedupe = settings.get("dedupe", "exact")
    group_by = settings.get("group_by")
    held_out = bool(settings.get("held_out"))
    keep_linebreaks = bool(settings.get("keep_linebreaks"))
    fraction, seed = float(settings["validation_fraction"]), int(settings["split_seed"])
    files = resolve_paths(settings["path"], key=f"datasets.{name}.path")
    # A .txt file is plain text, one record per line, unless `columns` names the field to train on.
    plain_text = fmt == "text" and "text" not in columns

    counts = Counter()
    reasons, turn_reasons = Counter(), Counter()
    drop_examples, duplicate_examples, turn_examples = [], [], []
    seen_ids = SeenIds()
    seen_content = SeenDigests()
    json_in_text = JsonInText()
    max_records = settings.get("max_records")
    infos = [SourceInfo(str(p)) for p in files]
    read_per_file = Counter()
    sizes = [Path(p).stat().st_size for p in files]
    progress = Progress(f"convert {name}", sum(sizes), every=progress_every)

    def where(raw):
        return {"file": raw.path, "line": raw.line} if raw.line is not None else {"file": raw.path, "index": raw.index}

    def drop(raw, problem, category=None, skip=None,
             hint="set data.on_bad_record: skip to drop such records and count them in the manifest"):
        if not (skip_bad if skip is None else skip):
            raise DataError(raw.path, f"{problem} ({hint})", line=raw.line, index=raw.index if raw.line is None else None)
        counts["dropped"] += 1
        category = category or problem
        reasons[category if len(reasons) < 50 or category in reasons else "other"] += 1
        if len(drop_examples) < MAX_DROP_EXAMPLES:
            drop_examples.append({**where(raw), "reason": problem})

    job = {"format": fmt, "options": Options(columns, settings.get("tags") or {}, drop_bad_turns=on_bad_turn == "drop_turn",
                                             keep_linebreaks=keep_linebreaks),
           "system": settings.get("system"), "files": [str(p) for p in files], "dedupe": dedupe, "group_by": group_by}
    # Small inputs are converted in this process: starting workers would cost more than it saves.
    workers = min(workers, 1 + sum(sizes) // BATCH_BYTES)
    with OrderedPool(workers, job) as pool, atomic_dir(out_dir, rule="convert") as tmp, \
            open(tmp / "train.jsonl", "w", encoding="utf-8") as train, \
            open(tmp / "validation.jsonl", "w", encoding="utf-8") as validation:
        batches = _batches(files, infos, plain_text, settings.get("max_record_bytes"), keep_linebreaks)
        for batch, results in pool.map(_convert_batch, batches, send=_work):
            digests = [r["duplicate"] for r in results if isinstance(r, dict) and r["duplicate"] is not None]
            flushed = iter(seen_content.in_levels(digests))
            for (file_index, raw), result in zip(batch, results):
                index = counts["read"]  # the record's position among all records read (group_by: record_index)
                read_per_file[file_index] += 1
                counts["read"] += 1
                if plain_text and file_kind(raw.path)[0] == "txt":
                    json_in_text.look(file_index, raw.value)
                if isinstance(result, tuple):
                    problem, category, bad_turn = result
                    if bad_turn and on_bad_turn in ("drop_record", "error"):
                        drop(raw, problem, category, skip=on_bad_turn == "drop_record",
                             hint="set data.on_bad_turn: drop_turn to drop only such turns, or drop_record to drop the "
                                  "record; both are counted in the manifest")
                    else:
                        drop(raw, problem, category)
                    continue
                if result["duplicate"] is not None and not seen_content.add_if_new(result["duplicate"], next(flushed)):
                    counts["duplicates"] += 1
                    if len(duplicate_examples) < MAX_DROP_EXAMPLES:
                        duplicate_examples.append({**where(raw), "id": result["id"]})
                    continue
                key, sample_id, line = result["key"], result["sample_id"], result["line"]
                if sample_id is not None:
                    if sample_id in seen_ids:
                        if rename_ids:
                            # Published PromptCBLUE-style files reuse ids for unrelated records: keep them all,
                            # under an id derived from the content, so that neither the new id nor the
                            # split depends on where the record sits in the file.
                            by_content = f"{sample_id}#{result['content_hash']}"
                            renamed, n = by_content, 2
                            while renamed in seen_ids:  # the same content under the same id again
                                renamed, n = f"{by_content}~{n}", n + 1
                            counts["renamed_ids"] += 1
                            rec = json.loads(line)
                            sample_id = rec["id"] = rec["meta"]["sample_id"] = renamed
                            key = f"id:{renamed}"
                            line = json.dumps(rec, ensure_ascii=False)
                        else:
                            drop(raw, f"duplicate sample_id '{sample_id}' (first seen at {seen_ids.where(sample_id, files)})",
                                 category="duplicate sample_id",
                                 hint=f"ids must be unique: evaluation matches predictions to gold records by id; set "
                                      f"datasets.{name}.duplicate_ids: rename to keep such records as '<id>#<content hash>'")
                            continue
                    seen_ids.add(sample_id, file_index, raw)
                if max_records and counts["kept"] >= max_records:
                    counts["over_max_records"] += 1
                    continue
                if result["dropped_turns"]:
                    counts["dropped_turns"] += len(result["dropped_turns"])
                    turn_reasons.update(result["dropped_turns"])
                    if len(turn_examples) < MAX_DROP_EXAMPLES:
                        turn_examples.append({**where(raw), "turns": result["dropped_turns"]})
                if group_by == RECORD_INDEX:
                    key = f"index:{index}"
                elif group_by:
                    key = result["group"]
                is_val = held_out or is_validation(key, seed, fraction)
                (validation if is_val else train).write(line + "\n")
                counts["validation" if is_val else "train"] += 1
                counts["kept"] += 1
            seen_content.flush_if_full()
            read_bytes = sum(sizes[:batch[-1][0]]) + infos[batch[-1][0]].bytes_read
            progress.update(counts["read"], read_bytes)
        progress.update(counts["read"], sum(sizes))
        progress.print(final=True)

        if counts["kept"] == 0:
            detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
            if counts["duplicates"]:
                detail += ("; " if detail else "") + f"{counts['duplicates']} duplicates"
            raise DataError(settings["path"], f"no records left after conversion (read {counts['read']}"
                                          + (f", dropped: {detail}" if detail else "") + ")")
        if not counts["train"] and not held_out:
            raise DataError(settings["path"], f"every one of the {counts['kept']} records fell into the validation split; "
                                          "lower validation_fraction")

        warnings = json_in_text.warnings(files, name)
        for w in warnings:
            print(f"tuneflow: warning: {w}", file=sys.stderr, flush=True)
        # sha256 and size of the bytes read (the file may have been replaced since)
        sources = [{"path": str(path), "sha256": infos[i].sha256, "bytes": infos[i].bytes,
                    "records_read": read_per_file[i], "notes": infos[i].notes} for i, path in enumerate(files)]
        manifest = {
            "dataset": name,
            "format": fmt,
            "path": settings["path"],
            "columns": columns,
            "sources": sources,
            "counts": {"read": counts["read"], "kept": counts["kept"], "dropped": counts["dropped"],
                       "duplicates": counts["duplicates"], "dropped_turns": counts["dropped_turns"],
                       "over_max_records": counts["over_max_records"], "renamed_ids": counts["renamed_ids"],
                       "train": counts["train"], "validation": counts["validation"]},
            "dropped_reasons": dict(reasons.most_common()),
            "drop_examples": drop_examples,
            "dedupe": dedupe,
            "duplicate_examples": duplicate_examples,
            "dropped_turn_reasons": dict(turn_reasons.most_common()),
            "dropped_turn_examples": turn_examples,
            "warnings": warnings,
            "split": {"seed": seed, "validation_fraction": fraction, "group_by": group_by, "held_out": held_out,
                      "method": "every record is validation data (held_out)" if held_out else
                                "validation if sha256('<seed>:<sample_id, group or hash of the record's own content>') "
                                "< fraction"},
            "held_out": held_out, "keep_linebreaks": keep_linebreaks,
            "on_bad_record": "skip" if skip_bad else "error",
            "on_bad_turn": on_bad_turn,
            "tuneflow_version": tuneflow.__version__,
        }
        if settings.get("llamafactory"):
            manifest["llamafactory"] = settings["llamafactory"]
        if settings.get("tags"):
            manifest["tags"] = settings["tags"]
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return manifest
