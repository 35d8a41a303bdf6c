"""The reward of online RL (the rl stage), shared by its training job and by the evaluation of the
models it is compared with, so that "mean reward" means the same thing in both.

A reward is a weighted sum of terms (`stages.rl.rewards`, as tuneflow.plan.Plan.rewards resolves
them: a reward model named by its stage is that stage's merged directory):
  reward_model  a sequence-classification model with one output; the conversation (prompt +
                completion) is rendered with the reward model's OWN tokenizer and chat template
                (TRL's reward_processing_classes), so its tokenizer may differ from the policy's
  verifiable    promptcblue: the official PromptCBLUE metric of the record's task (tuneflow.eval.
                promptcblue) on this one answer, 0-1 (an extraction record with nothing to extract
                scores 1 when nothing is extracted); None (no reward) for a record of another
                dataset. exact_match: 1.0 when the stripped answer equals the reference, else 0.0
  function      module.function under the project directory (your code: trust_reward_code)
Every term is called as TRL's GRPO / RLOO trainers call reward functions:
  f(prompts=[messages], completions=[[{"role": "assistant", "content"}]] or [str], reference=[str],
    meta=[JSON str], **more) -> [float | None]
A term with `datasets` scores only the prompts of those datasets (None for the others). A term
that returns None for a completion is left out of its sum; a completion no term scores has no
reward (TRL: NaN, no advantage; here: not counted in the mean). A reward model is called like the
other terms (its own tokenizer and template, as TRL's reward_processing_classes would), one copy
per rank: it is not partitioned under ZeRO-3.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys

from tuneflow import models
from tuneflow.errors import ModelError
from tuneflow.stages import SEQUENCE_CLASSIFICATION


def completion_text(completion) -> str:
    """The answer of a completion as TRL passes it: a string, or a list of messages."""
    if isinstance(completion, str):
        return completion.strip()
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant").strip()


def exact_match(prompts, completions, reference, **_):
    return [1.0 if completion_text(c) == r.strip() else 0.0 for c, r in zip(completions, reference)]


def promptcblue(prompts, completions, reference, meta, **_):
    from tuneflow.eval import promptcblue as scorer

    out = []
    for c, r, m in zip(completions, reference, meta):
        m = json.loads(m) if isinstance(m, str) else (m or {})
        if m.get("task_dataset") not in scorer.TASKS:
            out.append(None)  # not a PromptCBLUE record: this term does not apply
            continue
        text, task, choices = completion_text(c), m["task_dataset"], m.get("answer_choices")
        if scorer.TASKS[task] == scorer.EXTRACTION and not scorer.parse_answer(task, r, choices) \
                and not scorer.parse_answer(task, text, choices):
            out.append(1.0)  # nothing to extract, nothing extracted: no error (micro F1 of one record would say 0)
            continue
        out.append(scorer.score([text], [{**m, "target": r}])["overall"] / 100.0)
    return out


VERIFIABLE = {"promptcblue": promptcblue, "exact_match": exact_match}


def load_function(dotted: str, key: str):
    """module.function from the project directory (the working directory of the job)."""
    module, _, name = dotted.rpartition(".")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"config key '{key}': cannot load the reward function '{dotted}': {e}") from None
    if not callable(fn):
        raise ModelError(f"config key '{key}': '{dotted}' is not a function")
    return fn


def load_reward_model(path: str, chat_template: str, key: str):
    """The reward model at `path` and its own tokenizer, checked: one output (a score head), and a
    chat template to render conversations with (its own, else the configured built-in one)."""
    from tuneflow.templates import BUILTIN

    spec = {"path": path, "revision": None, "trust_remote_code": False, "allow_unsafe_weights": False,
            "torch_dtype": "auto"}
    model_dir = models.resolve_model_path(path, key=key)
    cfg = models.check_model_dir(model_dir, spec, key=key)
    models.check_reward_model_config(cfg, path, key)
    tokenizer = models.load_tokenizer(model_dir, spec)
    if not getattr(tokenizer, "chat_template", None):
        if chat_template not in BUILTIN:
            raise ModelError(f"config key '{key}': the tokenizer of the reward model at {path} has no chat template "
                             f"and chat_template is 'tokenizer'; set chat_template to a built-in template "
                             f"({', '.join(BUILTIN)}) to score conversations with it")
        tokenizer = models.load_tokenizer(model_dir, spec, chat_template)
        tokenizer.tuneflow_template = chat_template  # conversations go through tuneflow.templates
    model = models.load_causal_lm(spec, model_dir, task=SEQUENCE_CLASSIFICATION).eval()
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-padding token
    return model, tokenizer


def term_name(term: dict) -> str:
    """How a term is named in logs and metrics (a reward model after its directory)."""
    if "reward_model" in term:
        return os.path.basename(os.path.normpath(term["reward_model"]))
    return term.get("verifiable") or term["function"].rsplit(".", 1)[1]


def reward_model_scores(model, tokenizer, prompts, completions, batch_size=16, device="cpu") -> list[float]:
    """Scores of (prompt messages, answer) pairs, computed as TRL's trainers compute a reward
    model's: the whole conversation rendered with the reward model's own chat template, tokenized
    with its own tokenizer, right-padded, the output at the last non-padding token."""
    import torch

    rows = [_conversation_ids(tokenizer, list(p) + [{"role": "assistant", "content": completion_text(c)}])
            for p, c in zip(prompts, completions)]
    scores = []
    for i in range(0, len(rows), batch_size):
        enc = tokenizer.pad({"input_ids": rows[i:i + batch_size]}, padding=True, padding_side="right",
                            return_tensors="pt").to(device)
        with torch.inference_mode():
            scores += model(**enc).logits[:, 0].float().tolist()
    return scores


def _conversation_ids(tokenizer, messages) -> list[int]:
    """A conversation's ids: with the tokenizer's own chat template, as TRL renders it; with a
    built-in one (a reward model whose tokenizer has none), through tuneflow.templates."""
    template = getattr(tokenizer, "tuneflow_template", None)
    if template is None:
        return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    from tuneflow.templates import Settings, encode

    return encode(tokenizer, messages, Settings(name=template)).input_ids


class Term:
    """One weighted reward term, callable as a TRL reward function; the same object scores the
    RL stage's completions during training and the evaluated models' answers."""

    def __init__(self, name: str, weight: float, func=None, model=None, tokenizer=None, datasets=None, device="cpu"):
        self.__name__ = self.name = name  # TRL logs rewards/<__name__>/mean
        self.weight, self.func, self.model, self.tokenizer, self.device = weight, func, model, tokenizer, device
        self.datasets = set(datasets) if datasets else None

    def __call__(self, prompts, completions, reference=None, meta=None, **kwargs):
        n = len(completions)
        reference = reference if reference is not None else [""] * n
        meta = meta if meta is not None else ["{}"] * n
        metas = [json.loads(m) if isinstance(m, str) else (m or {}) for m in meta]
        applies = [self.datasets is None or m.get("dataset") in self.datasets for m in metas]
        idx = [i for i in range(n) if applies[i]]
        out = [None] * n
        if not idx:
            return out
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        if self.model is not None:
            values = reward_model_scores(self.model, self.tokenizer, pick(prompts), pick(completions), device=self.device)
        else:
            values = self.func(prompts=pick(prompts), completions=pick(completions), reference=pick(reference),
                               meta=pick(meta), **kwargs)
        for i, v in zip(idx, values):
            out[i] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        return out


def build_terms(terms: list[dict], chat_template: str, key: str, device="cpu") -> list[Term]:
    """`terms`: the resolved reward list (tuneflow.plan.Plan.rewards). A reward model is loaded
    once, onto `device`, and kept out of the optimizer (inference only)."""
    out = []
    for i, t in enumerate(terms):
        where = f"{key}[{i}]"
        common = {"name": term_name(t), "weight": t["weight"], "datasets": t.get("datasets"), "device": device}
        if "reward_model" in t:
            model, tok = load_reward_model(t["reward_model"], chat_template, f"{where}.reward_model")
            out.append(Term(model=model.to(device).requires_grad_(False), tokenizer=tok, **common))
        elif "verifiable" in t:
            out.append(Term(func=VERIFIABLE[t["verifiable"]], **common))
        else:
            out.append(Term(func=load_function(t["function"], f"{where}.function"), **common))
    return out


def score(terms: list[Term], prompts, completions, reference, meta) -> dict:
    """Every term on every completion, and the weighted total as the trainers form it: the sum
    over the terms that apply (None where none does)."""
    per_term = {t.name: t(prompts=prompts, completions=completions, reference=reference, meta=meta) for t in terms}
    totals = []
    for j in range(len(completions)):
        parts = [(t.weight, per_term[t.name][j]) for t in terms if per_term[t.name][j] is not None]
        totals.append(sum(w * v for w, v in parts) if parts else None)
    return {"terms": per_term, "total": totals}


def mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
