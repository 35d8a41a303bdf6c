"""Tokenization: prompt masking from the chat template, PT blocks, DPO ids, KTO's unpaired rows, RL
prompts, plain text mixed into SFT, built-in templates."""

from __future__ import annotations

import json

import pytest

from tuneflow.templates import BUILTIN, assistant_spans, stop_token_ids
from tuneflow.tokenize import IGNORE, tokenize_dpo, tokenize_kto, tokenize_prompts, tokenize_pt, tokenize_sft, tokenize_split


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model(vocab_size=500, hidden_size=16, intermediate_size=32,
                                                    max_position_embeddings=256))


CONV = [{"role": "system", "content": "S"}, {"role": "user", "content": "2 + 3"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "reverse cat"}, {"role": "assistant", "content": "tac"}]


def test_sft_labels_cover_exactly_the_assistant_turns(tokenizer):
    rows, stats = tokenize_sft([{"messages": CONV}], tokenizer, max_length=256)
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    trained = tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE])
    assert trained == "5<|im_end|>\ntac<|im_end|>\n"
    assert all(l == IGNORE or l == t for t, l in zip(ids, labels))
    assert stats["label_tokens"] == sum(l != IGNORE for l in labels)


def test_sft_without_masking_trains_on_everything(tokenizer):
    rows, _ = tokenize_sft([{"messages": CONV}], tokenizer, max_length=256, mask_prompt=False)
    assert rows[0]["labels"] == rows[0]["input_ids"]


def test_sft_truncation_and_fully_masked_drop(tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    rows, stats = tokenize_sft([{"messages": long_prompt}, {"messages": CONV}], tokenizer, max_length=32)
    assert stats["truncated"] >= 1 and stats["dropped_fully_masked"] == 1 and len(rows) == 1
    assert all(len(r["input_ids"]) <= 32 for r in rows)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_templates_mask_consistently(tokenizer, name):
    tokenizer.chat_template = BUILTIN[name]
    text, spans = assistant_spans(tokenizer, CONV)
    assert [text[a:b].strip().split()[0].split("<")[0] for a, b in spans] == ["5", "tac"]


def test_pt_blocks_are_full_and_documents_end_with_eos(tokenizer):
    rows, stats = tokenize_pt([{"text": "one two three"}, {"text": "four five"}] * 20, tokenizer, max_length=16)
    assert all(len(r["input_ids"]) == 16 for r in rows)
    assert stats["blocks"] == len(rows) and stats["tokens"] == 16 * len(rows) + stats["tokens_dropped_at_end"]
    assert tokenizer.eos_token_id in rows[0]["input_ids"]


def test_dpo_ids_split_prompt_and_responses(tokenizer):
    tokenizer.chat_template = BUILTIN["chatml"]
    recs = [{"messages": [{"role": "user", "content": "2 + 3"}], "chosen": "5", "rejected": "6"}]
    rows, _ = tokenize_dpo(recs, tokenizer, max_length=64)
    r = rows[0]
    assert tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(r["chosen_ids"]) == "5<|im_end|>\n" and tokenizer.decode(r["rejected_ids"]) == "6<|im_end|>\n"
    rows, stats = tokenize_dpo(recs, tokenizer, max_length=4)
    assert rows == [] and stats["dropped_prompt_too_long"] == 1


def test_stop_tokens_include_end_of_turn(tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)


def test_kto_unpairs_preference_pairs_and_keeps_unpaired_examples(tokenizer):
    tokenizer.chat_template = BUILTIN["chatml"]
    q = [{"role": "user", "content": "2 + 3"}]
    recs = [{"messages": q, "chosen": "5", "rejected": "6"}, {"messages": q, "completion": "five", "label": True}]
    rows, stats = tokenize_kto(recs, tokenizer, max_length=64)
    assert [(tokenizer.decode(r["completion_ids"]), r["label"]) for r in rows] == [
        ("5<|im_end|>\n", True), ("6<|im_end|>\n", False), ("five<|im_end|>\n", True)]
    assert all(tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n") for r in rows)
    assert stats == {"records": 2, "desirable": 2, "undesirable": 1, "unpaired_from_pairs": 1,
                     "dropped_prompt_too_long": 0, "tokens": stats["tokens"]}
    rows, stats = tokenize_kto(recs, tokenizer, max_length=4)
    assert rows == [] and stats["dropped_prompt_too_long"] == 3


def test_rl_prompts_end_before_the_last_answer_which_becomes_the_reference(tokenizer):
    tokenizer.chat_template = BUILTIN["chatml"]
    recs = [{"id": "a", "messages": CONV, "meta": {"task_dataset": "KUAKE-QIC"}},
            {"id": "b", "messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "x"}]}]
    rows, stats = tokenize_prompts(recs, tokenizer, max_length=64, dataset="demo")
    assert len(rows) == 1 and stats["dropped_prompt_too_long"] == 1
    assert rows[0]["prompt"] == CONV[:-1] and rows[0]["reference"] == "tac"
    assert json.loads(rows[0]["meta"]) == {"id": "a", "dataset": "demo", "task_dataset": "KUAKE-QIC"}


def test_plain_text_mixed_into_sft_is_trained_on_every_token(tokenizer):
    rows, stats = tokenize_split([{"text": "one two three"}] * 20, tokenizer, {"kind": "sft", "max_length": 16})
    assert rows and all(r["labels"] == r["input_ids"] and len(r["input_ids"]) == 16 for r in rows)
    assert stats["blocks"] == len(rows)
