"""RL recipe: online RL with TRL's GRPOTrainer or RLOOTrainer on the prompts of instruction data.

Reads top to bottom: settings, base model (the merged SFT model), tokenizer and prompts
(setup.prepare) -> the reward terms (tuneflow.rewards: a reward model with its own tokenizer, the
verifiable PromptCBLUE / exact-match rewards, a trusted function) -> the trainer: for each prompt
it samples num_generations completions (temperature, max_new_tokens), scores them, and moves the
policy towards the better ones of each group, with a KL penalty (kl_coef) to the reference = the
model this stage starts from (with LoRA: the same weights with the adapter switched off; with full
fine-tuning: a frozen copy TRL loads from the same directory) -> train (with automatic resume) ->
adapter + logs (reward, KL, completion length per logging step) written atomically.

What differs from MedicalGPT's PPO (ppo_training.py): no value head / critic (GRPO normalises
rewards within each prompt's group, RLOO uses the other completions' mean as baseline), a fixed
KL coefficient instead of PPO's adaptive controller, no early stop at a target KL.
"""

from __future__ import annotations

from tuneflow import hardware, rewards
from tuneflow.train import checkpoints, outputs, setup


def main(argv=None):
    run = setup.prepare("rl", argv, __doc__.splitlines()[0])
    s = run.settings
    # Held-out prompts are scored by the evaluate rule (generation + the same rewards), not by
    # the trainer's own evaluation, which would sample num_generations per prompt again.
    run.eval_dataset = None
    run.tokenizer.padding_side = "left"  # prompts are left-padded for generation

    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[s["algorithm"]]
    # Reward models are loaded whole on every rank, before the trainer's arguments exist: under
    # ZeRO-3 those arguments make from_pretrained partition every model it loads, and a partitioned
    # reward model outside the DeepSpeed engine cannot score.
    terms = rewards.build_terms(s["rewards"], s["chat_template"], "stages.rl.rewards", device=hardware.device())
    kwargs = setup.trainer_kwargs(run)
    kwargs["include_num_input_tokens_seen"] = False  # its batches are prompts (text); TRL logs num_tokens itself
    rl_args = config_cls(
        **kwargs,
        beta=s["kl_coef"],
        num_generations=s["num_generations"],
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        reward_weights=[t["weight"] for t in s["rewards"]],
        shuffle_dataset=True,
        log_completions=False,
    )
    run.extra_inputs = tuple(t["reward_model"] for t in s["rewards"] if "reward_model" in t)
    ckpt = checkpoints.prepare(run, rl_args)
    trainer = trainer_cls(args=rl_args, reward_funcs=terms, **setup.trainer_inputs(run, ckpt))
    checkpoints.train(trainer, ckpt)
    run.tokenizer.padding_side = "right"  # saved with the adapter as every other stage saves it
    outputs.finalize(trainer, run, ckpt, {
        "reference_model": run.base_dir, "algorithm": s["algorithm"],
        "rewards": [{"name": t.name, "weight": t.weight, **spec} for t, spec in zip(terms, s["rewards"])],
        "reward_tokenizers": {t.name: {"path": t.tokenizer.name_or_path, "same_as_policy": same_vocab(t.tokenizer, run.tokenizer)}
                              for t in terms if t.tokenizer is not None},
    })


def same_vocab(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()
