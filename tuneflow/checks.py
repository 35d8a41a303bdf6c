"""Checks of the config against the base model, run when Snakemake plans the workflow, so that a
model-dependent mistake stops the run before any job writes anything.

A base model on local disk is checked by reading config.json, the tokenizer files and its module
tree built on the meta device (no weights are read); the embedded tiny model, which the workflow
builds, by its tiny_model settings and the Llama module names. A hub name is checked by the first job
that needs it (tokenize / train), which fails fast when the hub cannot be reached.
"""

from __future__ import annotations

import functools
import os

from tuneflow import lora_targets, models, tiny_model
from tuneflow.config import RESULTS, TINY_MODEL_DIR, enabled_stages, reward_stage
from tuneflow.errors import ModelError
from tuneflow.stages import STAGES
from tuneflow.templates import BUILTIN


@functools.lru_cache(maxsize=64)
def _tokenizer(path, trust_remote_code):
    return models.auto_tokenizer(path, trust_remote_code)


@functools.lru_cache(maxsize=64)
def _modules(path, trust_remote_code):
    return lora_targets.inventory_of_dir(path, trust_remote_code)


def check_reward_models(cfg: dict, prefix: str = ""):
    """A reward model given as a local directory: a sequence-classification model with one output
    (a causal LM has no score head), checked from its config.json."""
    for stage in enabled_stages(cfg):
        key = STAGES[stage].rewards_key
        for i, term in enumerate(cfg["stages"][stage][key] if key else []):
            path = term.get("reward_model")
            if path is None or reward_stage(path) or path.startswith(f"{RESULTS}/"):
                continue
            where = f"{prefix}stages.{stage}.{key}[{i}].reward_model"
            if not os.path.isdir(path):
                raise ModelError(f"config key '{where}': reward model directory '{path}' does not exist (give a local "
                                 "directory, or rm for this workflow's reward model stage)")
            spec = {"path": path, "trust_remote_code": False, "allow_unsafe_weights": False}
            models.check_reward_model_config(models.check_model_dir(path, spec, key=where), path, where)


def check_base_model(cfg: dict, variant: str = "default"):
    prefix = "" if variant == "default" else f"variants.{variant}."
    check_reward_models(cfg, prefix)
    spec = cfg["base_model"]
    path = spec["path"]
    stages = enabled_stages(cfg)
    if path == TINY_MODEL_DIR:  # built by the workflow: check against what it will be
        model_cfg = tiny_model.planned_config(cfg["tiny_model"])
        for stage in stages:
            models.check_stage_against_model(cfg["stages"][stage], stage, path, model_cfg, f"{prefix}stages.{stage}",
                                             modules=tiny_model.planned_inventory())
        return
    if path.startswith(f"{RESULTS}/"):
        return  # another workflow output: checked by the jobs that use it
    if not os.path.isdir(path):
        if path.startswith(models.LOCAL_PREFIXES) or not models.HUB_ID.match(path):
            raise ModelError(f"config key '{prefix}base_model.path': model directory '{path}' does not exist")
        # A hub name: checked by the first job that needs it, which fails fast, saying so, when
        # the hub cannot be reached. Not here: a dry run must work on an offline login node.
        return
    model_cfg = models.check_model_dir(path, spec, key=f"{prefix}base_model")
    needs_template = any(STAGES[s].uses_chat_template for s in stages) or any(
        d["format"] != "text" for d in cfg["datasets"].values())
    tok = _tokenizer(path, bool(spec.get("trust_remote_code")))
    if needs_template and cfg["chat_template"] == "tokenizer" and not getattr(tok, "chat_template", None):
        raise ModelError(f"the tokenizer at {path} has no chat template, but config key '{prefix}chat_template' is "
                         "'tokenizer'; set it to a built-in template (chatml, llama2, llama3, alpaca, zephyr)")
    models.check_tokenizer_fits(tok, model_cfg, path)
    for stage in stages:
        models.check_stage_against_model(cfg["stages"][stage], stage, path, model_cfg, f"{prefix}stages.{stage}",
                                         modules=_modules(str(path), bool(spec.get("trust_remote_code"))))


def preflight(resolved: dict):
    """Check every variant's base model; raises TuneflowError naming the config key."""
    seen = set()
    for variant, cfg in resolved["_variants"].items():
        marker = repr((cfg["base_model"], cfg["chat_template"], cfg["stages"], sorted(cfg["datasets"])))
        if marker in seen:
            continue
        seen.add(marker)
        check_base_model(cfg, variant)
