"""RM recipe: a reward model with TRL's RewardTrainer on preference pairs.

The model this stage starts from (the merged SFT model) is loaded with a scalar head ("score")
instead of its LM head; with LoRA the score head is trained in full next to the adapter. It learns
to score prompt + chosen above prompt + rejected (loss -log sigmoid(chosen - rejected)), on the same
tokenized pairs DPO reads. Its merged model (results/merged/rm) is a sequence-classification
model that loads with plain transformers and scores a whole conversation.
"""

from __future__ import annotations

from tuneflow.distributed import log
from tuneflow.train import checkpoints, outputs, setup


def as_sequences(dataset, max_length: int):
    """DPO's rows (prompt, chosen and rejected continuations) -> the two whole conversations
    RewardTrainer scores; a pair with a side longer than max_length is dropped (truncation could
    cut away the part where they differ), and counted."""
    seqs = dataset.map(lambda r: {"chosen_ids": r["prompt_ids"] + r["chosen_ids"],
                                  "rejected_ids": r["prompt_ids"] + r["rejected_ids"]},
                       remove_columns=["prompt_ids"])
    kept = seqs.filter(lambda r: len(r["chosen_ids"]) <= max_length and len(r["rejected_ids"]) <= max_length)
    return kept, len(seqs) - len(kept)


def main(argv=None):
    run = setup.prepare("rm", argv, __doc__.splitlines()[0])

    from trl import RewardConfig, RewardTrainer

    max_length = run.settings["training"]["max_length"]
    rm_args = RewardConfig(**setup.trainer_kwargs(run), max_length=max_length)
    ckpt = checkpoints.prepare(run, rm_args)  # from here on, dataset transforms write to the work dir
    run.train_dataset, dropped = as_sequences(run.train_dataset, max_length)
    dropped_eval = 0
    if run.eval_dataset is not None:
        run.eval_dataset, dropped_eval = as_sequences(run.eval_dataset, max_length)
    if dropped or dropped_eval:
        log(f"{dropped} training and {dropped_eval} validation pairs are longer than max_length {max_length}: left out")
    trainer = RewardTrainer(args=rm_args, **setup.trainer_inputs(run, ckpt))
    checkpoints.train(trainer, ckpt)
    outputs.finalize(trainer, run, ckpt, {"pairs_longer_than_max_length": {"train": dropped, "validation": dropped_eval}})
