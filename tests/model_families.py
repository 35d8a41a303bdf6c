"""Tiny random-init models of the families users fine-tune, each with its real tokenizer.

Each family is built from transformers' own config class with the published architecture choices
that matter to fine-tuning (vocabulary and special-token ids, grouped-query attention, RoPE
variant, tied embeddings, mixture of experts) at tiny width: hidden 64, 2 layers. The published
vocabulary is kept, so the embeddings (32k to 152k rows) are most of each model. Widths are
multiples of 64: bitsandbytes' CPU 4-bit kernels need that (tests/config/recipe-smoke.yaml).

The tokenizer files are copied byte for byte beside the weights, as a downloaded model has them.
Nothing here is committed: the `family_model` session fixture (conftest.py) builds each family
once per test run in a temporary directory.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "initializer_range": 0.02}


@dataclass(frozen=True)
class Family:
    name: str
    tokenizer: str          # tests/real_tokenizers.py name
    config_class: str       # transformers config class
    model_class: str
    config: dict            # published values kept (vocabulary, special ids, RoPE, tying, experts)
    generation: dict = field(default_factory=dict)  # generation_config.json as published
    moe: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # meta-llama/Llama-2-7b-hf: 32k sentencepiece vocabulary, no pad, multi-head attention, no chat template.
    Family("llama2", "llama2", "LlamaConfig", "LlamaForCausalLM",
           {"vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "num_key_value_heads": 4,
            "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False},
           {"bos_token_id": 1, "eos_token_id": 2}),
    # meta-llama/Llama-3.1-8B-Instruct: 128k vocabulary, GQA, RoPE "llama3" frequency scaling, no pad.
    Family("llama3_1", "llama3_1", "LlamaConfig", "LlamaForCausalLM",
           {"vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
            "max_position_embeddings": 131072,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "tie_word_embeddings": False},
           {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}),
    # mistralai/Mistral-7B-v0.1: Llama-like 32k vocabulary, GQA, sliding-window attention.
    Family("mistral", "mistral", "MistralConfig", "MistralForCausalLM",
           {"vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 32768,
            "sliding_window": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False},
           {"bos_token_id": 1, "eos_token_id": 2}),
    # Qwen/Qwen3-0.6B: 151,936 embedding rows (151,669 tokens), tied input/output embeddings,
    # q/k norms, no bos; eos <|im_end|>.
    Family("qwen3", "qwen3", "Qwen3Config", "Qwen3ForCausalLM",
           {"vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645, "max_position_embeddings": 40960,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": True},
           {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}),
    # mistralai/Mixtral-8x7B-v0.1 (Mistral's tokenizer): 8 experts -> 4 here, top-2 routing.
    Family("mixtral", "mistral", "MixtralConfig", "MixtralForCausalLM",
           {"vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 32768,
            "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": False},
           {"bos_token_id": 1, "eos_token_id": 2}, moe=True),
)}
NAMES = tuple(FAMILIES)


def build_family_model(name: str, tokenizer_dir, out_dir, seed: int = 0) -> Path:
    """Write a random-init model of family `name` (safetensors, fp32) and its real tokenizer files
    into `out_dir`; return it."""
    import torch
    import transformers
    from transformers import GenerationConfig

    fam = FAMILIES[name]
    out = Path(out_dir)
    torch.manual_seed(seed)
    config = getattr(transformers, fam.config_class)(**{**TINY, **fam.config, "dtype": "float32"})
    model = getattr(transformers, fam.model_class)(config)
    model.generation_config = GenerationConfig(**fam.generation)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    tmp.rename(out)
    return out


def read_config(model_dir) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
