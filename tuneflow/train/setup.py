"""What every stage recipe does before and around its TRL trainer: read the command line, resolve
and check the base model, load the tokenizer and the tokenized data (`prepare`), then build the
trainer arguments, the LoRA config and the model as the stage's settings say."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

from tuneflow import distributed, hardware, lora_targets, models, special_tokens
from tuneflow.deepspeed_config import deepspeed_config_path
from tuneflow.errors import ConfigError
from tuneflow.io import verify_dir
from tuneflow.stages import CAUSAL_LM, SEQUENCE_CLASSIFICATION, STAGES


@dataclass
class StageRun:
    """One training job: what the rule passed, and what was read before the trainer exists."""
    stage: str
    args: argparse.Namespace  # settings, data, output, work_dir, data_manifests
    settings: dict            # tuneflow.plan.Plan.stage_settings: the stage's block + seed, base model, template
    base_dir: str             # the base model on local disk
    model_cfg: dict           # its config.json
    tokenizer: object
    train_dataset: object
    eval_dataset: object      # None when no dataset has a validation split
    started: float
    recorded: dict = field(default_factory=dict)  # decisions taken on the way, for train_info.json
    extra_inputs: tuple = ()  # other models the training reads (an RL stage's reward models)

    @property
    def template(self) -> str | None:
        """The chat template the stage's data was tokenized with (None: PT, plain text)."""
        return self.settings["chat_template"] if STAGES[self.stage].uses_chat_template else None

    @property
    def base_spec(self) -> dict:
        return self.settings["base_model"]

    @property
    def model_task(self) -> str:
        return STAGES[self.stage].model_task

    @property
    def inputs(self) -> list:
        """What the checkpoints were trained from: the tokenized data, the base model and any other
        model the stage reads."""
        return [*self.args.data, self.base_dir, *self.extra_inputs]


def parse_args(argv=None, description=""):
    from tuneflow.cli import json_arg

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--settings", required=True, type=json_arg, help="the stage's settings as JSON (from the rule's params)")
    p.add_argument("--data", required=True, nargs="+", help="tokenized dataset directories")
    p.add_argument("--output", required=True, help="results/adapters/<stage> (written atomically)")
    p.add_argument("--work-dir", required=True, help="checkpoints, kept until the output is complete")
    p.add_argument("--data-manifests", nargs="*", default=[], help="manifest.json of the converted datasets (provenance)")
    return p.parse_args(argv)


def prepare(stage: str, argv=None, description="") -> StageRun:
    """Command line -> checked base model, tokenizer (with the chat template where the stage uses
    one), train and validation data; no weights are loaded yet."""
    started = time.time()
    distributed.die_with_launcher()
    args = parse_args(argv, description)
    settings = args.settings
    spec = settings["base_model"]

    from datasets import concatenate_datasets, disable_progress_bars, load_from_disk

    disable_progress_bars()
    base_dir = models.resolve_model_path(spec["path"], spec.get("revision"), key="base_model.path")
    if distributed.local_rank() == 0:  # once per node: every file as its rule wrote it
        for d in args.data:
            verify_dir(d)
        verify_dir(base_dir, required=False)  # a model of the workflow's (merged, embedded) has a manifest
    model_cfg = models.check_model_dir(base_dir, spec)
    models.check_stage_against_model(settings, stage, base_dir, model_cfg, f"stages.{stage}")
    template = settings["chat_template"] if STAGES[stage].uses_chat_template else None
    tokenizer = models.load_tokenizer(base_dir, spec, template)
    models.check_tokenizer_fits(tokenizer, model_cfg, base_dir)

    def rows(split):  # a split with no rows (a held_out dataset's train split) is not loaded
        parts = []
        for d in args.data:
            with open(f"{d}/meta.json", encoding="utf-8") as f:
                if json.load(f)["splits"][split].get("rows", 1):
                    parts.append(load_from_disk(f"{d}/{split}"))
        return concatenate_datasets(parts) if parts else None

    train_dataset, eval_dataset = rows("train"), rows("validation")
    run = StageRun(stage, args, settings, base_dir, model_cfg, tokenizer, train_dataset, eval_dataset, started)
    run.recorded["special_tokens"] = special_tokens.describe(tokenizer)
    run.recorded["tokenized"] = list(args.data)
    return run


def pretokenized_sft_data(run: StageRun, seed: int, packing: bool) -> dict:
    """SFTConfig keywords for data the tokenize rule made trainer-ready (PT blocks, SFT rows).

    SFTTrainer would otherwise map the whole dataset at start (labels, truncation, a filter: no-ops
    on these rows, each a full copy written next to the data in results/tokenized) and then shuffle
    it. Only the shuffle is kept, the same permutation, its index held in memory; the rows stay
    memory-mapped. Packing does need TRL's preparation (it builds the packed rows)."""
    if packing:
        return {}
    run.train_dataset = run.train_dataset.shuffle(seed=seed, keep_in_memory=True)
    if run.eval_dataset is not None:
        run.eval_dataset = run.eval_dataset.shuffle(seed=seed, keep_in_memory=True)
    return {"dataset_kwargs": {"skip_prepare_dataset": True}}


def precision_flags(precision: str) -> dict:
    import torch

    if precision == "auto":
        precision = "bf16" if hardware.cuda_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not hardware.cuda_available():
        # CPU autocast in fp16 is not supported by the Trainer; bf16 on CPU is, but slow.
        raise ConfigError("training.precision", "fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def trainer_kwargs(run: StageRun) -> dict:
    """transformers TrainingArguments shared by every stage (TRL's configs extend them)."""
    settings, t = run.settings, run.settings["training"]
    has_eval = run.eval_dataset is not None
    eval_steps = t.get("eval_steps")
    kw = dict(
        output_dir=str(run.args.work_dir),
        seed=settings["seed"],
        data_seed=settings["seed"],
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler"],
        # a float in [0, 1) is a ratio of the total steps, an int a number of steps
        warmup_steps=t["warmup_steps"] if t.get("warmup_steps") is not None else t["warmup_ratio"],
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        optim=t["optim"],
        num_train_epochs=t["num_epochs"],
        max_steps=t["max_steps"],
        per_device_train_batch_size=t["per_device_batch_size"],
        per_device_eval_batch_size=t["per_device_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        activation_checkpointing=t["gradient_checkpointing"],
        activation_checkpointing_kwargs=({"use_reentrant": t["use_reentrant"]} if t.get("use_reentrant") is not None
                                         else None),
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
        use_cpu=not hardware.cuda_available(),
        dataloader_num_workers=t["dataloader_num_workers"],
        torch_compile=t["torch_compile"],
        neftune_noise_alpha=t.get("neftune_alpha"),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        **precision_flags(t["precision"]),
    )
    if t.get("use_liger_kernel") is True or (t.get("use_liger_kernel") == "auto" and hardware.liger_available()):
        # TRL computes the loss with its own fused LM head; liger contributes the layer kernels.
        kw["use_liger_kernel"] = True
        kw["liger_kernel_config"] = {"fused_linear_cross_entropy": False, "cross_entropy": False}
    return kw


PEFT_TASK_TYPES = {CAUSAL_LM: "CAUSAL_LM", SEQUENCE_CLASSIFICATION: "SEQ_CLS"}  # SEQ_CLS also trains the score head


def lora_config(settings: dict, model, where: str, task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig from `stages.<stage>.lora` for `model` (None for full fine-tuning) and
    what it targets (tuneflow.lora_targets: all-linear without the output layer and MoE routers).
    A tied model whose embeddings are trained keeps them tied (peft's ensure_weight_tying), so the
    merged model is saved tied and means what was trained."""
    if settings["finetuning"] == "full":
        return None, None
    from peft import LoraConfig

    lora = settings["lora"]
    inv = lora_targets.inventory(model)
    targets = lora_targets.resolve(lora, inv, where, f"stages.{settings['stage']}.lora")
    tie = inv.tied_embeddings and lora_targets.embeddings_adapted(lora, targets, inv)
    config = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=targets["target_modules"],
        target_parameters=targets["target_parameters"] or None, modules_to_save=lora["modules_to_save"] or None,
        use_rslora=lora["use_rslora"], use_dora=lora["use_dora"], task_type=task_type, bias="none",
        ensure_weight_tying=tie)
    return config, {**targets, "tied_embeddings": inv.tied_embeddings, "ensure_weight_tying": tie}


def trainer_inputs(run: StageRun, ckpt) -> dict:
    """The keyword arguments every TRL trainer of a stage takes besides its config: the model
    (loaded now, after the trainer's arguments exist), data, tokenizer, LoRA config and the
    checkpoint callbacks (`ckpt`: checkpoints.Checkpointing)."""
    model = load_model(run)
    peft_config, targets = lora_config(run.settings, model, run.base_dir, PEFT_TASK_TYPES[run.model_task])
    if targets:
        run.recorded["lora_targets"] = targets
    return {"model": model, "train_dataset": run.train_dataset, "eval_dataset": run.eval_dataset,
            "processing_class": run.tokenizer, "peft_config": peft_config, "callbacks": ckpt.callbacks}


def load_model(run: StageRun):
    """The stage's base model as configured (dtype, attention, RoPE scaling, quantization).

    Call after the TrainingArguments exist: under ZeRO-3 transformers then partitions the weights
    while loading instead of materialising the whole model on every rank.
    """
    from transformers import set_seed

    settings, training = run.settings, run.settings["training"]
    qlora = settings["finetuning"] == "qlora"
    set_seed(settings["seed"])  # a new head (the reward model's score) starts from the same weights every run
    model = models.load_causal_lm(run.base_spec, run.base_dir, rope_scaling=training.get("rope_scaling"),
                                  quantization=settings["quantization"] if qlora else None,
                                  attn_implementation=hardware.attn_implementation(training["attn_implementation"]),
                                  task=run.model_task)
    # Rows for the tokens the chat template added (chatml's <|im_start|>, ...).
    models.fit_embeddings(model, run.tokenizer, run.template)
    if run.model_task == SEQUENCE_CLASSIFICATION:
        model.config.pad_token_id = run.tokenizer.pad_token_id  # the score is read at the last non-padding token
    if qlora:
        from peft import prepare_model_for_kbit_training

        reentrant = training.get("use_reentrant")
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": reentrant} if reentrant is not None else None)
    return model
