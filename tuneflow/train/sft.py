"""SFT recipe: instruction tuning with TRL's SFTTrainer on pre-tokenized conversations.

Reads top to bottom: settings -> base model checks -> tokenizer -> data -> trainer -> train (with
automatic resume) -> adapter + logs written atomically. Prompt tokens were masked (label -100) by
the tokenize rule when mask_prompt is on; with packing, TRL packs samples padding-free and
position ids restart per sample, so packed samples never attend to each other.
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
    common.check_settings_against_model(settings, base_dir, model_cfg, "sft")
    tokenizer = models.load_tokenizer(base_dir, spec, settings["chat_template"])
    models.check_tokenizer_fits(tokenizer, model_cfg, base_dir)

    train_ds = concatenate_datasets([load_from_disk(f"{d}/train") for d in args.data])
    eval_parts = [load_from_disk(f"{d}/validation") for d in args.data]
    eval_ds = concatenate_datasets([p for p in eval_parts if len(p)]) if any(len(p) for p in eval_parts) else None

    t = settings["training"]
    sft_args = SFTConfig(
        **common.trainer_kwargs(settings, args.work_dir, has_eval=eval_ds is not None),
        max_length=t["max_length"],
        packing=t["packing"],
        packing_strategy="bfd",
        shuffle_dataset=True,
        dataset_num_proc=None,
    )
    common.setup_distributed(sft_args)
    resume_from = common.prepare_work_dir(args.work_dir, settings, [*args.data, base_dir])
    model = common.load_base_model(base_dir, spec, settings, model_cfg)
    callbacks = common.make_callbacks(settings)
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=common.lora_config(settings), callbacks=list(callbacks))
    common.train(trainer, resume_from, args.work_dir, callbacks[1])
    extra = {}
    if eval_ds is not None:
        extra["final_eval"] = trainer.evaluate()
    common.finalize(trainer, tokenizer, settings, args, started, common.resumed_step(resume_from), extra)
