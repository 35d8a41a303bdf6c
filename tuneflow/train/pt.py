"""PT recipe: continued pre-training on text, packed into fixed blocks by the tokenize rule.

Reads top to bottom: settings -> base model checks -> tokenizer -> blocks -> TRL's SFTTrainer
(language modelling on every token: the blocks carry no prompt mask) -> train (with automatic
resume) -> adapter or full weights + logs written atomically.
"""

from __future__ import annotations

import time

from tuneflow.train import common


def main(argv=None):
    started = time.time()
    args = common.parse_args(argv, __doc__.splitlines()[0])
    settings = args.settings
    spec = settings["base_model"]

    from datasets import concatenate_datasets, disable_progress_bars, load_from_disk
    from trl import SFTConfig, SFTTrainer

    from tuneflow import models

    disable_progress_bars()
    base_dir = models.resolve_model_path(spec["path"], spec.get("revision"), key="base_model.path")
    model_cfg = models.check_model_dir(base_dir, spec)
    common.check_settings_against_model(settings, base_dir, model_cfg, "pt")
    tokenizer = models.load_tokenizer(base_dir, spec)
    models.check_tokenizer_fits(tokenizer, model_cfg, base_dir)

    train_ds = concatenate_datasets([load_from_disk(f"{d}/train") for d in args.data])
    eval_parts = [load_from_disk(f"{d}/validation") for d in args.data]
    eval_ds = concatenate_datasets([p for p in eval_parts if len(p)]) if any(len(p) for p in eval_parts) else None

    pt_args = SFTConfig(
        **common.trainer_kwargs(settings, args.work_dir, has_eval=eval_ds is not None),
        max_length=settings["training"]["max_length"],
        packing=False,  # already cut into blocks of max_length
        completion_only_loss=False,
        shuffle_dataset=True,
    )
    common.setup_distributed(pt_args)
    resume_from = common.prepare_work_dir(args.work_dir, settings, [*args.data, base_dir])
    model = common.load_base_model(base_dir, spec, settings, model_cfg)
    callbacks = common.make_callbacks(settings)
    trainer = SFTTrainer(model=model, args=pt_args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=common.lora_config(settings), callbacks=list(callbacks))
    common.train(trainer, resume_from, args.work_dir, callbacks[1])
    extra = {"final_eval": trainer.evaluate()} if eval_ds is not None else {}
    common.finalize(trainer, tokenizer, settings, args, started, common.resumed_step(resume_from), extra)
