"""Convert one registered dataset into canonical JSONL with a deterministic train/validation split.

Output directory (written under a temporary name, renamed into place when complete):
  train.jsonl, validation.jsonl   canonical records (see tuneflow.data.formats)
  manifest.json                   source hashes, counts read/kept/dropped with reasons, split
The split puts a record in validation when sha256("<seed>:<key>") falls below the fraction, where
the key is the record's sample_id or a hash of its content: adding records never moves old ones.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import tuneflow
from tuneflow.data.formats import CONVERTERS, RecordError
from tuneflow.data.readers import RawRecord, SourceInfo, iter_records, parse_json_line, resolve_paths
from tuneflow.errors import DataError
from tuneflow.io import atomic_dir, sha256_file
from tuneflow.parallel import OrderedPool
from tuneflow.progress import PROGRESS_SECONDS, Progress

MAX_DROP_EXAMPLES = 20


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


BATCH_RECORDS = 1000
BATCH_BYTES = 4 << 20


def _convert_batch(batch, job):
    """In a worker: [(file index, line, value, is JSON text)] -> per record (split key, sample_id,
    output line) or the RecordError's message. A JSON syntax error is a DataError: it stops the job."""
    convert, columns, system, files = CONVERTERS[job["format"]], job["columns"], job["system"], job["files"]
    out = []
    for file_index, line, value, json_text in batch:
        try:
            if json_text:
                value = parse_json_line(RawRecord(value, files[file_index], line=line, json_text=True))
            rec = convert(value, columns, system)
        except RecordError as e:
            out.append(str(e))
            continue
        key = record_key(rec)
        sample_id = (rec.get("meta") or {}).get("sample_id")
        rec = {"id": sample_id if sample_id is not None else key[4:20], **rec}
        out.append((key, sample_id, json.dumps(rec, ensure_ascii=False)))
    return out


def _batches(files, infos, fmt, max_record_bytes):
    """Raw records of every file in order, in batches of (file index, RawRecord); JSON lines stay
    unparsed (the workers parse them)."""
    batch, size = [], 0
    for i, path in enumerate(files):
        for raw in iter_records(path, infos[i], plain_text=(fmt == "text"), max_record_bytes=max_record_bytes, parse=False):
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


def convert_dataset(settings: dict, out_dir, workers: int = 1, progress_every: float = PROGRESS_SECONDS) -> dict:
    """Convert per `settings` (tuneflow.plan.Plan.convert_settings: a dataset entry of the config
    plus the data settings); returns the manifest.

    keys: name, path, format, columns, system, validation_fraction, split_seed,
    on_bad_record ("error" | "skip"), duplicate_ids ("error" | "rename"), max_records, max_record_bytes.

    Records stream from the raw files to train.jsonl / validation.jsonl (in the temporary output
    directory); `workers` processes parse and convert batches of them (the result does not depend
    on their number). What stays in memory per record is at most a 16-byte digest of its sample_id.
    """
    name, fmt = settings["name"], settings["format"]
    columns = settings.get("columns") or {}
    skip_bad = settings.get("on_bad_record", "error") == "skip"
    rename_ids = settings.get("duplicate_ids", "error") == "rename"
    fraction, seed = float(settings["validation_fraction"]), int(settings["split_seed"])
    files = resolve_paths(settings["path"], key=f"datasets.{name}.path")

    counts = Counter()
    reasons = Counter()
    drop_examples = []
    seen_ids = SeenIds()
    max_records = settings.get("max_records")
    infos = [SourceInfo(str(p)) for p in files]
    read_per_file = Counter()
    sizes = [Path(p).stat().st_size for p in files]
    progress = Progress(f"convert {name}", sum(sizes), every=progress_every)

    def drop(raw, problem, category=None, hint="set data.on_bad_record: skip to drop such records and count them in the manifest"):
        where = {"file": raw.path, "line": raw.line} if raw.line is not None else {"file": raw.path, "index": raw.index}
        if not skip_bad:
            raise DataError(raw.path, f"{problem} ({hint})", line=raw.line, index=raw.index if raw.line is None else None)
        counts["dropped"] += 1
        category = category or problem
        reasons[category if len(reasons) < 50 or category in reasons else "other"] += 1
        if len(drop_examples) < MAX_DROP_EXAMPLES:
            drop_examples.append({**where, "reason": problem})

    job = {"format": fmt, "columns": columns, "system": settings.get("system"), "files": [str(p) for p in files]}
    # Small inputs are converted in this process: starting workers would cost more than it saves.
    workers = min(workers, 1 + sum(sizes) // BATCH_BYTES)
    with OrderedPool(workers, job) as pool, atomic_dir(out_dir) as tmp, \
            open(tmp / "train.jsonl", "w", encoding="utf-8") as train, \
            open(tmp / "validation.jsonl", "w", encoding="utf-8") as validation:
        batches = _batches(files, infos, fmt, settings.get("max_record_bytes"))
        for batch, results in pool.map(_convert_batch, batches, send=_work):
            for (file_index, raw), result in zip(batch, results):
                read_per_file[file_index] += 1
                counts["read"] += 1
                if isinstance(result, str):
                    drop(raw, result)
                    continue
                key, sample_id, line = result
                if sample_id is not None:
                    if sample_id in seen_ids:
                        if rename_ids:
                            # Published PromptCBLUE-style files reuse ids for unrelated records: keep them all,
                            # under an id derived from the content, so that neither the new id nor the
                            # split depends on where the record sits in the file.
                            rec = json.loads(line)
                            by_content = f"{sample_id}#{record_key({k: v for k, v in rec.items() if k != 'meta'})[4:12]}"
                            renamed, n = by_content, 2
                            while renamed in seen_ids:  # the same content under the same id again
                                renamed, n = f"{by_content}~{n}", n + 1
                            counts["renamed_ids"] += 1
                            sample_id = rec["id"] = rec["meta"]["sample_id"] = renamed
                            key = record_key(rec)
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
                is_val = is_validation(key, seed, fraction)
                (validation if is_val else train).write(line + "\n")
                counts["validation" if is_val else "train"] += 1
                counts["kept"] += 1
            read_bytes = sum(sizes[:batch[-1][0]]) + infos[batch[-1][0]].bytes_read
            progress.update(counts["read"], read_bytes)
        progress.update(counts["read"], sum(sizes))
        progress.print(final=True)

        if counts["kept"] == 0:
            detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
            raise DataError(settings["path"], f"no records left after conversion (read {counts['read']}"
                                          + (f", dropped: {detail}" if detail else "") + ")")
        if not counts["train"]:
            raise DataError(settings["path"], f"every one of the {counts['kept']} records fell into the validation split; "
                                          "lower validation_fraction")

        sources = [{"path": str(path), "sha256": sha256_file(path), "bytes": sizes[i],
                    "records_read": read_per_file[i], "notes": infos[i].notes} for i, path in enumerate(files)]
        manifest = {
            "dataset": name,
            "format": fmt,
            "path": settings["path"],
            "columns": columns,
            "sources": sources,
            "counts": {"read": counts["read"], "kept": counts["kept"], "dropped": counts["dropped"],
                       "over_max_records": counts["over_max_records"], "renamed_ids": counts["renamed_ids"],
                       "train": counts["train"], "validation": counts["validation"]},
            "dropped_reasons": dict(reasons.most_common()),
            "drop_examples": drop_examples,
            "split": {"seed": seed, "validation_fraction": fraction,
                      "method": "validation if sha256('<seed>:<sample_id or content hash>') < fraction"},
            "on_bad_record": "skip" if skip_bad else "error",
            "tuneflow_version": tuneflow.__version__,
        }
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return manifest


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
