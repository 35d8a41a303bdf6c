"""PT recipe: continued pre-training on text, packed into fixed blocks by the tokenize rule.

Reads top to bottom: settings, base model, tokenizer and blocks (setup.prepare) -> TRL's
SFTTrainer (language modelling on every token: the blocks carry no prompt mask) -> train (with
automatic resume) -> adapter or full weights + logs written atomically.
"""

from __future__ import annotations

from tuneflow.train import checkpoints, outputs, setup


def main(argv=None):
    run = setup.prepare("pt", argv, __doc__.splitlines()[0])

    from trl import SFTConfig, SFTTrainer

    pt_args = SFTConfig(
        **setup.trainer_kwargs(run),
        max_length=run.settings["training"]["max_length"],
        packing=False,  # already cut into blocks of max_length
        completion_only_loss=False,
        shuffle_dataset=True,
        **setup.pretokenized_sft_data(run, run.settings["seed"], packing=False),
    )
    ckpt = checkpoints.prepare(run, pt_args)
    trainer = SFTTrainer(args=pt_args, **setup.trainer_inputs(run, ckpt))
    checkpoints.train(trainer, ckpt)
    outputs.finalize(trainer, run, ckpt)
