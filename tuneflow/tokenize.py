"""Tokenize converted data once per (kind of rows, tokenizer, template, max length) and cache it.

Output directory: train/ and validation/ (Hugging Face `datasets` saved to disk) + meta.json +
example.json (the first training row with its loss-carrying tokens marked: tuneflow.show_example).
  pt:  {"input_ids"}  documents joined with the document-end token (special_tokens.document_end_id)
       and cut into blocks of exactly max_length tokens
  sft: {"input_ids", "labels"}  labels are -100 outside assistant turns when mask_prompt is on
  dpo: {"prompt_ids", "chosen_ids", "rejected_ids"}  as TRL's DPOTrainer builds them
Changing the learning rate never re-tokenizes; changing max length, template or tokenizer does,
because they are part of the cache key (the directory name) and of the rule's params.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneflow.errors import TuneflowError
from tuneflow.io import atomic_dir, read_jsonl
from tuneflow.show_example import example
from tuneflow.special_tokens import document_end_id
from tuneflow.templates import assistant_spans, render

IGNORE = -100


def labels_from_spans(offsets, spans, input_ids):
    labels = []
    j = 0
    for tok_id, (start, end) in zip(input_ids, offsets):
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        inside = j < len(spans) and start >= spans[j][0] and end <= spans[j][1] and end > start
        labels.append(tok_id if inside else IGNORE)
    return labels


def prompt_ids(tokenizer, messages) -> list[int]:
    """What the model is asked to continue for the last assistant turn of `messages`: the row SFT
    trains on, cut before the first trained token of that turn (so the prompt at inference is the
    trained prefix, token for token)."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = labels_from_spans(enc["offset_mapping"], spans[-1:], enc["input_ids"])
    return enc["input_ids"][:next(k for k, x in enumerate(labels) if x != IGNORE)]


def tokenize_sft(records, tokenizer, max_length, mask_prompt=True, batch=512):
    rows, stats = [], {"records": len(records), "truncated": 0, "dropped_fully_masked": 0, "tokens": 0, "label_tokens": 0}
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        texts, all_spans = [], []
        for r in chunk:
            if mask_prompt:
                text, spans = assistant_spans(tokenizer, r["messages"])
            else:
                text, spans = render(tokenizer, r["messages"]), None
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


def tokenize_pt(records, tokenizer, max_length):
    """Concatenate documents (each followed by the document-end token) and cut into full blocks of
    max_length."""
    eos = document_end_id(tokenizer)
    enc = tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]
    stream = []
    for ids in enc:
        stream.extend(ids)
        stream.append(eos)
    if 0 < len(stream) < max_length:
        rows = [{"input_ids": stream}]  # one short block rather than nothing (tiny validation splits)
    else:
        rows = [{"input_ids": stream[b * max_length:(b + 1) * max_length]} for b in range(len(stream) // max_length)]
    stats = {"records": len(records), "tokens": len(stream), "blocks": len(rows),
             "tokens_dropped_at_end": max(0, len(stream) - len(rows) * max_length)}
    return rows, stats


def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _answer(tokenizer, messages) -> tuple[list[int], int, int]:
    """A conversation's ids as SFT tokenizes it and where its last answer starts and ends (the end
    of its end-of-turn token: the separator after it is no part of the answer)."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [k for k, x in enumerate(labels_from_spans(enc["offset_mapping"], spans[-1:], enc["input_ids"]))
               if x != IGNORE]
    return enc["input_ids"], trained[0], trained[-1] + 1


def tokenize_dpo(records, tokenizer, max_length):
    """Prompt / chosen / rejected ids the way TRL's DPOTrainer uses them for conversational data:
    each response is its answer as SFT trains it (up to its end-of-turn token)."""
    rows = []
    stats = {"records": len(records), "dropped_prompt_too_long": 0, "tokens": 0}
    for r in records:
        (c, c0, c1), (x, x0, x1) = (_answer(tokenizer, r["messages"] + [{"role": "assistant", "content": r[side]}])
                                    for side in ("chosen", "rejected"))
        n = min(c0, x0, _common_prefix(c, x))
        if n >= max_length:
            stats["dropped_prompt_too_long"] += 1
            continue
        row = {"prompt_ids": c[:n], "chosen_ids": c[n:c1], "rejected_ids": x[n:x1]}
        stats["tokens"] += c1 + x1
        rows.append(row)
    return rows, stats


def tokenize_split(records, tokenizer, settings):
    kind = settings["kind"]
    if kind == "pt":
        return tokenize_pt(records, tokenizer, settings["max_length"])
    if kind == "sft":
        return tokenize_sft(records, tokenizer, settings["max_length"], settings.get("mask_prompt", True))
    if kind == "dpo":
        return tokenize_dpo(records, tokenizer, settings["max_length"])
    raise ValueError(kind)


def tokenize_dataset(data_dir, tokenizer, settings: dict, out_dir) -> dict:
    """`settings`: tuneflow.plan.Plan.tokenize_settings (kind, max_length, chat_template, mask_prompt)."""
    from datasets import Dataset

    data_dir = Path(data_dir)
    kind = settings["kind"]
    meta = {"kind": kind, "settings": settings, "source": str(data_dir), "splits": {}}
    with atomic_dir(out_dir) as tmp:
        for split in ("train", "validation"):
            records = read_jsonl(data_dir / f"{split}.jsonl")
            rows, stats = tokenize_split(records, tokenizer, settings)
            if split == "train" and not rows:
                raise TuneflowError(f"{data_dir}/train.jsonl: no sample left after tokenization ({json.dumps(stats)}); "
                                    "is max_length too small?")
            columns = {"pt": ["input_ids"], "sft": ["input_ids", "labels"], "dpo": ["prompt_ids", "chosen_ids", "rejected_ids"]}[kind]
            ds = Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
            ds.save_to_disk(str(tmp / split))
            meta["splits"][split] = stats
            if split == "train":  # what the model sees, for scripts/show_example.py and the report
                with open(tmp / "example.json", "w", encoding="utf-8") as f:
                    json.dump(example(tokenizer, rows[0], kind), f, indent=1, ensure_ascii=False)
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
    return meta
