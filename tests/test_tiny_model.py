"""The embedded default model: Llama architecture, a few million parameters, safetensors, a
byte-level BPE trained on the demo corpus (Chinese without unknown tokens), the chat template in
tokenizer_config.json, and the module names the planning checks assume."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import REPO
from tuneflow.tiny_model import LLAMA_MODULES, planned_config


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """The default config's tiny model."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tiny_model"]
    return tiny_model(corpus=cfg["corpus"], **{k: v for k, v in cfg.items() if k != "corpus"}), cfg


def test_files_architecture_and_size(tiny):
    out, cfg = tiny
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["max_position_embeddings"] == planned_config(cfg)["max_position_embeddings"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert 1_000_000 <= n <= 20_000_000, n


def test_tokenizer_is_byte_level_with_the_chat_template_in_tokenizer_config(tiny):
    from transformers import AutoTokenizer

    out, cfg = tiny
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tc["chat_template"]
    tok = AutoTokenizer.from_pretrained(out)
    text = "计算两个数的和。 Reverse the word: glass → ssalg ✓"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing unknown
    assert len(tok) <= cfg["vocab_size"]
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")


def test_planning_module_names_match_the_built_model(tiny):
    from transformers import AutoModelForCausalLM

    from tuneflow.lora_targets import inventory
    from tuneflow.tiny_model import planned_inventory

    out, _ = tiny
    built = inventory(AutoModelForCausalLM.from_pretrained(out))
    assert built.leaf_kinds() == planned_inventory().leaf_kinds()
    assert {m.leaf for m in built.modules} >= set(LLAMA_MODULES)
