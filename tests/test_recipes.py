"""config/recipes: one preset per seed system. Each validates, dry-runs with its own data, and
runs end to end on a CPU with the embedded tiny model swapped in (tests/config/recipe-smoke.yaml).
That each states its seed's hyperparameters and tokenizes as the seed does: tests/test_parity.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import REPO, SHARED, make_workdir, skip_or_fail, snakemake
from tuneflow import config
from tuneflow.plan import Plan

RECIPES = sorted(p.name for p in (REPO / "config" / "recipes").glob("*.yaml"))
SMOKE = "tests/config/recipe-smoke.yaml"


def needs_shared():
    if not SHARED.exists():
        skip_or_fail(f"the presets read their data from ../shared/data, not found at {SHARED}")


def test_there_is_one_preset_per_seed_system():
    assert RECIPES == ["chinese_llama_alpaca2_sft.yaml", "llama_factory_sft.yaml", "llms_train_promptcblue.yaml",
                       "medicalgpt_chain.yaml", "peft_sft_qlora_zero3.yaml"]


def test_the_medicalgpt_preset_runs_its_rlhf_road_with_run_rm_and_run_ppo_s_settings():
    med = config.load(REPO / "config" / "recipes" / "medicalgpt_chain.yaml")["stages"]
    assert all(med[s]["enabled"] for s in ("pt", "sft", "dpo", "rm", "rl"))
    rm, rl = med["rm"], med["rl"]  # run_rm.sh; run_ppo.sh mapped to RLOO
    assert (rm["finetuning"], rm["lora"]["r"], rm["training"]["learning_rate"], rm["training"]["per_device_batch_size"],
            rm["training"]["max_length"], rm["training"]["weight_decay"]) == ("lora", 8, 2e-5, 4, 512, 0.001)
    assert (rl["algorithm"], rl["kl_coef"], rl["max_new_tokens"], rl["temperature"], rl["training"]["learning_rate"],
            rl["training"]["max_steps"], rl["training"]["per_device_batch_size"]) == ("rloo", 0.2, 256, 1.0, 1e-5, 100, 8)
    assert rl["rewards"] == [{"reward_model": "rm", "weight": 1.0, "datasets": None}]


@pytest.mark.parametrize("recipe", RECIPES)
def test_preset_validates_and_dry_runs(recipe):
    needs_shared()
    cfg = config.load(REPO / "config" / "recipes" / recipe)
    assert Plan(cfg).stages()  # at least one stage enabled
    proc = snakemake(REPO, "-n", "--quiet", "rules", "--configfile", f"config/recipes/{recipe}", "--replace-workflow-config")
    assert "train_" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_preset_runs_on_cpu_with_the_tiny_model(recipe, tmp_path):
    needs_shared()
    preset = config.load(REPO / "config" / "recipes" / recipe)
    stages = Plan(preset).stages()
    if any(preset["stages"][s]["finetuning"] == "qlora" for s in stages):
        pytest.importorskip("bitsandbytes", reason="QLoRA presets need bitsandbytes (pip install -e '.[test]')")
    os.symlink(SHARED.parent, tmp_path / "shared")  # the presets read ../shared/data
    project = make_workdir(tmp_path / "project")
    snakemake(project, "--profile", "local", *(f"results/merged/{s}" for s in stages),
              "--configfile", f"config/recipes/{recipe}", SMOKE, "--replace-workflow-config")
    for stage in stages:
        info = json.loads((project / "results" / "adapters" / stage / "train_info.json").read_text())
        st = preset["stages"][stage]
        assert (info["finetuning"], info["deepspeed"], info["world_size"]) == (st["finetuning"], st["deepspeed"], 2)
        assert info["quantized"] == ("4bit" if st["finetuning"] == "qlora" else None)
        check = json.loads((project / "results" / "merged" / stage / "merge_check.json").read_text())
        assert check["max_abs_diff"] <= check.get("tolerance", 0.0)
        assert Path(project / "results" / "merged" / stage / "model.safetensors").is_file()
        # Tokens the chat template added (chatml_peft: five) got embedding rows in training, and the
        # merged model has the same rows and the tokenizer that needs them.
        merged_vocab = json.loads((project / "results" / "merged" / stage / "config.json").read_text())["vocab_size"]
        tokenizer = json.loads((project / "results" / "merged" / stage / "tokenizer.json").read_text())
        assert merged_vocab == info["vocab_size"] >= max(t["id"] for t in tokenizer["added_tokens"]) + 1
        if preset["chat_template"] == "chatml_peft":
            assert info["vocab_size"] > 800  # recipe-smoke.yaml's tiny vocabulary, resized
