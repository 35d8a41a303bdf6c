"""Tokenize converted data once per (kind of rows, tokenizer, template settings, lengths) and cache it.

Output directory: train/ and validation/ (Hugging Face `datasets` saved to disk) + meta.json +
example.json (the first training row with its loss-carrying tokens marked: tuneflow.show_example).
  pt:  {"input_ids"}  documents (BOS / EOS around each as the PT stage says; the end is the
       document-end token, special_tokens.document_end_id) joined and cut into blocks of exactly
       max_length tokens
  sft: {"input_ids", "labels"}  the chat template's rows (tuneflow.templates): labels are -100
       outside the answers when mask_prompt is on; cut to length as `truncation` says. Plain
       text (a text dataset mixed into SFT) is cut into PT's blocks, every token a label
  dpo: {"prompt_ids", "chosen_ids", "rejected_ids"}  as TRL's DPOTrainer builds them (the reward
       model reads the same rows: prompt + chosen, prompt + rejected)
  kto: {"prompt_ids", "completion_ids", "label"}  unpaired; a preference pair gives one desirable
       (chosen) and one undesirable (rejected) row
  prompt: {"prompt", "reference", "meta"}  online RL: the conversation up to the last assistant turn
       (messages: the RL trainer renders and samples it), that turn as the reference answer, the
       record's meta (JSON) for verifiable rewards; prompts longer than max_length are dropped
Changing the learning rate never re-tokenizes; changing max length, template or tokenizer does,
because they are part of the cache key (the directory name) and of the rule's params.

Nothing is cut or dropped silently: meta.json counts, per split, the records kept, truncated and
dropped (no trainable token left) with example ids; when more than `data.truncation_warn_fraction`
of a split's records were truncated or dropped, a warning with the counts and ids is logged and
recorded (the report shows it), or the job fails when `data.on_truncation` is `error`.

Any size of data, flat memory: records stream from the JSONL in batches, `workers` processes
tokenize the batches (in order, so the result does not depend on their number), and the rows are
appended to Arrow shards as they come (the layout `Dataset.save_to_disk` writes; training
memory-maps them with `load_from_disk`), every kind of rows alike. PT blocks are cut from the
running token stream.
A new kind of rows is one entry of KINDS: its columns and a function from a batch of records to
rows and counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneflow import templates
from tuneflow.errors import ModelError, TuneflowError
from tuneflow.io import atomic_dir, verify_dir
from tuneflow.parallel import OrderedPool
from tuneflow.progress import PROGRESS_SECONDS, Progress
from tuneflow.show_example import example
from tuneflow.special_tokens import document_end_id
from tuneflow.templates import supports_tools

IGNORE = templates.IGNORE
MAX_EXAMPLES = 5
BATCH_RECORDS = 1000
BATCH_BYTES = 1 << 20  # of JSON in: the token lists of a batch take some 30 times that
MAX_SHARD_BYTES = 500 << 20  # as Dataset.save_to_disk's default max_shard_size


def template_settings(settings: dict) -> templates.Settings:
    return templates.Settings.from_config(settings.get("chat_template", "tokenizer"), settings.get("template"))


# -- cutting rows to length -----------------------------------------------------------------------

def _tail(ids, special_ids) -> int:
    """How many of the last ids are special tokens (the template's closing EOS, kept by keep_eos)."""
    n = 0
    while n < len(ids) and ids[len(ids) - 1 - n] in special_ids:
        n += 1
    return n


def _cut(ids, limit, keep_tail: int) -> list:
    """ids cut to `limit`, keeping the last `keep_tail` ids (the closing EOS) when cutting."""
    if len(ids) <= limit:
        return ids
    keep_tail = min(keep_tail, limit)
    return ids[:limit - keep_tail] + ids[len(ids) - keep_tail:] if keep_tail else ids[:limit]


def fit_turns(turns, max_length: int, truncation: dict, special_ids) -> tuple[list, bool]:
    """Cut a conversation's (source, target) turns to length; returns the kept turns and whether
    anything was cut. Strategies (stages.<stage>.truncation.strategy):
      right        the whole row is cut at max_length (Chinese-LLaMA-Alpaca-2, TRL)
      turn         per turn, the source to max_source_length and the target to max_target_length
                   (keep_eos: the cut text keeps its closing special tokens), then turns are added
                   while the row fits max_length (LLaMA-Factory 2023, LLMs_train)
      proportional per turn, max_length shared between source and target in proportion to their
                   lengths, the target keeping its closing EOS; turns added while they fit (MedicalGPT)
    """
    strategy = truncation.get("strategy", "right")
    if strategy == "right":
        row, out, cut = 0, [], False
        for s, t in turns:
            if row + len(s) + len(t) <= max_length:
                out.append((s, t))
                row += len(s) + len(t)
                continue
            room = max_length - row
            out.append((s[:room], t[:max(0, room - len(s))]))
            cut = True
            break
        return out, cut or len(out) < len(turns)
    keep = truncation.get("keep_eos", False)
    out, row, cut = [], 0, False
    for s, t in turns:
        if strategy == "turn":
            ms, mt = truncation["max_source_length"], truncation["max_target_length"]
            s2 = _cut(s, ms, _tail(s, special_ids) if keep else 0)
            t2 = _cut(t, mt, _tail(t, special_ids) if keep else 0)
            extra = 0
        elif strategy == "proportional":
            n = _tail(t, special_ids)
            body = t[:len(t) - n]
            total = len(s) + len(body)
            # the same expression as MedicalGPT's supervised_finetuning.py, so the ids agree bit for bit
            ms = int(max_length * (len(s) / total))
            mt = int(max_length * (len(body) / total))
            s2 = s[:ms] if len(s) > ms else s
            body2 = body[:max(mt - n, 0)] if len(body) > mt - n else body
            t2 = body2 + t[len(t) - n:]
            extra = 0
        else:
            raise ValueError(strategy)
        cut = cut or s2 != s or t2 != t
        if row + len(s2) + len(t2) + extra > max_length:
            return out, True
        out.append((s2, t2))
        row += len(s2) + len(t2)
    return out, cut


# -- rows -----------------------------------------------------------------------------------------

def _new_stats(records):
    return {"records": len(records), "kept": 0, "truncated": 0, "dropped": 0, "tokens": 0, "label_tokens": 0,
            "truncated_examples": [], "dropped_examples": []}


def _note(stats, key, rec):
    stats[key] += 1
    if len(stats[f"{key}_examples"]) < MAX_EXAMPLES:
        stats[f"{key}_examples"].append(rec.get("id"))


def sft_row(tokenizer, messages, settings: dict, special_ids=None, tools=None):
    """(input_ids, labels, cut) of one conversation; None when nothing trainable is left. `tools`:
    the functions the conversation offers (its tool calls are trained like any answer)."""
    tpl = template_settings(settings)
    enc = templates.encode(tokenizer, messages, tpl, tools=tools)
    special_ids = special_ids if special_ids is not None else set(tokenizer.all_special_ids)
    turns, cut = fit_turns(enc.turns, settings["max_length"], settings.get("truncation") or {}, special_ids)
    mask = settings.get("mask_prompt", True)
    ids, labels = [], []
    for s, t in turns:
        ids += s + t
        labels += ([IGNORE] * len(s) if mask else list(s)) + list(t)
    if not cut and len(ids) + len(enc.tail) <= settings["max_length"]:
        ids, labels = ids + enc.tail, labels + ([IGNORE] * len(enc.tail) if mask else list(enc.tail))
    if not any(x != IGNORE for x in labels):
        return None, cut
    return (ids, labels), cut


def tokenize_sft(records, tokenizer, settings: dict):
    """Rows {"id", "input_ids", "labels"} of every record with something left to train on."""
    rows, stats = [], _new_stats(records)
    special_ids = set(tokenizer.all_special_ids)
    for r in records:
        row, cut = sft_row(tokenizer, r["messages"], settings, special_ids, tools=r.get("tools"))
        if row is None:
            _note(stats, "dropped", r)
            continue
        if cut:
            _note(stats, "truncated", r)
        ids, labels = row
        stats["kept"] += 1
        stats["tokens"] += len(ids)
        stats["label_tokens"] += sum(1 for x in labels if x != IGNORE)
        rows.append({"id": r.get("id"), "input_ids": ids, "labels": labels})
    return rows, stats


def pt_document_ids(tokenizer, texts, settings: dict) -> list[list[int]]:
    """Each document's ids: BOS first when the PT stage's bos_per_document says so (and the
    tokenizer has one), EOS last when eos_per_document does."""
    bos = [tokenizer.bos_token_id] if settings.get("bos_per_document") and tokenizer.bos_token_id is not None else []
    eos = [document_end_id(tokenizer)] if settings.get("eos_per_document", True) else []
    texts = list(texts)
    return [bos + ids + eos for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def pt_token_stream(records, tokenizer, settings: dict) -> list[int]:
    """The documents' ids (pt_document_ids) as one list."""
    return [t for ids in pt_document_ids(tokenizer, [r["text"] for r in records], settings) for t in ids]


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
        return {"records": self.records, "kept": self.records, "truncated": 0, "dropped": 0, "tokens": self.tokens,
                "blocks": self.blocks, "tokens_dropped_at_end": len(self.carry)}


def tokenize_pt(records, tokenizer, settings: dict):
    """Concatenate documents and cut into full blocks of max_length (the remainder is dropped and
    counted)."""
    packer = PTBlocks(settings["max_length"])
    blocks = packer.feed(pt_token_stream(records, tokenizer, settings), len(records))
    rows = [{"input_ids": list(map(int, b))} for b in blocks] + [{"input_ids": list(map(int, b))} for b in packer.finish()]
    return rows, packer.stats()


def tokenize_dpo(records, tokenizer, settings: dict):
    """Prompt / chosen / rejected ids as TRL's DPOTrainer uses them: the prompt is the template's
    row up to the answer, each response the template's answer (with its EOS). A pair whose prompt
    fills max_length is dropped; one longer than max_length is counted as truncated (TRL cuts it)."""
    tpl = template_settings(settings)
    max_length = settings["max_length"]
    rows, stats = [], _new_stats(records)
    for r in records:
        pair = []
        for resp in (r["chosen"], r["rejected"]):
            enc = templates.encode(tokenizer, r["messages"] + [_assistant(resp)], tpl, tools=r.get("tools"))
            pair.append(([t for s, g in enc.turns[:-1] for t in s + g] + enc.turns[-1][0], enc.turns[-1][1]))
        (p, c), (p2, x) = pair
        if p != p2:  # a joined template merged the prompt's end with a response: keep the common part
            n = next((i for i, (a, b) in enumerate(zip(p + c, p2 + x)) if a != b), min(len(p), len(p2)))
            p, c, x = p[:n], (p + c)[n:], (p2 + x)[n:]
        if len(p) >= max_length:
            _note(stats, "dropped", r)
            continue
        if len(p) + max(len(c), len(x)) > max_length:
            _note(stats, "truncated", r)
        stats["kept"] += 1
        stats["tokens"] += len(p) * 2 + len(c) + len(x)
        rows.append({"id": r.get("id"), "prompt_ids": p, "chosen_ids": c, "rejected_ids": x})
    return rows, stats


def _prompt_and_answer(tokenizer, messages, answer, tpl, tools=None):
    """(prompt ids, answer ids) of a conversation with `answer` as its last turn: the prompt is the
    template's row up to the answer (what generation is given), the answer what SFT would train."""
    enc = templates.encode(tokenizer, messages + [_assistant(answer)], tpl, tools=tools)
    return [t for s, g in enc.turns[:-1] for t in s + g] + enc.turns[-1][0], enc.turns[-1][1]


def tokenize_kto(records, tokenizer, settings: dict):
    """Unpaired (prompt, completion, desirable?) rows; preference pairs are unpaired here (one
    desirable, one undesirable row). A prompt that fills max_length is dropped."""
    tpl = template_settings(settings)
    rows = []
    stats = {"records": len(records), "desirable": 0, "undesirable": 0, "unpaired_from_pairs": 0,
             "dropped_prompt_too_long": 0, "tokens": 0}
    for r in records:
        pairs = [(r["chosen"], True), (r["rejected"], False)] if "chosen" in r else [(r["completion"], r["label"])]
        if len(pairs) == 2:
            stats["unpaired_from_pairs"] += 1
        for completion, label in pairs:
            p, c = _prompt_and_answer(tokenizer, r["messages"], completion, tpl, r.get("tools"))
            if len(p) >= settings["max_length"]:
                stats["dropped_prompt_too_long"] += 1
                continue
            rows.append({"id": r.get("id"), "prompt_ids": p, "completion_ids": c, "label": bool(label)})
            stats["desirable" if label else "undesirable"] += 1
            stats["tokens"] += len(p) + len(c)
    return rows, stats


def tokenize_prompts(records, tokenizer, settings: dict, dataset=None):
    """Online-RL prompts: the conversation before its last assistant turn, that turn as reference;
    meta carries the record's id, its dataset's name and its own meta (PromptCBLUE task...)."""
    tpl = template_settings(settings)
    rows = []
    stats = {"records": len(records), "dropped_prompt_too_long": 0, "prompt_tokens": 0}
    for r in records:
        prompt = r["messages"][:-1]
        n = len(templates.prompt_ids(tokenizer, prompt, tpl))
        if n > settings["max_length"]:
            stats["dropped_prompt_too_long"] += 1
            continue
        stats["prompt_tokens"] += n
        rows.append({"prompt": prompt, "reference": r["messages"][-1]["content"],
                     "meta": json.dumps({"id": r["id"], "dataset": dataset, **(r.get("meta") or {})}, ensure_ascii=False)})
    return rows, stats


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
    if first is not None and (settings.get("chat_template", "tokenizer") != "tokenizer" or not supports_tools(tokenizer)):
        raise ModelError(
            f"{dataset + ': ' if dataset else ''}records carry tool calls or tool definitions (the first: id "
            f"'{first.get('id', '?')}'), but the chat template (chat_template: {settings.get('chat_template', '?')}) does "
            "not render tools, tool calls or tool results; use a model whose own template does (e.g. Qwen3, with "
            "chat_template: tokenizer), or leave these records out")


@dataclass(frozen=True)
class Kind:
    """A kind of tokenized rows: its columns (name -> Arrow value type) and how a batch of
    canonical records becomes rows (+ counts that add up over batches). `packed`: the rows are
    PT blocks cut from the token stream of all batches (the function returns that stream; every
    column holds the block). Columns typed None (KTO's label, RL's prompt messages: not all lists
    of ids) go to the Arrow shards as Python rows, their types inferred; both stream."""
    columns: dict
    rows: object  # (records, tokenizer, settings) -> (rows, stats), or the token stream when packed
    packed: bool = False

    @property
    def arrays(self) -> bool:
        """Every column a list of ids of a given type: the rows travel as numpy arrays."""
        return all(dtype is not None for dtype in self.columns.values())


KINDS = {
    "pt": Kind({"input_ids": "int32"}, pt_token_stream, packed=True),
    "sft": Kind({"input_ids": "int32", "labels": "int64"}, tokenize_sft),
    # Plain text mixed into SFT (so that it forgets less of it): PT's blocks, every token a label.
    "sft_text": Kind({"input_ids": "int32", "labels": "int64"}, pt_token_stream, packed=True),
    "dpo": Kind({"prompt_ids": "int64", "chosen_ids": "int64", "rejected_ids": "int64"}, tokenize_dpo),
    "kto": Kind({"prompt_ids": None, "completion_ids": None, "label": None}, tokenize_kto),
    "prompt": Kind({"prompt": None, "reference": None, "meta": None},
                   lambda recs, tok, s: tokenize_prompts(recs, tok, s, s.get("_dataset"))),
}


def rows_kind(kind: str, data_dir) -> str:
    """The kind of rows a dataset gives: SFT fed with plain text gets PT's blocks."""
    if kind != "sft":
        return kind
    with open(Path(data_dir) / "train.jsonl", encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), None)
    return "sft_text" if first is not None and "text" in json.loads(first) else kind


def tokenize_split(records, tokenizer, settings, dataset=None):
    """Rows and counts of a list of records (the streaming job below does the same batch by batch)."""
    check_tool_support(records, tokenizer, settings)
    kind = settings["kind"]
    if kind == "sft" and records and "text" in records[0]:
        kind = "sft_text"
    if KINDS[kind].packed:
        rows, stats = tokenize_pt(records, tokenizer, settings)
        return [{c: r["input_ids"] for c in KINDS[kind].columns} for r in rows], stats
    return KINDS[kind].rows(records, tokenizer, {**settings, "_dataset": dataset})


# -- the job --------------------------------------------------------------------------------------

def length_warning(name: str, split: str, stats: dict, threshold: float) -> str | None:
    """The warning for a split where more than `threshold` of the records were cut or dropped."""
    records = stats.get("records") or 0
    hit = stats.get("truncated", 0) + stats.get("dropped", 0)
    if not records or hit / records <= threshold:
        return None
    parts = []
    for key in ("truncated", "dropped"):
        if stats.get(key):
            ids = ", ".join(map(str, stats.get(f"{key}_examples", [])))
            parts.append(f"{stats[key]} {key}" + (f" (e.g. {ids})" if ids else ""))
    return (f"{name} {split}: {hit} of {records} records ({100 * hit / records:.1f}%) were cut to max_length or "
            f"dropped: {'; '.join(parts)}")


# -- streaming: batches of records -> worker processes -> Arrow shards -------------------------------


def _tokenize_batch(lines, job):
    """In a worker: JSON lines -> ({column: (lengths, values)} as numpy arrays, stats)."""
    import numpy as np

    tokenizer, settings = job["tokenizer"], {**job["settings"], "_dataset": job["dataset"]}
    kind = KINDS[job["kind"]]
    records = [json.loads(line) for line in lines]
    check_tool_support(records, tokenizer, settings, job["dataset"])
    if kind.packed:
        return np.asarray(kind.rows(records, tokenizer, settings), dtype=np.int64), {"records": len(records)}
    rows, stats = kind.rows(records, tokenizer, settings)
    if not kind.arrays:
        return [{c: r[c] for c in kind.columns} for r in rows], stats
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
    `load_from_disk` memory-maps them. The fingerprint is a hash of the rows.

    `columns`: name -> Arrow type of the ids in a list column (write: numpy arrays), or None for
    every column (write_rows: Python rows, their types inferred as Dataset.from_dict infers them).
    A later batch may widen an inferred type (a message that first has tool_calls): the later shards
    take the wider type, and finish() rewrites the earlier ones into it, one record batch at a time."""

    def __init__(self, directory: Path, columns: dict):
        import pyarrow as pa
        from datasets import Features, List, Value

        self.pa, self.dir = pa, Path(directory)
        self.dir.mkdir(parents=True)
        self.columns = columns
        inferred = all(dtype is None for dtype in columns.values())
        self.features = None if inferred else Features({name: List(Value(dtype)) for name, dtype in columns.items()})
        self.shards, self.writer, self.shard_bytes = [], None, 0
        self.shard_features = []  # of each shard, as written
        self.hash = hashlib.sha256()
        self.rows = 0

    def _open(self):
        from datasets.arrow_writer import ArrowWriter

        path = self.dir / f".shard-{len(self.shards)}.arrow"
        self.shards.append(path)
        self.shard_features.append(self.features)
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

    def write_rows(self, rows: list[dict]):
        """Rows of Python values (the columns of every kind whose rows are not only ids)."""
        from datasets import Features

        if not rows:
            return
        pa = self.pa
        table = pa.Table.from_pylist(rows).select(list(self.columns))
        schema = table.schema if self.features is None else pa.unify_schemas(
            [self.features.arrow_schema, table.schema], promote_options="permissive").remove_metadata()
        if self.features is None or schema != self.features.arrow_schema:
            self.features = Features.from_arrow_schema(schema)
            self._close()  # the next shard has the wider types
        if self.writer is None or self.shard_bytes >= MAX_SHARD_BYTES:
            self._close()
            self._open()
        self.writer.write_table(table.cast(self.features.arrow_schema))
        self.hash.update(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode())
        self.shard_bytes += table.nbytes
        self.rows += len(rows)

    def _widen_earlier_shards(self):
        """Rewrite the shards written before a type was widened into the final types."""
        from datasets.arrow_writer import ArrowWriter

        pa, final = self.pa, self.features.arrow_schema
        for path, features in zip(self.shards, self.shard_features):
            if features.arrow_schema == final:
                continue
            wider = path.with_name(path.name + ".wider")
            writer = ArrowWriter(features=self.features, path=str(wider))
            with pa.memory_map(str(path)) as source:
                for batch in pa.ipc.open_stream(source):
                    writer.write_table(pa.Table.from_batches([batch]).cast(final))
            writer.finalize()
            writer.close()
            wider.replace(path)

    def _close(self):
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def finish(self):
        from datasets import DatasetInfo, Features
        from datasets.utils.py_utils import asdict

        if self.features is None:  # no rows of inferred types: what the rows would have had
            self.features = Features.from_arrow_schema(self.pa.schema([(name, self.pa.null()) for name in self.columns]))
        if not self.shards:  # no rows: one empty shard, as save_to_disk writes
            self._open()
        self._close()
        self._widen_earlier_shards()
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


def _write_split(path: Path, out: Path, kind_name: str, tokenizer, settings, pool: OrderedPool, progress: Progress,
                 counted: dict):
    """Tokenize one split file into Arrow shards under `out`; -> (stats, rows written, the first row)."""
    import numpy as np

    kind = KINDS[kind_name]
    shards = ArrowShards(out, kind.columns)
    packer = PTBlocks(settings["max_length"]) if kind.packed else None
    stats = dict(kind.rows([], tokenizer, settings)[1]) if not packer else None
    first = None

    def blocks_as_columns(blocks, length):
        return {name: (np.full(len(blocks), length), blocks.reshape(-1)) for name in kind.columns}

    for batch, (result, batch_stats) in pool.map(_tokenize_batch, _batches(path, counted)):
        counted["records"] += len(batch)
        progress.update(counted["records"], counted["bytes"])
        if packer:
            columns = blocks_as_columns(packer.feed(result, len(batch)), packer.max_length)
        else:
            _add_stats(stats, batch_stats)
            columns = result
        if not kind.arrays:
            shards.write_rows(result)
            continue
        first = first or _first_row(columns)
        shards.write(columns)
    if packer:
        last = packer.finish()
        columns = blocks_as_columns(last, last.shape[1])
        first = first or _first_row(columns)
        shards.write(columns)
        stats = packer.stats()
    shards.finish()
    return stats, shards.rows, first


def _add_stats(total: dict, stats: dict):
    """Counts add up over batches; example ids are kept in order, the first MAX_EXAMPLES."""
    for key, value in stats.items():
        if isinstance(value, list):
            total[key] = (total.get(key, []) + value)[:MAX_EXAMPLES]
        else:
            total[key] = total.get(key, 0) + value


def _first_row(columns: dict) -> dict | None:
    """Row 0 of a batch's columns ((lengths, values) each), or None when it has no rows."""
    if not len(next(iter(columns.values()))[0]):
        return None
    return {name: [int(x) for x in values[:lengths[0]]] for name, (lengths, values) in columns.items()}


def tokenize_dataset(data_dir, tokenizer, settings: dict, out_dir, workers: int = 1,
                     progress_every: float = PROGRESS_SECONDS) -> dict:
    """`settings`: tuneflow.plan.Plan.tokenize_settings (kind, model, max_length, chat_template,
    template, mask_prompt, truncation, PT document settings, on_truncation). A held_out dataset
    (its manifest says so) has no train split. `workers`: processes that tokenize (the rule's
    threads); the result does not depend on it."""
    data_dir = Path(data_dir)
    verify_dir(data_dir)
    kind = settings["kind"]
    if kind not in KINDS:
        raise ValueError(kind)
    name = data_dir.name
    manifest = data_dir / "manifest.json"
    held_out = manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("held_out", False)
    meta = {"kind": kind, "dataset": name, "settings": settings, "source": str(data_dir), "splits": {}, "warnings": []}
    paths = {split: data_dir / f"{split}.jsonl" for split in ("train", "validation")}
    total = sum(p.stat().st_size for p in paths.values())
    # One core per worker: the tokenizer's own threads would compete with the other workers.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    kind_name = rows_kind(kind, data_dir)
    job = {"tokenizer": tokenizer, "settings": settings, "dataset": name, "kind": kind_name}
    with OrderedPool(min(workers, 1 + total // BATCH_BYTES), job) as pool:
        progress = Progress(f"tokenize {name} ({kind}, {pool.workers} worker{'s' if pool.workers > 1 else ''})",
                            total, every=progress_every)
        counted = {"records": 0, "bytes": 0}
        with atomic_dir(out_dir, rule="tokenize") as tmp:
            for split, path in paths.items():
                stats, rows, first = _write_split(path, tmp / split, kind_name, tokenizer, settings, pool, progress, counted)
                if split == "train" and not rows and not held_out:
                    raise TuneflowError(f"{data_dir}/train.jsonl: no sample left after tokenization "
                                        f"({json.dumps({k: v for k, v in stats.items() if not k.endswith('examples')})}); "
                                        "is max_length too small?")
                warning = length_warning(name, split, stats, settings.get("truncation_warn_fraction", 0.01))
                if warning:
                    if settings.get("on_truncation") == "error":
                        raise TuneflowError(f"{warning}; raise max_length (or the truncation limits), or set "
                                            "data.on_truncation: warn to train on them anyway")
                    print(f"[tuneflow] WARNING: {warning}", file=sys.stderr, flush=True)
                    meta["warnings"].append(warning)
                meta["splits"][split] = {**stats, "rows": rows}
                if split == "train" and first is not None:  # what the model sees: scripts/show_example.py, the report
                    with open(tmp / "example.json", "w", encoding="utf-8") as f:
                        json.dump(example(tokenizer, first, kind), f, indent=1, ensure_ascii=False)
            progress.print(final=True)
            with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, ensure_ascii=False)
    return meta
