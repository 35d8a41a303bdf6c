"""DPO recipe: preference tuning with TRL's DPOTrainer on pre-tokenized pairs.

The reference model is the model this stage starts from (the merged SFT checkpoint when SFT is
enabled), never silently the original base: with LoRA the reference is that same base with the
adapter switched off; with full fine-tuning a frozen copy of it is loaded explicitly.
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
    from trl import DPOConfig, DPOTrainer

    from tuneflow import models

    class PretokenizedDPOTrainer(DPOTrainer):
        """The tokenize rule already built prompt/chosen/rejected ids exactly as DPOTrainer would
        (cached per tokenizer, template and length), so dataset preparation is a no-op here."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    disable_progress_bars()
    base_dir = models.resolve_model_path(spec["path"], spec.get("revision"), key="base_model.path")
    model_cfg = models.check_model_dir(base_dir, spec)
    common.check_settings_against_model(settings, base_dir, model_cfg, "dpo")
    tokenizer = models.load_tokenizer(base_dir, spec, settings["chat_template"])
    models.check_tokenizer_fits(tokenizer, model_cfg, base_dir)

    train_ds = concatenate_datasets([load_from_disk(f"{d}/train") for d in args.data])
    eval_parts = [load_from_disk(f"{d}/validation") for d in args.data]
    eval_ds = concatenate_datasets([p for p in eval_parts if len(p)]) if any(len(p) for p in eval_parts) else None

    dpo_args = DPOConfig(
        **common.trainer_kwargs(settings, args.work_dir, has_eval=eval_ds is not None),
        max_length=settings["training"]["max_length"],
        beta=settings["beta"],
        loss_type=[settings["loss_type"]],
        label_smoothing=settings["label_smoothing"],
    )
    common.setup_distributed(dpo_args)
    resume_from = common.prepare_work_dir(args.work_dir, settings, [*args.data, base_dir])
    model = common.load_base_model(base_dir, spec, settings, model_cfg)
    ref_model = None
    if settings["finetuning"] == "full":
        ref_model = common.load_base_model(base_dir, spec, settings, model_cfg)
    callbacks = common.make_callbacks(settings)
    trainer = PretokenizedDPOTrainer(model=model, ref_model=ref_model, args=dpo_args, train_dataset=train_ds,
                                     eval_dataset=eval_ds, processing_class=tokenizer,
                                     peft_config=common.lora_config(settings), callbacks=list(callbacks))
    common.train(trainer, resume_from, args.work_dir, callbacks[1])
    extra = {"final_eval": trainer.evaluate()} if eval_ds is not None else {}
    common.finalize(trainer, tokenizer, settings, args, started, common.resumed_step(resume_from),
                    {**extra, "reference_model": base_dir})
