"""Convert one registered dataset into canonical JSONL with a deterministic train/validation split.

Output directory (written under a temporary name, renamed into place when complete):
  train.jsonl, validation.jsonl   canonical records (see tuneflow.data.formats)
  manifest.json                   source hashes, counts read/kept/dropped with reasons, split
The split puts a record in validation when sha256("<seed>:<key>") falls below the fraction, where
the key is the record's sample_id or a hash of its content: adding records never moves old ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import tuneflow
from tuneflow.data.formats import CONVERTERS, RecordError
from tuneflow.data.readers import SourceInfo, iter_records, resolve_paths
from tuneflow.errors import DataError
from tuneflow.io import atomic_dir

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


def convert_dataset(settings: dict, out_dir) -> dict:
    """Convert per `settings` (tuneflow.plan.Plan.convert_settings: a dataset entry of the config
    plus the data settings); returns the manifest.

    keys: name, path, format, columns, system, validation_fraction, split_seed,
    on_bad_record ("error" | "skip"), duplicate_ids ("error" | "rename"), max_records, max_record_bytes,
    held_out (every record is validation data), keep_linebreaks (text files: lines kept as they are).
    """
    name, fmt = settings["name"], settings["format"]
    convert = CONVERTERS[fmt]
    held_out = bool(settings.get("held_out"))
    keep_linebreaks = bool(settings.get("keep_linebreaks"))
    if keep_linebreaks:
        convert = functools.partial(CONVERTERS[fmt], keep_linebreaks=True)
    columns = settings.get("columns") or {}
    skip_bad = settings.get("on_bad_record", "error") == "skip"
    rename_ids = settings.get("duplicate_ids", "error") == "rename"
    fraction, seed = float(settings["validation_fraction"]), int(settings["split_seed"])
    files = resolve_paths(settings["path"], key=f"datasets.{name}.path")

    counts = Counter()
    reasons = Counter()
    drop_examples = []
    sources = []
    seen_ids: dict[str, str] = {}
    train, validation = [], []
    max_records = settings.get("max_records")

    def drop(raw, problem, category=None, hint="set data.on_bad_record: skip to drop such records and count them in the manifest"):
        where = {"file": raw.path, "line": raw.line} if raw.line is not None else {"file": raw.path, "index": raw.index}
        if not skip_bad:
            raise DataError(raw.path, f"{problem} ({hint})", line=raw.line, index=raw.index if raw.line is None else None)
        counts["dropped"] += 1
        category = category or problem
        reasons[category if len(reasons) < 50 or category in reasons else "other"] += 1
        if len(drop_examples) < MAX_DROP_EXAMPLES:
            drop_examples.append({**where, "reason": problem})

    for path in files:
        info = SourceInfo(str(path))
        read_here = 0
        for raw in iter_records(path, info, plain_text=(fmt == "text"), max_record_bytes=settings.get("max_record_bytes"),
                                keep_linebreaks=keep_linebreaks):
            read_here += 1
            counts["read"] += 1
            try:
                rec = convert(raw.value, columns, settings.get("system"))
            except RecordError as e:
                drop(raw, str(e))
                continue
            key = record_key(rec)
            sample_id = (rec.get("meta") or {}).get("sample_id")
            if sample_id is not None:
                here = f"{Path(raw.path).name} " + (f"line {raw.line}" if raw.line is not None else f"record {raw.index}")
                if sample_id in seen_ids:
                    if rename_ids:
                        # Published PromptCBLUE-style files reuse ids for unrelated records: keep them all,
                        # under an id derived from the content, so that neither the new id nor the
                        # split depends on where the record sits in the file.
                        by_content = f"{sample_id}#{record_key({k: v for k, v in rec.items() if k != 'meta'})[4:12]}"
                        renamed, n = by_content, 2
                        while renamed in seen_ids:  # the same content under the same id again
                            renamed, n = f"{by_content}~{n}", n + 1
                        counts["renamed_ids"] += 1
                        sample_id = rec["meta"]["sample_id"] = renamed
                        key = record_key(rec)
                    else:
                        drop(raw, f"duplicate sample_id '{sample_id}' (first seen at {seen_ids[sample_id]})",
                             category="duplicate sample_id",
                             hint=f"ids must be unique: evaluation matches predictions to gold records by id; set "
                                  f"datasets.{name}.duplicate_ids: rename to keep such records as '<id>#<content hash>'")
                        continue
                seen_ids[sample_id] = here
            if max_records and counts["kept"] >= max_records:
                counts["over_max_records"] += 1
                continue
            rec = {"id": sample_id if sample_id is not None else key[4:20], **rec}
            (validation if held_out or is_validation(key, seed, fraction) else train).append(rec)
            counts["kept"] += 1
        # sha256 and size of the bytes read (the file may have been replaced since)
        sources.append({"path": str(path), "sha256": info.sha256, "bytes": info.bytes,
                        "records_read": read_here, "notes": info.notes})

    if counts["kept"] == 0:
        detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        raise DataError(settings["path"], f"no records left after conversion (read {counts['read']}"
                                      + (f", dropped: {detail}" if detail else "") + ")")
    if not train and not held_out:
        raise DataError(settings["path"], f"every one of the {counts['kept']} records fell into the validation split; "
                                      "lower validation_fraction")

    manifest = {
        "dataset": name,
        "format": fmt,
        "path": settings["path"],
        "columns": columns,
        "sources": sources,
        "counts": {"read": counts["read"], "kept": counts["kept"], "dropped": counts["dropped"],
                   "over_max_records": counts["over_max_records"], "renamed_ids": counts["renamed_ids"], "train": len(train), "validation": len(validation)},
        "dropped_reasons": dict(reasons.most_common()),
        "drop_examples": drop_examples,
        "split": {"seed": seed, "validation_fraction": fraction, "held_out": held_out,
                  "method": "every record is validation data (held_out)" if held_out else
                            "validation if sha256('<seed>:<sample_id or content hash>') < fraction"},
        "held_out": held_out, "keep_linebreaks": keep_linebreaks,
        "on_bad_record": "skip" if skip_bad else "error",
        "tuneflow_version": tuneflow.__version__,
    }
    with atomic_dir(out_dir, rule="convert") as tmp:
        for split, rows in (("train", train), ("validation", validation)):
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return manifest
