"""The training stages tuneflow knows, as data: the one list the config checks, the planner, the
Snakemake rules (one generated `train_<stage>` rule each), scripts/train.py and the report read.

Adding a stage = a recipe file under tuneflow/train/ + one entry here + the schema block of the
keys it adds (workflow/schemas/config.schema.yaml, `<name>_stage`). Nothing here imports the
recipes or the planner: this module is read by both sides.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    label: str                       # how the report names it
    formats: frozenset[str]          # raw dataset formats it trains on
    tokenized: str                   # kind of tokenized rows it reads (tuneflow.tokenize)
    starts_from: tuple[str, ...]     # its base: the merged model of the first of these that is enabled, else the base model
    settings_keys: tuple[str, ...]   # keys of its config block its result depends on (resources aside)
    recipe: str                      # the module whose main() trains it (scripts/train.py runs it)
    compared_with: str = "base"      # the model the report's delta column subtracts
    scored_against_reference: bool = False  # evaluation adds implicit rewards against its base (needs `beta`)

    @property
    def uses_chat_template(self) -> bool:
        return self.tokenized != "pt"

    @property
    def recipe_file(self) -> str:
        return self.recipe.replace(".", "/") + ".py"


COMMON_KEYS = ("finetuning", "lora", "quantization", "deepspeed", "training")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pt", "PT", frozenset({"text"}), tokenized="pt", starts_from=(),
          settings_keys=(*COMMON_KEYS, "bos_per_document", "eos_per_document"), recipe="tuneflow.train.pt"),
    Stage("sft", "SFT", frozenset({"alpaca", "promptcblue", "sharegpt"}), tokenized="sft", starts_from=("pt",),
          settings_keys=(*COMMON_KEYS, "mask_prompt", "truncation"), recipe="tuneflow.train.sft"),
    Stage("dpo", "DPO", frozenset({"preference"}), tokenized="dpo", starts_from=("sft", "pt"),
          settings_keys=(*COMMON_KEYS, "beta", "loss_type", "label_smoothing", "truncation"), recipe="tuneflow.train.dpo",
          compared_with="sft", scored_against_reference=True),
)}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
