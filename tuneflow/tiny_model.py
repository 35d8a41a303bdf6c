"""The embedded default model: a small Llama-architecture causal LM with random weights and a
byte-level BPE tokenizer trained on the spot on the demo corpus (byte-level, so any UTF-8 text,
Chinese included, tokenizes without unknown tokens). Saved with save_pretrained (safetensors, the
ChatML chat template in tokenizer_config.json)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tuneflow.data.readers import LINE_SPLIT, read_text
from tuneflow.io import atomic_dir

# The tiny tokenizer's own chat template (chat_template: tokenizer): ChatML in Jinja, as
# apply_chat_template renders it.
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# Leaf modules of LlamaForCausalLM and what LoRA sees in them (tests/test_tiny_model.py checks them
# against a built model): the config is checked against them when Snakemake plans, before the model
# exists.
LLAMA_MODULES = {"embed_tokens": "embedding", **dict.fromkeys(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                 "up_proj", "down_proj"), "linear"), "lm_head": "output layer",
                 **dict.fromkeys(("input_layernorm", "post_attention_layernorm", "norm"), "other")}


def planned_inventory():
    """The tiny model's module inventory (tuneflow.lora_targets) before it is built."""
    from tuneflow.lora_targets import Inventory

    return Inventory.from_leaf_kinds(LLAMA_MODULES)


def planned_config(settings: dict) -> dict:
    """The parts of config.json the planning checks read, from the tiny_model settings."""
    return {"model_type": "llama", "max_position_embeddings": settings["max_position_embeddings"]}


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def corpus_texts(paths):
    """Every string in the corpus files: lines of text files, string values of JSON records."""
    for path in paths:
        text = read_text(Path(path)).lstrip("\ufeff")
        if text.lstrip()[:1] in "[{":
            stripped = text.lstrip()
            records = json.loads(stripped) if stripped[0] == "[" else [json.loads(x) for x in LINE_SPLIT.split(text) if x.strip()]
            yield from _strings(records)
        else:
            yield from (line for line in LINE_SPLIT.split(text) if line.strip())


def build_tiny_model(settings: dict, corpus, out_dir, seed: int = 42) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=settings["vocab_size"], special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Role names appear in every chat prompt: give them their own tokens.
    roles = (f"<|im_start|>{r}\n" for r in ["system", "user", "assistant"] * 200)
    bpe.train_from_iterator(itertools.chain(corpus_texts(corpus), roles), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>",
                                        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
                                        model_max_length=settings["max_position_embeddings"])
    tokenizer.chat_template = CHATML_JINJA

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"], num_hidden_layers=settings["num_layers"],
        num_attention_heads=settings["num_heads"], num_key_value_heads=settings["num_kv_heads"],
        max_position_embeddings=settings["max_position_embeddings"], tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02, dtype="float32")
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_dir(out_dir, rule="tiny_model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp, save_jinja_files=False)  # the chat template inside tokenizer_config.json
    return {"parameters": n_params, "vocab_size": len(tokenizer)}
