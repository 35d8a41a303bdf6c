"""Merge a stage's adapter into its base model, in the base's original precision, and prove it.

LoRA / QLoRA: the base is loaded unquantized in its stored dtype (QLoRA adapters are merged into
the original weights, never into 4-bit ones), the adapter is applied, logits are computed on a few
fixed samples, the adapter is merged, and the merged logits must match within a tolerance; the
max difference is recorded in merge_check.json. Full fine-tuning: the trained weights are the
merged model (copied, checked to load). Either way weights holding NaN or inf are refused, and a
full or read-only disk while writing is an error naming the output that leaves nothing there.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from tuneflow.errors import TuneflowError
from tuneflow.io import atomic_dir, storage_error, verify_dir

TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2}
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer*", "chat_template.jinja", "special_tokens_map.json", "*.model", "vocab.*", "merges.txt")


def _samples(vocab_size, n=4, length=32, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n, length), generator=g)


def check_finite(model, what):
    import torch

    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TuneflowError(f"{what} holds non-finite values (NaN / inf) in {len(bad)} of "
                            f"{sum(1 for _ in model.parameters())} tensors, e.g. {bad[0]}: refusing to merge a "
                            "diverged model; retrain the stage with a lower learning rate")


@contextlib.contextmanager
def _writing(out_dir):
    """atomic_dir, with a full / read-only disk reported as such (nothing is left at out_dir)."""
    try:
        with atomic_dir(out_dir, rule="merge") as tmp:
            yield tmp
    except Exception as e:
        failure = storage_error(e)
        if failure is None:
            raise
        code, what = failure
        raise TuneflowError(f"writing the merged model to {out_dir} failed: {what} (errno {code}); nothing was "
                            "left there; free space and rerun") from None


def merge_adapter(settings: dict, adapter_dir, out_dir) -> dict:
    """`settings` (tuneflow.plan.Plan.merge_settings): the stage's base_model block, its finetuning
    method and the RoPE scaling it trained with (kept in the merged model)."""
    import torch
    from peft import PeftModel

    from tuneflow import models

    base_spec, finetuning = settings["base_model"], settings["finetuning"]
    task = settings.get("task", "causal_lm")  # sequence_classification: a reward model (score head, no LM head)
    adapter_dir = Path(adapter_dir)
    verify_dir(adapter_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if finetuning == "full":
        with _writing(out_dir) as tmp:
            for pattern in MODEL_FILES:
                for f in adapter_dir.glob(pattern):
                    shutil.copy2(f, tmp / f.name)
            model = models.load_causal_lm({"path": str(tmp)}, tmp, task=task)  # the copy loads (safetensors)
            check_finite(model, f"the trained model {adapter_dir}")
            check = {"method": "full fine-tuning: trained weights copied", "max_abs_diff": 0.0,
                     "parameters": sum(p.numel() for p in model.parameters())}
            (tmp / "merge_check.json").write_text(json.dumps(check, indent=2))
        return check

    base_dir = models.resolve_model_path(base_spec["path"], base_spec.get("revision"))
    verify_dir(base_dir, required=False)  # a model of the workflow's (merged, embedded) has a manifest
    # Unquantized, in the stored dtype, with the RoPE scaling the adapter was trained with.
    base = models.load_causal_lm(base_spec, base_dir, rope_scaling=settings.get("rope_scaling"), task=task).to(device)
    # Tokens a chat template added during training: the same rows, drawn the same way, before the
    # adapter (and any embeddings it trained in full) is applied.
    info = adapter_dir / "train_info.json"
    if info.is_file():
        models.resize_embeddings(base, json.loads(info.read_text()).get("vocab_size") or 0)
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
        check_finite(merged, f"{adapter_dir} merged into its base")
        merged_logits = merged(input_ids=ids).logits.float()
    diff = (adapter_logits - merged_logits).abs().max().item()
    dtype_name = str(dtype).replace("torch.", "")
    tol = TOLERANCE.get(dtype_name, 1e-3) * max(1.0, adapter_logits.abs().max().item())
    check = {"method": "LoRA merged into the unquantized base", "dtype": dtype_name, "samples": list(ids.shape),
             "max_abs_diff": diff, "tolerance": tol, "base": str(base_dir), "adapter": str(adapter_dir)}
    if not diff <= tol:
        raise TuneflowError(f"merged model disagrees with adapter inference: max |logit difference| {diff:.3g} > {tol:.3g}")
    with _writing(out_dir) as tmp:
        merged.to("cpu").save_pretrained(tmp)
        del model, merged, base
        for pattern in ("tokenizer*", "chat_template.jinja", "special_tokens_map.json"):
            for f in adapter_dir.glob(pattern):
                shutil.copy2(f, tmp / f.name)
        # What is on disk is what users load: reload it and compare again. This catches what
        # saving loses, e.g. a trained lm_head of a model whose config ties it to the embeddings
        # (only one of the two is saved and the other is re-tied on load).
        saved = models.load_causal_lm({**base_spec, "path": str(tmp)}, tmp, task=task).to(device).eval()
        with torch.no_grad():
            saved_diff = (adapter_logits - saved(input_ids=ids).logits.float()).abs().max().item()
        check.update(saved_max_abs_diff=saved_diff, max_abs_diff=max(diff, saved_diff),
                     tied_embeddings=_tied(saved))
        if not saved_diff <= tol:
            raise TuneflowError(f"the merged model as saved disagrees with adapter inference: max |logit difference| "
                                f"{saved_diff:.3g} > {tol:.3g} after reloading it from disk")
        (tmp / "merge_check.json").write_text(json.dumps(check, indent=2))
    return check


def _tied(model) -> bool | None:
    """Whether the output layer shares the input embeddings' weights (None: the config does not tie)."""
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return None
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight.data_ptr() == emb.weight.data_ptr()
