"""The training stages tuneflow knows, as data: the one list the config checks, the planner, the
Snakemake rules (one generated `train_<stage>` rule each), scripts/train.py, merge, evaluation and
the report read.

Adding a stage = a recipe file under tuneflow/train/ + one entry here + the schema block of the
keys it adds (workflow/schemas/config.schema.yaml, `<name>_stage`). Nothing here imports the
recipes or the planner: this module is read by both sides.

The DAG they make: PT -> SFT -> {DPO, RM -> RL, KTO}, each branch starting from the same merged
model (the first of `starts_from` that is enabled).
"""

from __future__ import annotations

from dataclasses import dataclass

CAUSAL_LM = "causal_lm"
SEQUENCE_CLASSIFICATION = "sequence_classification"  # one scalar output: a reward model


@dataclass(frozen=True)
class Stage:
    name: str
    label: str                       # how the report names it
    formats: frozenset[str]          # raw dataset formats it trains on
    tokenized: str                   # kind of tokenized rows it reads (tuneflow.tokenize)
    starts_from: tuple[str, ...]     # its base: the merged model of the first of these that is enabled, else the base model
    settings_keys: tuple[str, ...]   # keys of its config block its result depends on (resources aside)
    recipe: str                      # the module whose main() trains it (scripts/train.py runs it)
    compared_with: str | None = "base"  # the model the report's delta column subtracts (None: no delta column)
    scored_against_reference: bool = False  # evaluation adds implicit rewards against its base (needs `beta`)
    model_task: str = CAUSAL_LM      # what its merged model is: training, merge and evaluation load it as such
    rewards_key: str | None = None   # its block's weighted reward list; a `reward_model` naming a stage makes that
                                     # stage's merged model an input of this one (and of the evaluations scored with it)
    curves: tuple[tuple[str, str], ...] = ()  # logged values the report charts over training: (log key, label)
    goal: tuple[str, ...] = ()       # evaluation metrics that show whether it did its job (the report leads with them)
    trade_off: str = ""              # what it may cost elsewhere, and why: the report says it where a number got worse

    @property
    def uses_chat_template(self) -> bool:
        return self.tokenized != "pt"

    @property
    def recipe_file(self) -> str:
        return self.recipe.replace(".", "/") + ".py"


COMMON_KEYS = ("finetuning", "lora", "quantization", "deepspeed", "training")
INSTRUCTION_FORMATS = frozenset({"alpaca", "promptcblue", "sharegpt"})

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pt", "PT", frozenset({"text"}), tokenized="pt", starts_from=(),
          settings_keys=(*COMMON_KEYS, "bos_per_document", "eos_per_document"), recipe="tuneflow.train.pt", goal=("perplexity",),
          trade_off="PT trains on plain text only: the chat format of instruction data is new to it, so its loss "
                    "there can rise until SFT teaches the format."),
    # Plain text may be mixed in (trained on every token) so that it forgets less of it.
    Stage("sft", "SFT", INSTRUCTION_FORMATS | {"text"}, tokenized="sft", starts_from=("pt",),
          settings_keys=(*COMMON_KEYS, "mask_prompt", "truncation"), recipe="tuneflow.train.sft",
          goal=("eval_loss", "exact_match", "promptcblue_overall"),
          trade_off="SFT trains on answers in the chat format only: on plain text the model forgets some of what PT "
                    "taught it (its perplexity there rises); the more SFT changes the embeddings and the output layer, "
                    "the more it forgets."),
    Stage("dpo", "DPO", frozenset({"preference"}), tokenized="dpo", starts_from=("sft", "pt"),
          settings_keys=(*COMMON_KEYS, "beta", "loss_type", "label_smoothing"), recipe="tuneflow.train.dpo",
          compared_with="sft", scored_against_reference=True,
          curves=(("rewards/margins", "reward margin (chosen − rejected)"), ("rewards/accuracies", "preference accuracy")),
          goal=("preference_accuracy", "logp_accuracy"),
          trade_off="DPO raises the chosen answers of its pairs and lowers the rejected ones relative to its reference; "
                    "on other prompts the answers can move too and lose exact wording SFT had (lower exact match or "
                    "ROUGE): the alignment tax. A smaller beta or learning rate trades less of it for a smaller gain."),
    # The reward model: the same pairs as DPO (the same tokenized rows), a scalar head instead of the LM head.
    Stage("rm", "RM", frozenset({"preference"}), tokenized="dpo", starts_from=("sft", "pt"),
          settings_keys=COMMON_KEYS, recipe="tuneflow.train.rm", compared_with=None,
          model_task=SEQUENCE_CLASSIFICATION,
          curves=(("accuracy", "pairwise accuracy (train batch)"), ("margin", "score margin (chosen − rejected)")),
          goal=("pairwise_accuracy",)),
    # Online RL on prompts of instruction data; the reference (KL) is the model it starts from.
    Stage("rl", "RL", INSTRUCTION_FORMATS, tokenized="prompt", starts_from=("sft", "pt"),
          settings_keys=(*COMMON_KEYS, "algorithm", "kl_coef", "num_generations", "max_new_tokens", "temperature",
                         "rewards", "trust_reward_code"),
          recipe="tuneflow.train.rl", compared_with="sft", rewards_key="rewards",
          curves=(("reward", "mean reward"), ("kl", "KL to the reference"),
                  ("completions/mean_length", "completion length (tokens)")),
          goal=("mean_reward", "promptcblue_overall"),
          trade_off="RL makes the answers its reward prefers more likely. Where the reward is wrong (a reward model is "
                    "only as right as its pairwise accuracy) the model learns those errors too, reward hacking, and a "
                    "metric the reward does not measure can drop; kl_coef bounds how far it drifts from its reference, "
                    "and a verifiable reward cannot be fooled."),
    Stage("kto", "KTO", frozenset({"preference", "unpaired"}), tokenized="kto", starts_from=("sft", "pt"),
          settings_keys=(*COMMON_KEYS, "beta", "loss_type", "desirable_weight", "undesirable_weight"),
          recipe="tuneflow.train.kto", compared_with="sft", scored_against_reference=True,
          curves=(("rewards/margins", "reward margin (desirable − undesirable)"), ("kl", "KL estimate")),
          goal=("preference_accuracy", "logp_accuracy"),
          trade_off="KTO raises desirable answers and lowers undesirable ones relative to its reference; as with DPO, "
                    "answers to other prompts can lose some of the exact wording SFT had (the alignment tax)."),
)}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
