"""DPO recipe: preference tuning with TRL's DPOTrainer on pre-tokenized pairs.

The reference model is the model this stage starts from (the merged SFT checkpoint when SFT is
enabled), never silently the original base: with LoRA the reference is that same base with the
adapter switched off; with full fine-tuning a frozen copy of it is loaded explicitly.
"""

from __future__ import annotations

from tuneflow.distributed import log
from tuneflow.stages import STAGES
from tuneflow.train import checkpoints, outputs, setup


def reference_source(starts_from: str | None) -> str:
    """Which model DPO starts from and is scored against, in words (the plan's `starts_from`)."""
    usual = STAGES["dpo"].starts_from[0]
    if starts_from == usual:
        return f"the merged {STAGES[usual].label} model"
    if starts_from:
        return f"the merged {STAGES[starts_from].label} model ({STAGES[usual].label} is disabled)"
    return "the base model (no stage before DPO is enabled)"


def main(argv=None):
    run = setup.prepare("dpo", argv, __doc__.splitlines()[0])

    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """The tokenize rule already built prompt/chosen/rejected ids exactly as DPOTrainer would
        (cached per tokenizer, template and length), so dataset preparation is a no-op here."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    s = run.settings
    dpo_args = DPOConfig(
        **setup.trainer_kwargs(run),
        max_length=s["training"]["max_length"],
        beta=s["beta"],
        loss_type=[s["loss_type"]],
        label_smoothing=s["label_smoothing"],
    )
    ckpt = checkpoints.prepare(run, dpo_args)
    source = reference_source(s["starts_from"])
    log(f"reference model: {run.base_dir}, {source}")
    inputs = setup.trainer_inputs(run, ckpt)
    ref_model = setup.load_model(run) if s["finetuning"] == "full" else None
    trainer = PretokenizedDPOTrainer(args=dpo_args, ref_model=ref_model, **inputs)
    checkpoints.train(trainer, ckpt)
    outputs.finalize(trainer, run, ckpt, {"reference_model": run.base_dir, "reference_source": source})
