"""Training settings the seed systems use reach the trainer: DoRA + rsLoRA, NEFTune, RoPE scaling,
gradient checkpointing (non-reentrant), warmup in steps, modules_to_save, eager attention, a chat
template that adds special tokens (embeddings resized); and the DoRA adapter merges exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, env_with_venv
from tuneflow import config
from tuneflow.plan import Plan

pytestmark = pytest.mark.slow


def run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env_with_venv(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_sft_with_dora_rslora_neftune_rope_scaling_and_checkpointing(tmp_path, tiny_model):
    tiny = tiny_model(vocab_size=600, num_layers=2, num_heads=4, max_position_embeddings=64)
    data = tmp_path / "data"
    run(REPO / "scripts" / "convert.py", "--settings", json.dumps({"name": "a", "path": str(REPO / "resources" / "demo" / "sft_alpaca.json"),
        "format": "alpaca", "validation_fraction": 0.1, "split_seed": 1, "max_records": 80}), "--out", data)
    cfg = config.load(overrides={"base_model": {"path": str(tiny)}, "chat_template": "chatml_peft", "stages": {"sft": {
        "finetuning": "lora", "lora": {"r": 4, "alpha": 8, "use_dora": True, "use_rslora": True, "target_modules": ["q_proj", "v_proj", "down_proj"],
                 "modules_to_save": ["lm_head"]},
        "training": {"max_steps": 3, "max_length": 96, "per_device_batch_size": 4, "gradient_checkpointing": True,
                     "use_reentrant": False, "warmup_steps": 2,
                     "neftune_alpha": 5.0, "rope_scaling": {"type": "linear", "factor": 2.0}, "attn_implementation": "eager",
                     "save_steps": 2, "logging_steps": 1}}}})
    settings = Plan(cfg).stage_settings("default", "sft")
    settings["base_model"] = dict(cfg["base_model"])
    tokenized = tmp_path / "tok"
    tok_settings = {"kind": "sft", "model": {"path": str(tiny)}, "chat_template": "chatml_peft", "max_length": 96,
                    "mask_prompt": True}
    run(REPO / "scripts" / "tokenize_data.py", "--data", data, "--settings", json.dumps(tok_settings), "--out", tokenized)
    out = tmp_path / "adapters" / "sft"
    run(REPO / "scripts" / "launch.py", "--nproc-per-node", "1", REPO / "scripts" / "train.py", "sft", "--settings",
        json.dumps(settings), "--data", tokenized, "--output", out, "--work-dir", tmp_path / "work")
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["use_dora"] and adapter_cfg["use_rslora"] and adapter_cfg["modules_to_save"] == ["lm_head"]
    assert sorted(adapter_cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 3
    ran = info["effective"]  # read back from the trainer and the loaded model, not from the config
    assert ran["attn_implementation"] == "eager" and ran["gradient_checkpointing"] and ran["neftune_noise_alpha"] == 5.0
    assert ran["rope_parameters"]["rope_type"] == "linear" and ran["rope_parameters"]["factor"] == 2.0
    assert ran["gradient_checkpointing_kwargs"] == {"use_reentrant": False} and ran["warmup_steps"] == 2
    assert info["vocab_size"] == 608  # chatml_peft's five tokens on the 600 of the tiny tokenizer, rounded up to 8
    merged = tmp_path / "merged"
    run(REPO / "scripts" / "merge.py", "--settings", json.dumps({"base_model": {"path": str(tiny)}, "finetuning": "lora",
        "rope_scaling": settings["training"]["rope_scaling"]}), "--adapter", out, "--out", merged)
    check = json.loads((merged / "merge_check.json").read_text())
    assert check["max_abs_diff"] <= check["tolerance"]
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == 608  # the trained rows, merged
    # the merged model keeps the RoPE scaling it was trained with (rope_theta kept beside it)
    rope = json.loads((merged / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "linear" and rope["factor"] == 2.0 and rope["rope_theta"] > 0
