"""Merge a stage's adapter into its base model, in the base's original precision, and prove it.

LoRA / QLoRA: the base is loaded unquantized in its stored dtype (QLoRA adapters are merged into
the original weights, never into 4-bit ones), the adapter is applied, logits are computed on a few
fixed samples, the adapter is merged, and the merged logits must match within a tolerance; the
max difference is recorded in merge_check.json. Full fine-tuning: the trained weights are the
merged model (copied, checked to load).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuneflow.errors import TuneflowError
from tuneflow.io import atomic_dir

TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2}
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer*", "chat_template.jinja", "special_tokens_map.json", "*.model", "vocab.*", "merges.txt")


def _samples(vocab_size, n=4, length=32, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n, length), generator=g)


def merge_adapter(settings: dict, adapter_dir, out_dir) -> dict:
    """`settings` (tuneflow.plan.Plan.merge_settings): the stage's base_model block, its finetuning
    method and the RoPE scaling it trained with (kept in the merged model)."""
    import torch
    from peft import PeftModel

    from tuneflow import models

    base_spec, finetuning = settings["base_model"], settings["finetuning"]
    task = settings.get("task", "causal_lm")  # sequence_classification: a reward model (score head, no LM head)
    adapter_dir = Path(adapter_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if finetuning == "full":
        with atomic_dir(out_dir) as tmp:
            for pattern in MODEL_FILES:
                for f in adapter_dir.glob(pattern):
                    shutil.copy2(f, tmp / f.name)
            model = models.load_causal_lm({"path": str(tmp)}, tmp, task=task)  # the copy loads (safetensors)
            check = {"method": "full fine-tuning: trained weights copied", "max_abs_diff": 0.0,
                     "parameters": sum(p.numel() for p in model.parameters())}
            (tmp / "merge_check.json").write_text(json.dumps(check, indent=2))
        return check

    base_dir = models.resolve_model_path(base_spec["path"], base_spec.get("revision"))
    # Unquantized, in the stored dtype, with the RoPE scaling the adapter was trained with.
    base = models.load_causal_lm(base_spec, base_dir, rope_scaling=settings.get("rope_scaling"), task=task).to(device)
    dtype = base.dtype
    if task == "sequence_classification":
        # The score is read at the last non-padding token: the merged model must know the padding id.
        tokenizer = models.load_tokenizer(adapter_dir, base_spec)
        base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, adapter_dir).to(device).eval()
    ids = _samples(base.config.vocab_size).to(device)
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits.float()
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=ids).logits.float()
    diff = (adapter_logits - merged_logits).abs().max().item()
    dtype_name = str(dtype).replace("torch.", "")
    tol = TOLERANCE.get(dtype_name, 1e-3) * max(1.0, adapter_logits.abs().max().item())
    check = {"method": "LoRA merged into the unquantized base", "dtype": dtype_name, "samples": list(ids.shape),
             "max_abs_diff": diff, "tolerance": tol, "base": str(base_dir), "adapter": str(adapter_dir)}
    if not diff <= tol:
        raise TuneflowError(f"merged model disagrees with adapter inference: max |logit difference| {diff:.3g} > {tol:.3g}")
    with atomic_dir(out_dir) as tmp:
        merged.to("cpu").save_pretrained(tmp)
        for pattern in ("tokenizer*", "chat_template.jinja", "special_tokens_map.json"):
            for f in adapter_dir.glob(pattern):
                shutil.copy2(f, tmp / f.name)
        (tmp / "merge_check.json").write_text(json.dumps(check, indent=2))
    return check
