"""Tokenize converted data once per (kind of rows, tokenizer, template, max length) and cache it.

Output directory: train/ and validation/ (Hugging Face `datasets` saved to disk) + meta.json.
  pt:  {"input_ids"}  documents joined with EOS and cut into blocks of exactly max_length tokens
  sft: {"input_ids", "labels"}  labels are -100 outside assistant turns when mask_prompt is on
  dpo: {"prompt_ids", "chosen_ids", "rejected_ids"}  as TRL's DPOTrainer builds them
Changing the learning rate never re-tokenizes; changing max length, template or tokenizer does,
because they are part of the cache key (the directory name) and of the rule's params.

Any size of data, flat memory: records stream from the JSONL in batches, `workers` processes
tokenize the batches (in order, so the result does not depend on their number), and the rows are
appended to Arrow shards as they come (the layout `Dataset.save_to_disk` writes; training
memory-maps them with `load_from_disk`). PT blocks are cut from the running token stream.
A new kind of rows is one entry of KINDS: its columns and a function from a batch of records to
rows and counts.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tuneflow.errors import ModelError, TuneflowError
from tuneflow.io import atomic_dir
from tuneflow.parallel import OrderedPool
from tuneflow.progress import PROGRESS_SECONDS, Progress
from tuneflow.templates import assistant_spans, render, supports_tools

IGNORE = -100
BATCH_RECORDS = 1000
BATCH_BYTES = 1 << 20  # of JSON in: the token lists of a batch take some 30 times that
MAX_SHARD_BYTES = 500 << 20  # as Dataset.save_to_disk's default max_shard_size


def labels_from_spans(offsets, spans, input_ids):
    labels = []
    j = 0
    for tok_id, (start, end) in zip(input_ids, offsets):
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        inside = j < len(spans) and start >= spans[j][0] and end <= spans[j][1] and end > start
        labels.append(tok_id if inside else IGNORE)
    return labels


def tokenize_sft(records, tokenizer, max_length, mask_prompt=True, batch=512):
    rows, stats = [], {"records": len(records), "truncated": 0, "dropped_fully_masked": 0, "tokens": 0, "label_tokens": 0}
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        texts, all_spans = [], []
        for r in chunk:
            if mask_prompt:
                text, spans = assistant_spans(tokenizer, r["messages"], tools=r.get("tools"))
            else:
                text, spans = render(tokenizer, r["messages"], tools=r.get("tools")), None
            texts.append(text)
            all_spans.append(spans)
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=mask_prompt)
        for k, ids in enumerate(enc["input_ids"]):
            labels = labels_from_spans(enc["offset_mapping"][k], all_spans[k], ids) if mask_prompt else list(ids)
            if len(ids) > max_length:
                stats["truncated"] += 1
                ids, labels = ids[:max_length], labels[:max_length]
            if all(x == IGNORE for x in labels):
                stats["dropped_fully_masked"] += 1
                continue
            stats["tokens"] += len(ids)
            stats["label_tokens"] += sum(1 for x in labels if x != IGNORE)
            rows.append({"input_ids": ids, "labels": labels})
    return rows, stats


def pt_token_stream(records, tokenizer):
    """The token ids of the documents, each followed by EOS, as one list."""
    eos = tokenizer.eos_token_id
    stream = []
    for ids in tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    return stream


class PTBlocks:
    """Cut a token stream, fed in pieces, into full blocks of max_length; what is left at the end
    is dropped (counted), except that a split shorter than one block becomes one short block
    rather than nothing (tiny validation splits)."""

    def __init__(self, max_length):
        import numpy as np

        self.np, self.max_length = np, max_length
        self.carry = np.zeros(0, dtype=np.int64)
        self.records = self.tokens = self.blocks = 0

    def feed(self, ids, records):
        """-> an array of whole blocks (n x max_length) from what was fed so far."""
        np = self.np
        self.records += records
        self.tokens += len(ids)
        stream = np.concatenate([self.carry, np.asarray(ids, dtype=np.int64)])
        n = len(stream) // self.max_length
        self.carry = stream[n * self.max_length:]
        self.blocks += n
        return stream[: n * self.max_length].reshape(n, self.max_length)

    def finish(self):
        """-> the one short block of a split shorter than max_length (1 x its length), else 0 blocks."""
        if self.blocks == 0 and len(self.carry):
            self.blocks = 1
            block, self.carry = self.carry[None, :], self.carry[:0]
            return block
        return self.carry[:0].reshape(0, 0)

    def stats(self):
        return {"records": self.records, "tokens": self.tokens, "blocks": self.blocks,
                "tokens_dropped_at_end": len(self.carry)}


def tokenize_pt(records, tokenizer, max_length):
    """Concatenate documents (each followed by EOS) and cut into full blocks of max_length."""
    packer = PTBlocks(max_length)
    blocks = packer.feed(pt_token_stream(records, tokenizer), len(records))
    rows = [{"input_ids": list(map(int, b))} for b in blocks] + [{"input_ids": list(map(int, b))} for b in packer.finish()]
    return rows, packer.stats()


def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _assistant(response):
    """A preference response as a message: text, or an assistant message that calls tools."""
    return response if isinstance(response, dict) else {"role": "assistant", "content": response}


def uses_tools(record) -> bool:
    messages = record.get("messages") or []
    responses = [x for x in (record.get("chosen"), record.get("rejected")) if isinstance(x, dict)]
    return bool(record.get("tools")) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages + responses)


def check_tool_support(records, tokenizer, settings, dataset=""):
    """Records with tools or tool turns need a template that renders them; refuse the data, naming
    the first such record, when it does not (rather than train text without the calls)."""
    first = next((r for r in records if uses_tools(r)), None)
    if first is not None and not supports_tools(tokenizer):
        raise ModelError(
            f"{dataset + ': ' if dataset else ''}records carry tool calls or tool definitions (the first: id "
            f"'{first.get('id', '?')}'), but the chat template (chat_template: {settings.get('chat_template', '?')}) does "
            "not render tools, tool calls or tool results; use a model whose own template does (e.g. Qwen3, with "
            "chat_template: tokenizer), or leave these records out")


def tokenize_dpo(records, tokenizer, max_length):
    """Prompt / chosen / rejected ids the way TRL's DPOTrainer builds them for conversational data."""
    rows = []
    stats = {"records": len(records), "dropped_prompt_too_long": 0, "tokens": 0}
    for r in records:
        prompt, tools = r["messages"], r.get("tools")
        p_text = render(tokenizer, prompt, add_generation_prompt=True, tools=tools)
        c_text = render(tokenizer, prompt + [_assistant(r["chosen"])], tools=tools)
        x_text = render(tokenizer, prompt + [_assistant(r["rejected"])], tools=tools)
        p, c, x = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (p_text, c_text, x_text))
        n = min(_common_prefix(p, c), _common_prefix(p, x))
        if n >= max_length:
            stats["dropped_prompt_too_long"] += 1
            continue
        row = {"prompt_ids": p[:n], "chosen_ids": c[n:], "rejected_ids": x[n:]}
        stats["tokens"] += len(c) + len(x)
        rows.append(row)
    return rows, stats


@dataclass(frozen=True)
class Kind:
    """A kind of tokenized rows: its columns (name -> Arrow value type) and how a batch of
    canonical records becomes rows (+ counts that add up over batches). `packed`: the rows are
    PT blocks cut from the token stream of all batches (the function returns that stream)."""
    columns: dict
    rows: object  # (records, tokenizer, settings) -> (rows, stats), or the token stream when packed
    packed: bool = False


KINDS = {
    "pt": Kind({"input_ids": "int32"}, lambda recs, tok, s: pt_token_stream(recs, tok), packed=True),
    "sft": Kind({"input_ids": "int32", "labels": "int64"},
                lambda recs, tok, s: tokenize_sft(recs, tok, s["max_length"], s.get("mask_prompt", True))),
    "dpo": Kind({"prompt_ids": "int64", "chosen_ids": "int64", "rejected_ids": "int64"},
                lambda recs, tok, s: tokenize_dpo(recs, tok, s["max_length"])),
}


def tokenize_split(records, tokenizer, settings):
    check_tool_support(records, tokenizer, settings)
    kind = settings["kind"]
    if kind == "pt":
        return tokenize_pt(records, tokenizer, settings["max_length"])
    return KINDS[kind].rows(records, tokenizer, settings)


# -- streaming: batches of records -> worker processes -> Arrow shards -------------------------------


def _tokenize_batch(lines, job):
    """In a worker: JSON lines -> ({column: (lengths, values)} as numpy arrays, stats)."""
    import numpy as np

    tokenizer, settings = job["tokenizer"], job["settings"]
    kind = KINDS[settings["kind"]]
    records = [json.loads(line) for line in lines]
    check_tool_support(records, tokenizer, settings, job["dataset"])
    if kind.packed:
        return np.asarray(kind.rows(records, tokenizer, settings), dtype=np.int64), {"records": len(records)}
    rows, stats = kind.rows(records, tokenizer, settings)
    columns = {}
    for name, dtype in kind.columns.items():
        lengths = np.fromiter((len(r[name]) for r in rows), dtype=np.int64, count=len(rows))
        values = np.fromiter((x for r in rows for x in r[name]), dtype=dtype, count=int(lengths.sum()))
        columns[name] = (lengths, values)
    return columns, stats


def _batches(path: Path, counted: dict):
    """Lists of JSON lines of `path` (tuneflow wrote it: one record per \\n-ended line)."""
    batch, size = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            batch.append(line)
            size += len(line)
            counted["bytes"] += len(line)
            if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


class ArrowShards:
    """Rows appended to Arrow files in the layout `Dataset.save_to_disk` writes
    (data-<i>-of-<n>.arrow, at most MAX_SHARD_BYTES each, + state.json and dataset_info.json), so
    `load_from_disk` memory-maps them. The fingerprint is a hash of the rows."""

    def __init__(self, directory: Path, columns: dict):
        import pyarrow as pa
        from datasets import Features, List, Value

        self.pa, self.dir = pa, Path(directory)
        self.dir.mkdir(parents=True)
        self.columns = columns
        self.features = Features({name: List(Value(dtype)) for name, dtype in columns.items()})
        self.shards, self.writer, self.shard_bytes = [], None, 0
        self.hash = hashlib.sha256()
        self.rows = 0

    def _open(self):
        from datasets.arrow_writer import ArrowWriter

        path = self.dir / f".shard-{len(self.shards)}.arrow"
        self.shards.append(path)
        self.writer, self.shard_bytes = ArrowWriter(features=self.features, path=str(path)), 0

    def write(self, columns: dict):
        """`columns`: name -> (row lengths, concatenated values) as numpy arrays."""
        import numpy as np

        pa = self.pa
        n = len(next(iter(columns.values()))[0])
        if n == 0:
            return
        if self.writer is None or self.shard_bytes >= MAX_SHARD_BYTES:
            self._close()
            self._open()
        arrays = []
        for name, dtype in self.columns.items():
            lengths, values = columns[name]
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            values = np.ascontiguousarray(values, dtype=dtype)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
            self.hash.update(name.encode())
            self.hash.update(offsets.tobytes())
            self.hash.update(values.tobytes())
            self.shard_bytes += values.nbytes + offsets.nbytes
        self.writer.write_table(pa.Table.from_arrays(arrays, names=list(self.columns)))
        self.rows += n

    def _close(self):
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def finish(self):
        from datasets import DatasetInfo
        from datasets.utils.py_utils import asdict

        if not self.shards:  # no rows: one empty shard, as save_to_disk writes
            self._open()
        self._close()
        names = []
        for i, path in enumerate(self.shards):
            names.append(f"data-{i:05d}-of-{len(self.shards):05d}.arrow")
            path.rename(self.dir / names[-1])
        state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": self.hash.hexdigest()[:16],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        with open(self.dir / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        info = asdict(DatasetInfo(features=self.features))
        with open(self.dir / "dataset_info.json", "w", encoding="utf-8") as f:
            json.dump({k: info[k] for k in sorted(info)}, f, indent=2)


def _write_split(path: Path, out: Path, tokenizer, settings, pool: OrderedPool, progress: Progress, counted: dict):
    """Tokenize one split file into Arrow shards under `out`; -> (stats, rows written)."""
    import numpy as np

    kind = KINDS[settings["kind"]]
    shards = ArrowShards(out, kind.columns)
    packer = PTBlocks(settings["max_length"]) if kind.packed else None
    stats = collections.Counter(kind.rows([], tokenizer, settings)[1]) if not packer else None
    for batch, (result, batch_stats) in pool.map(_tokenize_batch, _batches(path, counted)):
        counted["records"] += len(batch)
        progress.update(counted["records"], counted["bytes"])
        if packer:
            blocks = packer.feed(result, len(batch))
            shards.write({"input_ids": (np.full(len(blocks), packer.max_length), blocks.reshape(-1))})
        else:
            stats.update(batch_stats)
            shards.write(result)
    if packer:
        last = packer.finish()
        shards.write({"input_ids": (np.full(len(last), last.shape[1]), last.reshape(-1))})
        stats = packer.stats()
    shards.finish()
    return dict(stats), shards.rows


def tokenize_dataset(data_dir, tokenizer, settings: dict, out_dir, workers: int = 1,
                     progress_every: float = PROGRESS_SECONDS) -> dict:
    """`settings`: tuneflow.plan.Plan.tokenize_settings (kind, max_length, chat_template, mask_prompt).
    `workers`: processes that tokenize (the rule's threads); the result does not depend on it."""
    data_dir = Path(data_dir)
    kind = settings["kind"]
    if kind not in KINDS:
        raise ValueError(kind)
    meta = {"kind": kind, "settings": settings, "source": str(data_dir), "splits": {}}
    paths = {split: data_dir / f"{split}.jsonl" for split in ("train", "validation")}
    total = sum(p.stat().st_size for p in paths.values())
    # One core per worker: the tokenizer's own threads would compete with the other workers.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    job = {"tokenizer": tokenizer, "settings": settings, "dataset": data_dir.name}
    with OrderedPool(min(workers, 1 + total // BATCH_BYTES), job) as pool:
        progress = Progress(f"tokenize {data_dir.name} ({kind}, {pool.workers} worker{'s' if pool.workers > 1 else ''})",
                            total, every=progress_every)
        counted = {"records": 0, "bytes": 0}
        with atomic_dir(out_dir) as tmp:
            for split, path in paths.items():
                stats, rows = _write_split(path, tmp / split, tokenizer, settings, pool, progress, counted)
                if split == "train" and not rows:
                    raise TuneflowError(f"{data_dir}/train.jsonl: no sample left after tokenization ({json.dumps(stats)}); "
                                        "is max_length too small?")
                meta["splits"][split] = stats
            progress.print(final=True)
            with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
    return meta
