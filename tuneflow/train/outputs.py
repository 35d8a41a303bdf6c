"""A stage's declared output (results/adapters/<stage>): the adapter or full weights, tokenizer,
loss log, TensorBoard runs and train_info.json (settings, data, versions, hardware), written into
a staging directory that is renamed into place, after which the checkpoints are removed."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

from tuneflow.distributed import barrier, is_main, log, world_size
from tuneflow.errors import TuneflowError
from tuneflow.io import follow_umask, storage_error, write_dir_manifest
from tuneflow.provenance import hardware, peak_rss_mb, versions
from tuneflow.train.checkpoints import resume_note
from tuneflow.train.divergence import NONFINITE_KEY, check_finite_weights


TRAINING_CURVE_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "eval_loss")


def loss_log_rows(log_history) -> list[dict]:
    """One row per logged step: loss, learning rate, and what the stage's trainer logs besides
    (DPO / KTO rewards, the reward model's accuracy and margin, RL's reward, KL and completion
    length: tuneflow.stages curves). A value that is not finite is written as null and named in the
    row's `nonfinite` list, never as a number. A row whose logging window held non-finite steps
    (tuneflow.train.divergence) lists them in `nonfinite_steps`; if one had a non-finite loss, the
    row's loss is null too (the trainer logs the average of the finite ones there)."""
    flagged = {e["step"]: e[NONFINITE_KEY] for e in log_history if NONFINITE_KEY in e}
    rows, last_step = [], 0
    for entry in log_history:
        if "step" not in entry or NONFINITE_KEY in entry:
            continue
        if not any(k in entry for k in ("loss", "eval_loss")):
            continue
        row = {**{k: entry.get(k) for k in TRAINING_CURVE_KEYS},
               **{k: v for k, v in entry.items() if k not in TRAINING_CURVE_KEYS and isinstance(v, (int, float))
                  and not isinstance(v, bool) and not k.startswith(("train_", "total_flos"))}}
        nonfinite = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if "loss" in entry:
            window = sorted(s for s in flagged if last_step < s <= entry["step"])
            last_step = entry["step"]
            if window:
                row["nonfinite_steps"] = window
                if any(flagged[s].startswith("loss") for s in window):
                    nonfinite = list(dict.fromkeys(["loss", *nonfinite]))
        for k in nonfinite:
            row[k] = None
        if nonfinite:
            row["nonfinite"] = nonfinite
        rows.append(row)
    return rows


def write_loss_log(log_history, out_dir):
    rows = loss_log_rows(log_history)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(Path(out_dir) / "loss_log.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(Path(out_dir) / "loss_log.json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1, allow_nan=False)


def effective_setup(trainer) -> dict:
    """What the trainer and model actually ran with (as opposed to what was asked for)."""
    a, cfg = trainer.args, trainer.model.config
    return {"attn_implementation": cfg._attn_implementation, "rope_parameters": getattr(cfg, "rope_parameters", None),
            "gradient_checkpointing": a.activation_checkpointing,
            "gradient_checkpointing_kwargs": a.activation_checkpointing_kwargs, "warmup_steps": a.warmup_steps,
            "neftune_noise_alpha": a.neftune_noise_alpha,
            "bf16": a.bf16, "fp16": a.fp16, "use_liger_kernel": a.use_liger_kernel, "torch_compile": a.torch_compile,
            "deepspeed": bool(a.deepspeed), "packing": getattr(a, "packing", None),
            "padding_free": getattr(a, "padding_free", None), "per_device_batch_size": a.per_device_train_batch_size,
            "gradient_accumulation_steps": a.gradient_accumulation_steps}


def finalize(trainer, run, ckpt, extra_info=None):
    """Evaluate on the validation data (when there is some), save the adapter (or full weights) +
    tokenizer + logs into a temporary directory and rename it to the declared output; then remove
    the checkpoints. Every rank must call this (ZeRO-3 gathers). `run`: setup.StageRun; `ckpt`:
    checkpoints.Checkpointing."""
    check_finite_weights(trainer.model, trainer.args.device, "the trained weights")
    info = {}
    if run.eval_dataset is not None:
        info["final_eval"] = trainer.evaluate()
    info.update(extra_info or {})
    out = Path(run.args.output)
    staging = out.parent / f".{out.name}.tmp-staging"
    try:
        _write_outputs(trainer, run, ckpt, info, staging, out)
    except Exception as e:
        failure = storage_error(e)
        if failure is None:
            raise
        if is_main():
            shutil.rmtree(staging, ignore_errors=True)
        code, what = failure
        raise TuneflowError(f"writing the stage's outputs to {out} failed: {what} (errno {code}); nothing was left "
                            f"there, and {resume_note(run.args.work_dir)}") from None


def _data_provenance(manifest_paths) -> list:
    manifests = []
    for m in manifest_paths:
        with open(m, encoding="utf-8") as f:
            man = json.load(f)
        manifests.append({"dataset": man["dataset"], "sources": [{k: s[k] for k in ("path", "sha256")} for s in man["sources"]],
                          "counts": man["counts"]})
    return manifests


def _write_outputs(trainer, run, ckpt, extra_info, staging: Path, out: Path):
    args, settings = run.args, run.settings
    if is_main():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    trainer.save_model(str(staging))
    barrier()
    if is_main():
        # Nothing pickled in the outputs: the arguments are recorded as JSON in train_info.json.
        (staging / "training_args.bin").unlink(missing_ok=True)
        run.tokenizer.save_pretrained(str(staging))
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        write_loss_log(trainer.state.log_history, staging)
        runs = Path(args.work_dir) / "runs"
        if runs.is_dir():
            shutil.copytree(runs, staging / "runs")
        info = {
            "stage": settings["stage"], "variant": settings.get("variant"), "finetuning": settings["finetuning"],
            "quantized": "4bit" if getattr(trainer.model, "is_loaded_in_4bit", False) else
                         "8bit" if getattr(trainer.model, "is_loaded_in_8bit", False) else None,
            "deepspeed": settings.get("deepspeed"), "world_size": world_size(),
            "wall_time_s": round(time.time() - run.started, 2),
            "train_runtime_s": next((e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e), None),
            "steps": trainer.state.global_step, "resumed_from_step": ckpt.resumed_step,
            "train_tokens": getattr(trainer.state, "num_input_tokens_seen", None) or None,
            # embedding rows trained with (a chat template's added tokens): merge resizes the base to it
            "vocab_size": trainer.model.config.get_text_config().vocab_size,
            "settings": settings, "effective": effective_setup(trainer), "data": _data_provenance(args.data_manifests),
            "versions": versions(), "hardware": hardware(), **run.recorded,
            "peak_rss_mb": peak_rss_mb(),
            **extra_info,
        }
        with open(staging / "train_info.json", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, default=str)
        follow_umask(staging)  # safetensors writes 0600
        write_dir_manifest(staging, f"train_{settings['stage']}")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        shutil.rmtree(args.work_dir, ignore_errors=True)
        log(f"wrote {out}")
    barrier()
