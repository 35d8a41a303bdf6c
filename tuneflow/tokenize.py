"""Tokenize converted data once per (kind of rows, tokenizer, template, max length) and cache it.

Output directory: train/ and validation/ (Hugging Face `datasets` saved to disk) + meta.json.
  pt:  {"input_ids"}  documents joined with EOS and cut into blocks of exactly max_length tokens
  sft: {"input_ids", "labels"}  labels are -100 outside assistant turns when mask_prompt is on; plain
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
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneflow.errors import TuneflowError
from tuneflow.io import atomic_dir, read_jsonl
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
    """Concatenate documents (each followed by EOS) and cut into full blocks of max_length."""
    eos = tokenizer.eos_token_id
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


def tokenize_dpo(records, tokenizer, max_length):
    """Prompt / chosen / rejected ids the way TRL's DPOTrainer builds them for conversational data."""
    rows = []
    stats = {"records": len(records), "dropped_prompt_too_long": 0, "tokens": 0}
    for r in records:
        prompt = r["messages"]
        p_text = render(tokenizer, prompt, add_generation_prompt=True)
        c_text = render(tokenizer, prompt + [{"role": "assistant", "content": r["chosen"]}])
        x_text = render(tokenizer, prompt + [{"role": "assistant", "content": r["rejected"]}])
        p, c, x = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (p_text, c_text, x_text))
        n = min(_common_prefix(p, c), _common_prefix(p, x))
        if n >= max_length:
            stats["dropped_prompt_too_long"] += 1
            continue
        row = {"prompt_ids": p[:n], "chosen_ids": c[n:], "rejected_ids": x[n:]}
        stats["tokens"] += len(c) + len(x)
        rows.append(row)
    return rows, stats


def tokenize_kto(records, tokenizer, max_length):
    """Unpaired (prompt, completion, desirable?) rows; preference pairs are unpaired here."""
    rows = []
    stats = {"records": len(records), "desirable": 0, "undesirable": 0, "unpaired_from_pairs": 0,
             "dropped_prompt_too_long": 0, "tokens": 0}
    for r in records:
        p_text = render(tokenizer, r["messages"], add_generation_prompt=True)
        p = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        pairs = [(r["chosen"], True), (r["rejected"], False)] if "chosen" in r else [(r["completion"], r["label"])]
        if len(pairs) == 2:
            stats["unpaired_from_pairs"] += 1
        for completion, label in pairs:
            full = tokenizer(render(tokenizer, r["messages"] + [{"role": "assistant", "content": completion}]),
                             add_special_tokens=False)["input_ids"]
            n = _common_prefix(p, full)
            if n >= max_length:
                stats["dropped_prompt_too_long"] += 1
                continue
            rows.append({"prompt_ids": p[:n], "completion_ids": full[n:], "label": bool(label)})
            stats["desirable" if label else "undesirable"] += 1
            stats["tokens"] += len(full)
    return rows, stats


def tokenize_prompts(records, tokenizer, max_length, dataset=None):
    """Online-RL prompts: the conversation before its last assistant turn, that turn as reference;
    meta carries the record's id, its dataset's name and its own meta (PromptCBLUE task...)."""
    rows = []
    stats = {"records": len(records), "dropped_prompt_too_long": 0, "prompt_tokens": 0}
    for r in records:
        prompt = r["messages"][:-1]
        n = len(tokenizer(render(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        if n > max_length:
            stats["dropped_prompt_too_long"] += 1
            continue
        stats["prompt_tokens"] += n
        rows.append({"prompt": prompt, "reference": r["messages"][-1]["content"],
                     "meta": json.dumps({"id": r["id"], "dataset": dataset, **(r.get("meta") or {})}, ensure_ascii=False)})
    return rows, stats


KIND_COLUMNS = {"pt": ["input_ids"], "sft": ["input_ids", "labels"], "dpo": ["prompt_ids", "chosen_ids", "rejected_ids"],
                "kto": ["prompt_ids", "completion_ids", "label"], "prompt": ["prompt", "reference", "meta"]}


def tokenize_split(records, tokenizer, settings, dataset=None):
    kind = settings["kind"]
    if kind == "pt":
        return tokenize_pt(records, tokenizer, settings["max_length"])
    if kind == "sft" and records and "text" in records[0]:
        # Plain text mixed into SFT (so that it forgets less of it): PT's blocks, every token a label.
        rows, stats = tokenize_pt(records, tokenizer, settings["max_length"])
        return [{**r, "labels": r["input_ids"]} for r in rows], stats
    if kind == "sft":
        return tokenize_sft(records, tokenizer, settings["max_length"], settings.get("mask_prompt", True))
    if kind == "dpo":
        return tokenize_dpo(records, tokenizer, settings["max_length"])
    if kind == "kto":
        return tokenize_kto(records, tokenizer, settings["max_length"])
    if kind == "prompt":
        return tokenize_prompts(records, tokenizer, settings["max_length"], dataset)
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
            rows, stats = tokenize_split(records, tokenizer, settings, dataset=data_dir.name)
            if split == "train" and not rows:
                raise TuneflowError(f"{data_dir}/train.jsonl: no sample left after tokenization ({json.dumps(stats)}); "
                                    "is max_length too small?")
            ds = Dataset.from_dict({c: [r[c] for r in rows] for c in KIND_COLUMNS[kind]})
            ds.save_to_disk(str(tmp / split))
            meta["splits"][split] = stats
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
    return meta
