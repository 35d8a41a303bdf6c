"""Evaluate one model on one dataset's validation split (the `evaluate` rule).

Runs under torchrun like training (records are sharded across ranks and gathered on rank 0):
  text             eval loss and perplexity over the documents
  alpaca/sharegpt  eval loss on the assistant's tokens; batched greedy generation (left padding,
                   KV cache, max_new_tokens from config) scored with ROUGE-1/2/L, BLEU-4, exact match
  promptcblue      all of the above plus the official PromptCBLUE scoring rules per task
  preference       log-prob accuracy (chosen more likely than rejected); for a DPO / KTO model also
                   the implicit-reward accuracy and mean reward margin against its reference model;
                   for a reward model (no LM head) its scores: held-out pairwise accuracy (chosen
                   scored above rejected) and mean margin (chosen minus rejected score)
With `rewards` (the models an RL stage is compared with): the RL stage's reward (tuneflow.rewards)
of every generated answer on the RL prompts' held-out records: mean_reward and one mean per term.
Predictions (with their prompt) are written as JSONL next to the scores.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

from tuneflow import distributed, hardware

# Rank 0 scores and writes every dataset while the others wait at a barrier, and shards are
# uneven: far longer than the 10-minute default of the process group.
DIST_TIMEOUT_S = 7200
# At most this many logits (batch x length x vocab) per forward pass when scoring, so a 150k
# vocabulary and long samples do not multiply into tens of GB.
LOGIT_BUDGET = 2**27


def load_model(spec, device, task="causal_lm"):
    from tuneflow import models
    from tuneflow.io import verify_dir

    model_dir = models.resolve_model_path(spec["path"], spec.get("revision"))
    if distributed.local_rank() == 0:
        verify_dir(model_dir, required=False)  # a model of the workflow's (merged, embedded) has a manifest
    return models.load_causal_lm(spec, model_dir, task=task).to(device).eval(), model_dir


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _scoring_batches(rows, batch_size, vocab):
    """Consecutive batches of at most batch_size rows and about LOGIT_BUDGET logits."""
    batch, width = [], 0
    for row in rows:
        w = max(width, len(row[0]))
        if batch and (len(batch) == batch_size or (len(batch) + 1) * w * vocab > LOGIT_BUDGET):
            yield batch
            batch, w = [], len(row[0])
        batch.append(row)
        width = w
    if batch:
        yield batch


def sequence_logps(model, tokenizer, rows, batch_size, device):
    """For (input_ids, labels) rows (-100 = not scored): summed log-prob of the scored tokens and
    their count. Right padding; labels are predicted from the previous position. Logits are
    upcast to float32 one row at a time."""
    import torch
    import torch.nn.functional as F

    out = []
    pad = tokenizer.pad_token_id
    for batch in _scoring_batches(rows, batch_size, model.config.get_text_config().vocab_size):
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (seq, lab) in enumerate(batch):
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
            labels[i, :len(lab)] = torch.tensor(lab)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            for i in range(len(batch)):
                tgt = labels[i, 1:]
                nll = F.cross_entropy(logits[i, :-1].float(), tgt, ignore_index=-100, reduction="sum")
                out.append((-nll.item(), int((tgt != -100).sum().item())))
        del logits
    return out


def completion_row(prompt_ids, completion_ids):
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + list(completion_ids)


# A reasoning block the model writes before its answer (Qwen3: "<think>\n\n</think>\n\n") is not
# part of the answer scored against the reference.
THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)


def generate(model, tokenizer, prompts, settings, device):
    """Answers to `prompts` (token ids: tuneflow.templates.prompt_ids, the trained rows up to the
    answer), left-padded into batches; generation stops at EOS or the template's end-of-turn token."""
    import torch

    from tuneflow.templates import stop_token_ids

    stops, pad = stop_token_ids(tokenizer), tokenizer.pad_token_id
    results = []
    for batch in _batches(prompts, settings["batch_size"]):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in batch], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], dtype=torch.long, device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings["max_new_tokens"],
                                 do_sample=settings["do_sample"],
                                 temperature=settings["temperature"] if settings["do_sample"] else None,
                                 top_p=None, top_k=None, eos_token_id=stops, pad_token_id=pad, use_cache=True)
        for row in out[:, width:]:
            new = row.tolist()
            cut = next((i for i, t in enumerate(new) if t in stops), len(new))
            results.append(THINK_BLOCK.sub("", tokenizer.decode(new[:cut], skip_special_tokens=True)).strip())
    return results


def preference_metrics(pairs, beta=None) -> dict:
    """pairs: summed log-probs of each pair's chosen / rejected response under the model (and, for
    a DPO model, under its reference). logp_accuracy: chosen more likely than rejected. With a
    reference, DPO's implicit reward beta * (logp - ref_logp): preference_accuracy (chosen rewarded
    more) and the mean reward margin (chosen minus rejected)."""
    out = {"logp_accuracy": 100.0 * sum(e["chosen"] > e["rejected"] for e in pairs) / len(pairs)}
    if "ref_chosen" in pairs[0]:
        margins = [beta * ((e["chosen"] - e["ref_chosen"]) - (e["rejected"] - e["ref_rejected"])) for e in pairs]
        out["preference_accuracy"] = 100.0 * sum(m > 0 for m in margins) / len(margins)
        out["reward_margin"] = sum(margins) / len(margins)
    return out


def pairwise_metrics(pairs) -> dict:
    """pairs: a reward model's scores of each pair's chosen / rejected conversation."""
    margins = [e["chosen"] - e["rejected"] for e in pairs]
    return {"pairwise_accuracy": 100.0 * sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins)}


def reward_metrics(scores: dict) -> dict:
    """scores: tuneflow.rewards.score() of the answers -> mean_reward and a mean per term."""
    from tuneflow.rewards import mean

    out = {"mean_reward": mean(scores["total"])}
    out.update({f"reward/{name}": mean(values) for name, values in scores["terms"].items()})
    return {k: v for k, v in out.items() if v is not None}


def evaluate_dataset(model, tokenizer, ref_model, settings, name, fmt, data_dir, rank, world, device, reward_terms=None):
    """Evaluate one dataset's validation split; returns the result on rank 0 (None elsewhere)."""
    from tuneflow.io import read_jsonl
    from tuneflow.templates import Settings, prompt_ids
    from tuneflow.tokenize import sft_row, tokenize_dpo

    started = time.time()
    records = read_jsonl(Path(data_dir) / "validation.jsonl")[: settings["max_samples"]]
    shard = list(enumerate(records))[rank::world]
    result = {"dataset": name, "format": fmt, "n": len(records), "metrics": {}}
    template = Settings.from_config(settings.get("chat_template", "tokenizer"), settings.get("template"))
    local = {"loss_sum": 0.0, "tokens": 0, "predictions": [], "pref": [], "scores": []}
    bs = settings["batch_size"]

    if settings.get("model_task", "causal_lm") != "causal_lm":
        if fmt == "preference":  # a reward model: score both whole conversations of each pair
            from tuneflow.rewards import reward_model_scores

            prompts = [r["messages"] for _, r in shard for _ in (0, 1)]
            answers = [resp for _, r in shard for resp in (r["chosen"], r["rejected"])]
            scores = reward_model_scores(model, tokenizer, prompts, answers, bs, device)
            local["scores"] = [{"chosen": scores[2 * j], "rejected": scores[2 * j + 1]} for j in range(len(shard))]
    elif fmt == "text":
        limit = getattr(model.config, "max_position_embeddings", 2048)
        rows = []
        for _, r in shard:
            ids = tokenizer(r["text"], add_special_tokens=False)["input_ids"][:limit]
            rows.append((ids, ids))
        for lp, n in sequence_logps(model, tokenizer, rows, bs, device):
            local["loss_sum"] -= lp
            local["tokens"] += n
    elif fmt in ("alpaca", "sharegpt", "promptcblue"):
        # Teacher-forced loss on the answers' tokens (all turns), tokenized exactly as SFT trains them.
        limit = getattr(model.config, "max_position_embeddings", 2048)
        row_settings = {"chat_template": settings["chat_template"], "template": settings.get("template"),
                        "max_length": limit, "mask_prompt": True}
        rows = [row for row, _ in (sft_row(tokenizer, r["messages"], row_settings) for _, r in shard) if row]
        for lp, n in sequence_logps(model, tokenizer, rows, bs, device):
            local["loss_sum"] -= lp
            local["tokens"] += n
        # Generation for the last assistant turn: the trained row up to that answer.
        prompts = [prompt_ids(tokenizer, r["messages"], template) for _, r in shard]
        outputs = generate(model, tokenizer, prompts, settings, device)
        local["predictions"] = [{"index": i, "id": r["id"], "prompt": r["messages"][:-1], "prediction": o,
                                 "reference": r["messages"][-1]["content"], **({"meta": r["meta"]} if "meta" in r else {})}
                                for (i, r), o in zip(shard, outputs)]
    elif fmt == "preference":
        pair_settings = {"chat_template": settings["chat_template"], "template": settings.get("template"),
                         "max_length": 2**31}
        dpo_rows, _ = tokenize_dpo([r for _, r in shard], tokenizer, pair_settings)
        pairs = []
        for row in dpo_rows:
            pairs += [completion_row(row["prompt_ids"], row["chosen_ids"]), completion_row(row["prompt_ids"], row["rejected_ids"])]
        logps = [lp for lp, _ in sequence_logps(model, tokenizer, pairs, bs, device)]
        ref = [lp for lp, _ in sequence_logps(ref_model, tokenizer, pairs, bs, device)] if ref_model is not None else None
        for j in range(len(dpo_rows)):
            entry = {"chosen": logps[2 * j], "rejected": logps[2 * j + 1]}
            if ref is not None:
                entry.update(ref_chosen=ref[2 * j], ref_rejected=ref[2 * j + 1])
            local["pref"].append(entry)

    gathered = distributed.gather(local)
    if rank != 0:
        return None, None
    loss_sum = sum(g["loss_sum"] for g in gathered)
    tokens = sum(g["tokens"] for g in gathered)
    if tokens:
        result["metrics"]["eval_loss"] = loss_sum / tokens
        result["metrics"]["perplexity"] = math.exp(min(loss_sum / tokens, 50))
    predictions = sorted((p for g in gathered for p in g["predictions"]), key=lambda p: p["index"])
    if predictions:
        from tuneflow.eval.text_metrics import instruction_metrics

        text_scores = instruction_metrics([p["prediction"] for p in predictions], [p["reference"] for p in predictions])
        text_scores.pop("n", None)
        result["metrics"].update(text_scores)
    if fmt == "promptcblue" and predictions:
        from tuneflow.eval import promptcblue

        golds = [{**r["meta"], "input": r["messages"][-2]["content"], "target": r["messages"][-1]["content"]}
                 for r in records]
        # Predictions in gold order (sample_ids may repeat in real PromptCBLUE-style data).
        scores = promptcblue.score([p["prediction"] for p in predictions], golds)
        result["promptcblue"] = scores
        result["metrics"]["promptcblue_overall"] = scores["overall"]
    pref = [e for g in gathered for e in g["pref"]]
    if pref:
        result["metrics"].update(preference_metrics(pref, settings.get("beta")))
    pair_scores = [e for g in gathered for e in g["scores"]]
    if pair_scores:
        result["metrics"].update(pairwise_metrics(pair_scores))
    if reward_terms and predictions:
        from tuneflow import rewards

        scored = rewards.score(reward_terms, [p["prompt"] for p in predictions], [p["prediction"] for p in predictions],
                               [p["reference"] for p in predictions],
                               [json.dumps({"id": p["id"], "dataset": name, **p.get("meta", {})}, ensure_ascii=False)
                                for p in predictions])
        result["metrics"].update(reward_metrics(scored))
        for p, total in zip(predictions, scored["total"]):
            p["reward"] = total
    result["wall_time_s"] = round(time.time() - started, 2)
    return result, predictions


def evaluate(settings: dict, data_dirs: dict, out_dir):
    """Evaluate one model on every dataset in settings["datasets"]; writes out_dir atomically."""
    import torch

    from tuneflow import models
    from tuneflow.io import atomic_dir, verify_dir
    from tuneflow.provenance import peak_rss_mb

    distributed.die_with_launcher()
    if distributed.local_rank() == 0:  # every file as its rule wrote it
        for data_dir in data_dirs.values():
            verify_dir(data_dir)
    rank, world = distributed.start(DIST_TIMEOUT_S)
    torch.manual_seed(settings["seed"])
    device = hardware.device()
    model, model_dir = load_model(settings["model"], device, settings.get("model_task", "causal_lm"))
    tokenizer = models.load_tokenizer(model_dir, settings["model"], settings.get("chat_template"))
    models.fit_embeddings(model, tokenizer, settings.get("chat_template"))
    ref_model = load_model(settings["reference"], device)[0] if settings.get("reference") else None
    if ref_model is not None:
        models.fit_embeddings(ref_model, tokenizer, settings.get("chat_template"))
    rewards = settings.get("rewards") or {}
    terms = None
    if rewards and rank == 0:  # the answers are scored on rank 0, once gathered
        from tuneflow.rewards import build_terms

        terms = build_terms(rewards["terms"], settings["chat_template"], "stages.rl.rewards", device=device)
    results = {}
    for name, fmt in settings["datasets"].items():
        res, preds = evaluate_dataset(model, tokenizer, ref_model, settings, name, fmt, data_dirs[name], rank, world,
                                      device, terms if name in rewards.get("datasets", ()) else None)
        if rank == 0:
            res.update({"model_dir": str(model_dir), "world_size": world, "peak_rss_mb": peak_rss_mb()})
            results[name] = (res, preds)
            print(f"[tuneflow] {name}: {json.dumps(res['metrics'])}", file=sys.stderr, flush=True)
    if rank == 0:
        with atomic_dir(out_dir, rule="evaluate") as tmp:
            for name, (res, preds) in results.items():
                with open(tmp / f"{name}.json", "w", encoding="utf-8") as f:
                    json.dump({**res, "settings": settings}, f, indent=2, ensure_ascii=False)
                with open(tmp / f"{name}.predictions.jsonl", "w", encoding="utf-8") as f:
                    for p in preds or []:
                        f.write(json.dumps({k: v for k, v in p.items() if k != "index"}, ensure_ascii=False) + "\n")
    distributed.barrier()
    return results
