"""What the PT, SFT and DPO recipes share: arguments, model/adapter setup, checkpoint resume,
preemption handling and writing the stage's outputs atomically.

Layout of one stage run:
  results/work/<prefix><stage>/          checkpoints (kept across failed jobs; Snakemake would
      settings.json                       delete a failed job's declared outputs, so they live
      checkpoint-N/ (+ .complete marker)  here) -- removed once the outputs are complete
  results/adapters/<prefix><stage>/      the declared output, renamed into place at the end
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from tuneflow.errors import ConfigError, TuneflowError

COMPLETE_MARKER = ".complete"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal, checkpoint saved; rerun to resume"


# ----------------------------------------------------------------------------------------------
# Command line and process info


def parse_args(argv=None, description=""):
    from tuneflow.cli import json_arg

    die_with_launcher()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--settings", required=True, type=json_arg, help="the stage's settings as JSON (from the rule's params)")
    p.add_argument("--data", required=True, nargs="+", help="tokenized dataset directories")
    p.add_argument("--output", required=True, help="results/adapters/<stage> (written atomically)")
    p.add_argument("--work-dir", required=True, help="checkpoints, kept until the output is complete")
    p.add_argument("--data-manifests", nargs="*", default=[], help="manifest.json of the converted datasets (provenance)")
    return p.parse_args(argv)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def log(msg):
    if is_main():
        print(f"[tuneflow] {msg}", file=sys.stderr, flush=True)


def barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def die_with_launcher():
    """torchrun starts every rank in a session of its own, so a launcher killed with SIGKILL (a
    crashed node, `kill -9` of Snakemake's process group) would leave the ranks running on as
    orphans that could still write results later. Ask Linux to kill this rank when its parent dies."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the line above took effect
        os._exit(1)


# ----------------------------------------------------------------------------------------------
# Hardware-dependent choices


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def precision_flags(precision: str) -> dict:
    import torch

    if precision == "auto":
        precision = "bf16" if cuda_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not cuda_available():
        # CPU autocast in fp16 is not supported by the Trainer; bf16 on CPU is, but slow.
        if precision == "fp16":
            raise ConfigError("training.precision", "fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def attn_implementation(choice: str) -> str:
    if choice != "auto":
        return choice
    if cuda_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401

        return cuda_available()
    except ImportError:
        return False


# ----------------------------------------------------------------------------------------------
# Model, adapter


def load_base_model(base_dir, spec: dict, settings: dict, model_cfg: dict):
    """Load the stage's base model as configured (dtype, attention, RoPE scaling, quantization).

    Call after the TrainingArguments exist: under ZeRO-3 transformers then partitions the weights
    while loading instead of materialising the whole model on every rank.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tuneflow.models import load_model_config, torch_dtype

    training = settings["training"]
    kwargs = {
        "config": load_model_config(base_dir, spec, training.get("rope_scaling")),
        "dtype": torch_dtype(spec.get("torch_dtype", "auto"), model_cfg),
        "attn_implementation": attn_implementation(training["attn_implementation"]),
        "trust_remote_code": bool(spec.get("trust_remote_code")),
        "use_safetensors": not spec.get("allow_unsafe_weights"),
    }
    if settings["finetuning"] == "qlora":
        from transformers import BitsAndBytesConfig

        q = settings["quantization"]
        dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}
        if q["bits"] == 4:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"], bnb_4bit_use_double_quant=q["double_quant"],
                bnb_4bit_compute_dtype=dt[q["compute_dtype"]], bnb_4bit_quant_storage=dt[q["storage_dtype"]])
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if q["compute_dtype"] != "float32":
            kwargs["dtype"] = dt[q["compute_dtype"]]
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if settings["finetuning"] == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training["gradient_checkpointing"])
    return model


def check_settings_against_model(settings: dict, base_dir, model_cfg: dict, stage: str):
    """Model-dependent config checks, before any weight is loaded (the same as at planning time)."""
    from tuneflow.checks import check_stage_against_model

    check_stage_against_model(settings, stage, base_dir, model_cfg, f"stages.{stage}")


def lora_config(settings: dict):
    if settings["finetuning"] == "full":
        return None
    from peft import LoraConfig

    lora = settings["lora"]
    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["target_modules"],
        modules_to_save=lora["modules_to_save"] or None, use_rslora=lora["use_rslora"], use_dora=lora["use_dora"],
        task_type="CAUSAL_LM", bias="none")


# ----------------------------------------------------------------------------------------------
# Trainer arguments shared by every stage


def trainer_kwargs(settings: dict, work_dir, has_eval: bool) -> dict:
    from tuneflow.config import deepspeed_config_path

    t = settings["training"]
    eval_steps = t.get("eval_steps")
    kw = dict(
        output_dir=str(work_dir),
        seed=settings["seed"],
        data_seed=settings["seed"],
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler"],
        warmup_steps=t["warmup_ratio"],  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        optim=t["optim"],
        num_train_epochs=t["num_epochs"],
        max_steps=t["max_steps"],
        per_device_train_batch_size=t["per_device_batch_size"],
        per_device_eval_batch_size=t["per_device_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        activation_checkpointing=t["gradient_checkpointing"],
        logging_steps=t["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t["save_steps"],
        save_total_limit=t["save_total_limit"],
        eval_strategy="steps" if (eval_steps and has_eval) else "no",
        eval_steps=eval_steps if has_eval else None,
        report_to=["tensorboard"],
        ddp_timeout=t["ddp_timeout"],
        deepspeed=deepspeed_config_path(settings.get("deepspeed")),
        use_cpu=not cuda_available(),
        dataloader_num_workers=t["dataloader_num_workers"],
        torch_compile=t["torch_compile"],
        neftune_noise_alpha=t.get("neftune_alpha"),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        **precision_flags(t["precision"]),
    )
    if t.get("use_liger_kernel") is True or (t.get("use_liger_kernel") == "auto" and liger_available()):
        # TRL computes the loss with its own fused LM head; liger contributes the layer kernels.
        kw["use_liger_kernel"] = True
        kw["liger_kernel_config"] = {"fused_linear_cross_entropy": False, "cross_entropy": False}
    return kw


# ----------------------------------------------------------------------------------------------
# Checkpoints: find, validate, resume


def setup_distributed(training_args):
    """Initialise the process group (and DeepSpeed's) now rather than lazily inside the Trainer:
    the work-dir barrier needs it, and under ZeRO-3 from_pretrained partitions the weights across
    ranks only if DeepSpeed already knows the world size."""
    device = training_args.device
    if training_args.deepspeed:
        import deepspeed

        # On GPU transformers already did this; on CPU (use_cpu) it only set up torch.distributed,
        # which DeepSpeed then adopts.
        deepspeed.init_distributed(dist_backend="nccl" if cuda_available() else "gloo")
    return device


def inputs_fingerprint(paths) -> list:
    """(path, size, mtime) of every file under the stage's inputs (tokenized data, base model).
    Snakemake rewrites an input only when what it depends on changed, so a changed stamp means the
    checkpoints were trained on something else; hashing gigabytes of weights at start-up is avoided."""
    stamps = []
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            stamps.append([str(f), st.st_size, st.st_mtime_ns])
    return stamps


def prepare_work_dir(work_dir, settings: dict, inputs) -> str | None:
    """Return the checkpoint to resume from, or None. Checkpoints written with other settings or
    other inputs (`inputs`: the data and base model paths) are discarded."""
    work = Path(work_dir)
    fingerprint = json.dumps({"settings": settings, "inputs": inputs_fingerprint(inputs)}, sort_keys=True)
    stamp = work / "settings.json"
    if is_main():
        if stamp.exists() and stamp.read_text() != fingerprint:
            log(f"settings or inputs changed since the checkpoints in {work} were written: starting over")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        for ckpt in work.glob("checkpoint-*"):
            if not (ckpt / COMPLETE_MARKER).exists():
                log(f"removing incomplete checkpoint {ckpt} (the job stopped while saving it)")
                shutil.rmtree(ckpt, ignore_errors=True)
    barrier()
    done = [c for c in work.glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()]
    if not done:
        return None
    return str(max(done, key=lambda c: int(c.name.split("-")[-1])))


def make_callbacks(settings):
    from transformers import TrainerCallback

    class CheckpointCompleteCallback(TrainerCallback):
        """Marks a checkpoint complete once every rank has written its part."""

        def on_save(self, args, state, control, **kwargs):
            barrier()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if is_main() and ckpt.is_dir():
                (ckpt / COMPLETE_MARKER).write_text(str(time.time()))
            barrier()

    class PreemptionCallback(TrainerCallback):
        """SIGTERM / SIGUSR1 (Slurm preemption or time limit): save a checkpoint at the end of the
        current step on every rank, stop, and exit non-zero so the job is retried and resumes."""

        def __init__(self):
            self.requested = False
            self.stopped = False
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._handler)

        def _handler(self, signum, frame):
            self.requested = True

        def on_step_end(self, args, state, control, **kwargs):
            import torch
            import torch.distributed as dist

            flag = self.requested
            if dist.is_available() and dist.is_initialized():
                t = torch.tensor([1.0 if flag else 0.0], device=args.device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)  # every rank stops at the same step
                flag = bool(t.item())
            if flag:
                log(f"stop signal received: saving a checkpoint at step {state.global_step} and exiting")
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True
            return control

    return CheckpointCompleteCallback(), PreemptionCallback()


STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
                  errno.EACCES: "Permission denied", errno.EDQUOT: "Disk quota exceeded", errno.EFBIG: "File too large",
                  errno.EIO: "Input/output error"}
STORAGE_PATTERNS = [(re.compile(p, re.I), e) for p, e in (
    (r"no space left on device|os error 28", errno.ENOSPC), (r"read-only file system|os error 30", errno.EROFS),
    (r"permission denied|os error 13", errno.EACCES), (r"disk quota exceeded", errno.EDQUOT),
    (r"file write failed|failed writing", errno.EIO))]


def storage_error(exc: BaseException) -> tuple[int, str] | None:
    """(errno, description) when `exc` (or what caused it) is a failed write to disk.

    torch.save and safetensors wrap OS errors in their own exception types, so the chain and the
    messages are inspected too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc.errno, exc.strerror or STORAGE_ERRNOS[exc.errno]
        for pattern, code in STORAGE_PATTERNS:
            if pattern.search(str(exc)):
                return code, STORAGE_ERRNOS[code]
        exc = exc.__cause__ or exc.__context__
    return None


def _resume_note(work_dir) -> str:
    done = sorted((c for c in Path(work_dir).glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()),
                  key=lambda c: int(c.name.split("-")[-1]))
    return f"the last complete checkpoint {done[-1]} is intact and a rerun resumes from it" if done else \
        "no complete checkpoint exists yet"


def train(trainer, resume_from, work_dir, preemption):
    """Run trainer.train(), turning a failed write into a clear error; exit 143 when preempted."""
    if resume_from:
        log(f"resuming from {resume_from}")
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except Exception as e:
        failure = storage_error(e)
        if failure is None:
            raise
        code, what = failure
        raise TuneflowError(f"saving a checkpoint in {work_dir} failed: {what} (errno {code}); {_resume_note(work_dir)}") from None
    if preemption.stopped:
        log("checkpoint saved after a stop signal; exiting so the job can be retried")
        sys.exit(PREEMPTED_EXIT_CODE)
    return result


# ----------------------------------------------------------------------------------------------
# Outputs


def write_loss_log(log_history, out_dir):
    rows = []
    for entry in log_history:
        if "step" not in entry:
            continue
        if not any(k in entry for k in ("loss", "eval_loss")):
            continue
        rows.append({"step": entry.get("step"), "epoch": entry.get("epoch"), "loss": entry.get("loss"),
                     "learning_rate": entry.get("learning_rate"), "grad_norm": entry.get("grad_norm"),
                     "eval_loss": entry.get("eval_loss"),
                     **{k: v for k, v in entry.items() if k.startswith("rewards/") or k == "eval_rewards/accuracies"}})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(Path(out_dir) / "loss_log.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(Path(out_dir) / "loss_log.json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("tuneflow", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed",
                "tokenizers", "safetensors", "bitsandbytes", "flash-attn", "liger-kernel"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def hardware() -> dict:
    import torch

    info = {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "world_size": world_size(),
            "cuda": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def effective_setup(trainer) -> dict:
    """What the trainer and model actually ran with (as opposed to what was asked for)."""
    a, cfg = trainer.args, trainer.model.config
    return {"attn_implementation": cfg._attn_implementation, "rope_parameters": getattr(cfg, "rope_parameters", None),
            "gradient_checkpointing": a.activation_checkpointing, "neftune_noise_alpha": a.neftune_noise_alpha,
            "bf16": a.bf16, "fp16": a.fp16, "use_liger_kernel": a.use_liger_kernel, "torch_compile": a.torch_compile,
            "deepspeed": bool(a.deepspeed), "packing": getattr(a, "packing", None),
            "padding_free": getattr(a, "padding_free", None), "per_device_batch_size": a.per_device_train_batch_size,
            "gradient_accumulation_steps": a.gradient_accumulation_steps}


def finalize(trainer, tokenizer, settings, args, started, resumed_from, extra_info=None):
    """Save the adapter (or full weights) + tokenizer + logs into a temporary directory and rename it
    to the declared output; then remove the checkpoints. Every rank must call this (ZeRO-3 gathers)."""
    out = Path(args.output)
    staging = out.parent / f".{out.name}.tmp-staging"
    try:
        _write_outputs(trainer, tokenizer, settings, args, started, resumed_from, extra_info, staging, out)
    except Exception as e:
        failure = storage_error(e)
        if failure is None:
            raise
        if is_main():
            shutil.rmtree(staging, ignore_errors=True)
        code, what = failure
        raise TuneflowError(f"writing the stage's outputs to {out} failed: {what} (errno {code}); nothing was left "
                            f"there, and {_resume_note(args.work_dir)}") from None


def _write_outputs(trainer, tokenizer, settings, args, started, resumed_from, extra_info, staging: Path, out: Path):
    if is_main():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    trainer.save_model(str(staging))
    barrier()
    if is_main():
        # Nothing pickled in the outputs: the arguments are recorded as JSON in train_info.json.
        (staging / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(staging))
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        write_loss_log(trainer.state.log_history, staging)
        runs = Path(args.work_dir) / "runs"
        if runs.is_dir():
            shutil.copytree(runs, staging / "runs")
        manifests = []
        for m in args.data_manifests:
            with open(m, encoding="utf-8") as f:
                man = json.load(f)
            manifests.append({"dataset": man["dataset"], "sources": [{k: s[k] for k in ("path", "sha256")} for s in man["sources"]],
                              "counts": man["counts"]})
        info = {
            "stage": settings["stage"], "variant": settings.get("variant"), "finetuning": settings["finetuning"],
            "quantized": "4bit" if getattr(trainer.model, "is_loaded_in_4bit", False) else
                         "8bit" if getattr(trainer.model, "is_loaded_in_8bit", False) else None,
            "deepspeed": settings.get("deepspeed"), "world_size": world_size(),
            "wall_time_s": round(time.time() - started, 2),
            "train_runtime_s": next((e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e), None),
            "steps": trainer.state.global_step, "resumed_from_step": resumed_from,
            "train_tokens": getattr(trainer.state, "num_input_tokens_seen", None) or None,
            "settings": settings, "effective": effective_setup(trainer), "data": manifests, "versions": versions(),
            "hardware": hardware(),
            **(extra_info or {}),
        }
        with open(staging / "train_info.json", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, default=str)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        shutil.rmtree(args.work_dir, ignore_errors=True)
        log(f"wrote {out}")
    barrier()


def resumed_step(resume_from) -> int | None:
    return int(Path(resume_from).name.split("-")[-1]) if resume_from else None
