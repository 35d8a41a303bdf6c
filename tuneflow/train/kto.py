"""KTO recipe: TRL's KTOTrainer on unpaired desirable / undesirable completions (pre-tokenized;
preference pairs were unpaired by the tokenize rule).

The reference model is the model this stage starts from (the merged SFT model): with LoRA the same
weights with the adapter switched off, with full fine-tuning a frozen copy loaded explicitly. KTO
estimates its KL term from mismatched (prompt, completion) pairs of the same batch and reads the
data in order, so the rows are shuffled once with the seed first: every batch mixes desirable and
undesirable examples.
"""

from __future__ import annotations

from tuneflow.errors import ConfigError
from tuneflow.train import checkpoints, outputs, setup


def check_both_labels(dataset, datasets):
    """KTO learns from the contrast of desirable and undesirable completions: it needs both."""
    desirable = sum(dataset["label"])
    undesirable = len(dataset) - desirable
    if not desirable or not undesirable:
        missing = "undesirable (label: false)" if desirable else "desirable (label: true)"
        raise ConfigError("stages.kto", f"the training data of the kto stage ({', '.join(datasets)}) has {desirable} "
                          f"desirable and {undesirable} undesirable examples: KTO needs both; add {missing} "
                          "examples, or preference pairs (each gives one of each)")
    return desirable, undesirable


def main(argv=None):
    run = setup.prepare("kto", argv, __doc__.splitlines()[0])
    counts = check_both_labels(run.train_dataset, [d.rstrip("/").split("/")[-2] for d in run.args.data])

    from trl import KTOConfig, KTOTrainer

    class PretokenizedKTOTrainer(KTOTrainer):
        """The tokenize rule already built prompt / completion ids as KTOTrainer would; only the
        mismatched completions of its KL estimate are added here (as KTOTrainer does)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset
            return dataset.map(lambda rows: {"KL_completion_ids": rows["completion_ids"][-1:] + rows["completion_ids"][:-1]},
                               batched=True, batch_size=args.per_device_train_batch_size)

    s = run.settings
    kto_args = KTOConfig(
        **setup.trainer_kwargs(run),
        max_length=s["training"]["max_length"],
        beta=s["beta"],
        loss_type=s["loss_type"],
        desirable_weight=s["desirable_weight"],
        undesirable_weight=s["undesirable_weight"],
    )
    ckpt = checkpoints.prepare(run, kto_args)
    # After prepare: from here on, dataset transforms (this shuffle's index, KTOTrainer's KL
    # column) write to the job's work dir, never into the tokenize rule's output.
    run.train_dataset = run.train_dataset.shuffle(seed=s["seed"])
    inputs = setup.trainer_inputs(run, ckpt)
    ref_model = setup.load_model(run) if s["finetuning"] == "full" else None
    trainer = PretokenizedKTOTrainer(args=kto_args, ref_model=ref_model, **inputs)
    checkpoints.train(trainer, ckpt)
    outputs.finalize(trainer, run, ckpt, {"reference_model": run.base_dir,
                                          "examples": {"desirable": counts[0], "undesirable": counts[1]}})
