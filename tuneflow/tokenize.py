"""Tokenize converted data once per (kind of rows, tokenizer, template settings, lengths) and cache it.

Output directory: train/ and validation/ (Hugging Face `datasets` saved to disk) + meta.json +
example.json (the first training row with its loss-carrying tokens marked: tuneflow.show_example).
  pt:  {"input_ids"}  documents (BOS / EOS around each as the PT stage says; the end is the
       document-end token, special_tokens.document_end_id) joined and cut into blocks of exactly
       max_length tokens
  sft: {"input_ids", "labels"}  the chat template's rows (tuneflow.templates): labels are -100
       outside the answers when mask_prompt is on; cut to length as `truncation` says
  dpo: {"prompt_ids", "chosen_ids", "rejected_ids"}  as TRL's DPOTrainer builds them
Changing the learning rate never re-tokenizes; changing max length, template or tokenizer does,
because they are part of the cache key (the directory name) and of the rule's params.

Nothing is cut or dropped silently: meta.json counts, per split, the records kept, truncated and
dropped (no trainable token left) with example ids; when more than `data.truncation_warn_fraction`
of a split's records were truncated or dropped, a warning with the counts and ids is logged and
recorded (the report shows it), or the job fails when `data.on_truncation` is `error`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tuneflow import templates
from tuneflow.errors import TuneflowError
from tuneflow.io import atomic_dir, read_jsonl, verify_dir
from tuneflow.show_example import example
from tuneflow.special_tokens import document_end_id

IGNORE = templates.IGNORE
MAX_EXAMPLES = 5


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


def sft_row(tokenizer, messages, settings: dict, special_ids=None):
    """(input_ids, labels, cut) of one conversation; None when nothing trainable is left."""
    tpl = template_settings(settings)
    enc = templates.encode(tokenizer, messages, tpl)
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
        row, cut = sft_row(tokenizer, r["messages"], settings, special_ids)
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


def tokenize_pt(records, tokenizer, settings: dict):
    """Concatenate documents and cut into full blocks of max_length (the remainder is dropped and
    counted)."""
    max_length = settings["max_length"]
    stream = [t for ids in pt_document_ids(tokenizer, [r["text"] for r in records], settings) for t in ids]
    if 0 < len(stream) < max_length:
        rows = [{"input_ids": stream}]  # one short block rather than nothing (tiny validation splits)
    else:
        rows = [{"input_ids": stream[b * max_length:(b + 1) * max_length]} for b in range(len(stream) // max_length)]
    stats = {"records": len(records), "kept": len(records), "truncated": 0, "dropped": 0, "tokens": len(stream),
             "blocks": len(rows), "tokens_dropped_at_end": max(0, len(stream) - len(rows) * max_length)}
    return rows, stats


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
            enc = templates.encode(tokenizer, r["messages"] + [{"role": "assistant", "content": resp}], tpl)
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


def tokenize_split(records, tokenizer, settings):
    kind = settings["kind"]
    if kind == "pt":
        return tokenize_pt(records, tokenizer, settings)
    if kind == "sft":
        return tokenize_sft(records, tokenizer, settings)
    if kind == "dpo":
        return tokenize_dpo(records, tokenizer, settings)
    raise ValueError(kind)


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


COLUMNS = {"pt": ["input_ids"], "sft": ["input_ids", "labels"], "dpo": ["prompt_ids", "chosen_ids", "rejected_ids"]}


def tokenize_dataset(data_dir, tokenizer, settings: dict, out_dir) -> dict:
    """`settings`: tuneflow.plan.Plan.tokenize_settings (kind, model, max_length, chat_template,
    template, mask_prompt, truncation, PT document settings, on_truncation). A held_out dataset
    (its manifest says so) has no train split."""
    from datasets import Dataset, Features, Sequence, Value

    data_dir = Path(data_dir)
    verify_dir(data_dir)
    kind = settings["kind"]
    name = data_dir.name
    manifest = data_dir / "manifest.json"
    held_out = manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("held_out", False)
    meta = {"kind": kind, "dataset": name, "settings": settings, "source": str(data_dir), "splits": {}, "warnings": []}
    features = Features({c: Sequence(Value("int64")) for c in COLUMNS[kind]})
    with atomic_dir(out_dir, rule="tokenize") as tmp:
        for split in ("train", "validation"):
            records = read_jsonl(data_dir / f"{split}.jsonl")
            rows, stats = tokenize_split(records, tokenizer, settings)
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
            Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS[kind]}, features=features).save_to_disk(str(tmp / split))
            meta["splits"][split] = {**stats, "rows": len(rows)}
            if split == "train" and rows:  # what the model sees, for scripts/show_example.py and the report
                with open(tmp / "example.json", "w", encoding="utf-8") as f:
                    json.dump(example(tokenizer, rows[0], kind), f, indent=1, ensure_ascii=False)
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
    return meta
