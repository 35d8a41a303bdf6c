"""SFT recipe: instruction tuning with TRL's SFTTrainer on pre-tokenized conversations.

Reads top to bottom: settings, base model, tokenizer and data (setup.prepare) -> trainer -> train
(with automatic resume) -> adapter + logs written atomically. Prompt tokens were masked (label
-100) by the tokenize rule when mask_prompt is on; with packing, TRL packs samples padding-free
and position ids restart per sample, so packed samples never attend to each other.
"""

from __future__ import annotations

from tuneflow.train import checkpoints, outputs, setup


def main(argv=None):
    run = setup.prepare("sft", argv, __doc__.splitlines()[0])

    from trl import SFTConfig, SFTTrainer

    t = run.settings["training"]
    sft_args = SFTConfig(
        **setup.trainer_kwargs(run),
        max_length=t["max_length"],
        packing=t["packing"],
        packing_strategy="bfd",
        shuffle_dataset=True,
        dataset_num_proc=None,
        **setup.pretokenized_sft_data(run, run.settings["seed"], packing=t["packing"]),
    )
    ckpt = checkpoints.prepare(run, sft_args)
    trainer = SFTTrainer(args=sft_args, **setup.trainer_inputs(run, ckpt))
    checkpoints.train(trainer, ckpt)
    outputs.finalize(trainer, run, ckpt)
