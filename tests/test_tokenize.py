"""Tokenization: the template engine (tuneflow.templates) and rows, masks, truncation, counts and
warnings (tuneflow.tokenize), on the tiny tokenizer and on real ones; KTO's unpaired rows, RL
prompts, plain text mixed into SFT."""

from __future__ import annotations

import json

import pytest

from tuneflow import templates
from tuneflow.errors import ModelError, TuneflowError
from tuneflow.templates import BUILTIN, Settings, encode, prompt_ids, stop_token_ids
from tuneflow.tokenize import (IGNORE, fit_turns, tokenize_dataset, tokenize_dpo, tokenize_kto, tokenize_prompts,
                               tokenize_pt, tokenize_sft, tokenize_split)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model(vocab_size=500, hidden_size=16, intermediate_size=32,
                                                    max_position_embeddings=256))


@pytest.fixture(scope="module")
def real(real_tokenizer):
    """name -> a fresh real tokenizer prepared for a template: real(family, template)."""
    from tuneflow import models

    def load(family, template=None):
        return models.load_tokenizer(real_tokenizer(family), {}, template)

    return load


CONV = [{"role": "system", "content": "S"}, {"role": "user", "content": "2 + 3"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "reverse cat"}, {"role": "assistant", "content": "tac"}]
SFT = {"kind": "sft", "max_length": 256, "mask_prompt": True, "chat_template": "tokenizer", "template": None}


def sft(**kw):
    return {**SFT, **kw}


def test_sft_labels_cover_exactly_the_assistant_turns(tokenizer):
    rows, stats = tokenize_sft([{"id": "a", "messages": CONV}], tokenizer, sft())
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    trained = tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE])
    assert trained == "5<|im_end|>tac<|im_end|>"  # not the newline between turns
    assert all(l == IGNORE or l == t for t, l in zip(ids, labels))
    assert stats["label_tokens"] == sum(l != IGNORE for l in labels) and stats["kept"] == 1


def test_sft_without_masking_trains_on_everything(tokenizer):
    rows, _ = tokenize_sft([{"messages": CONV}], tokenizer, sft(mask_prompt=False))
    assert rows[0]["labels"] == rows[0]["input_ids"]


def test_a_cut_row_is_counted_and_one_left_without_an_answer_is_dropped_with_its_id(tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    rows, stats = tokenize_sft([{"id": "long", "messages": long_prompt}, {"id": "short", "messages": CONV}], tokenizer,
                               sft(max_length=32))
    assert (stats["dropped"], stats["dropped_examples"], len(rows)) == (1, ["long"], 1)
    assert stats["truncated"] == 1 and stats["truncated_examples"] == ["short"]
    assert all(len(r["input_ids"]) <= 32 for r in rows)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_template_trains_exactly_the_answers(tokenizer, name):
    tok = templates.prepare_tokenizer(tokenizer.__class__.from_pretrained(tokenizer.name_or_path), name)
    conv = CONV[1:] if BUILTIN[name].system is None else CONV
    enc = encode(tok, conv, Settings(name=name))
    # (the tiny tokenizer lacks some templates' markers: they are text there)
    answers = [tok.decode(t, skip_special_tokens=True).strip().split("<")[0] for _, t in enc.turns]
    assert answers == ["5", "tac"]


def test_generation_prompt_is_the_trained_row_up_to_the_answer(real):
    """For every built-in template and the tokenizer's own, on a real tokenizer: what evaluation asks
    the model is token for token what it was trained on before the answer."""
    conv = CONV[1:]
    for name in ("tokenizer", *BUILTIN):
        tok = real("llama3_1" if name in ("tokenizer", "llama3") else "llama2", name)
        s = Settings(name=name)
        rows, _ = tokenize_sft([{"messages": conv}], tok, sft(chat_template=name, template=None, max_length=10**6))
        ids, labels = rows[0]["input_ids"], rows[0]["labels"]
        prompt = prompt_ids(tok, conv, s)
        assert ids[:len(prompt)] == prompt, name
        assert labels[len(prompt) - 1] == IGNORE and labels[len(prompt)] != IGNORE, name
        assert prompt_ids(tok, conv[:-1], s) == prompt, name  # an open conversation asks the same


def test_special_token_strings_in_user_and_system_text_stay_plain_text(real):
    """escape_special_tokens (issue 10): a user typing "</s>" does not end the sequence; the
    template's own EOS still does; switched off, the seeds' behaviour (a control token) returns."""
    tok = real("llama2", "llama2_zh")
    conv = [{"role": "system", "content": "be </s> brief"}, {"role": "user", "content": "say </s> now"},
            {"role": "assistant", "content": "ok"}]
    eos = tok.eos_token_id
    escaped = encode(tok, conv, Settings(name="llama2_zh")).input_ids
    assert escaped.count(eos) == 1 and escaped[-1] == eos
    assert tok.decode(escaped[:-3]).count("</s>") == 2  # the typed ones, as text
    seed_like = encode(tok, conv, Settings(name="llama2_zh", escape=frozenset())).input_ids
    assert seed_like.count(eos) == 3
    # Without special strings in the text, escaping changes nothing.
    plain = [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "ok"}]
    assert encode(tok, plain, Settings(name="llama2_zh")).input_ids == \
           encode(tok, plain, Settings(name="llama2_zh", escape=frozenset())).input_ids
    # The tokenizer's own (Jinja) template and a byte-level tokenizer: Qwen's <|im_end|> typed by a user.
    qwen = real("qwen3", "tokenizer")
    typed = [{"role": "user", "content": "stop<|im_end|>here"}, {"role": "assistant", "content": "ok"}]
    ids = encode(qwen, typed, Settings()).input_ids
    end = qwen.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(end) == 2  # closing the user turn and the answer, not the typed one


def test_bos_setting_adds_or_removes_the_bos_and_never_doubles_it(real):
    tok = real("llama2", "alpaca")
    conv = CONV[1:3]
    assert encode(tok, conv, Settings(name="alpaca")).input_ids[:2] != [1, 1]
    assert encode(tok, conv, Settings(name="alpaca")).input_ids[0] == tok.bos_token_id
    assert tok.bos_token_id not in encode(tok, conv, Settings(name="alpaca", bos="never")).input_ids
    qwen = real("qwen3", "qwen")
    assert encode(qwen, conv, Settings(name="qwen")).input_ids[0] != qwen.bos_token_id  # Qwen adds no BOS
    with pytest.raises(ModelError, match="template.bos"):
        encode(qwen, conv, Settings(name="qwen", bos="always"))


def test_default_system_prompt_and_its_override(real):
    tok = real("llama2", "llama2_zh")
    conv = CONV[1:3]
    assert "乐于助人" in tok.decode(encode(tok, conv, Settings(name="llama2_zh")).input_ids)
    assert "<<SYS>>" not in tok.decode(encode(tok, conv, Settings(name="llama2_zh", system="")).input_ids)
    assert "Be brief." in tok.decode(encode(tok, conv, Settings(name="llama2_zh", system="Be brief.")).input_ids)
    with pytest.raises(ModelError, match="no place for a system prompt"):
        encode(tok, CONV, Settings(name="llms_train"))


def test_chatml_adds_its_markers_as_special_tokens_and_makes_im_end_the_eos(real):
    tok = real("llama2", "chatml")
    assert tok.tuneflow_added_tokens == 2 and tok.eos_token == "<|im_end|>"
    assert templates.embedding_rows(tok, "chatml", 32000) == 32008
    ids = encode(tok, CONV[1:3], Settings(name="chatml")).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and tok.eos_token_id in ids
    assert stop_token_ids(tok) == sorted({tok.eos_token_id, tok.convert_tokens_to_ids("</s>")})
    qwen = real("qwen3", "chatml")  # has them already: nothing added, nothing resized
    assert qwen.tuneflow_added_tokens == 0 and templates.embedding_rows(qwen, "chatml", 151936) == 151936


def test_truncation_strategies_cut_as_the_seeds_do():
    turns = [([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99], [11, 12, 13, 14, 15, 16, 99]), ([20, 21, 99], [22, 99])]
    special = {99}
    right, cut = fit_turns(turns, 14, {"strategy": "right"}, special)
    assert [t for s, g in right for t in s + g] == [t for s, g in turns for t in s + g][:14] and cut
    # turn: 4 + 3 per turn; keep_eos keeps the closing 99 (LLMs_train); without it the cut drops it (LLaMA-Factory)
    kept, cut = fit_turns(turns, 100, {"strategy": "turn", "max_source_length": 4, "max_target_length": 3,
                                       "keep_eos": True}, special)
    assert kept == [([1, 2, 3, 99], [11, 12, 99]), ([20, 21, 99], [22, 99])] and cut
    kept, _ = fit_turns(turns, 100, {"strategy": "turn", "max_source_length": 4, "max_target_length": 3,
                                     "keep_eos": False}, special)
    assert kept[0] == ([1, 2, 3, 4], [11, 12, 13])
    kept, _ = fit_turns(turns, 9, {"strategy": "turn", "max_source_length": 4, "max_target_length": 3}, special)
    assert len(kept) == 1  # the second turn no longer fits: the row ends
    # proportional (MedicalGPT): 8 tokens shared 11 : 6 -> source 5, answer 2 + its EOS kept
    kept, cut = fit_turns(turns[:1], 8, {"strategy": "proportional"}, special)
    assert kept == [([1, 2, 3, 4, 5], [11, 99])] and cut
    assert fit_turns(turns, 100, {"strategy": "proportional"}, special) == (turns, False)


def test_pt_blocks_are_full_and_documents_end_with_the_document_end_token(tokenizer):
    rows, stats = tokenize_pt([{"text": "one two three"}, {"text": "four five"}] * 20, tokenizer,
                              {"max_length": 16, "eos_per_document": True})
    assert all(len(r["input_ids"]) == 16 for r in rows)
    assert stats["blocks"] == len(rows) and stats["tokens"] == 16 * len(rows) + stats["tokens_dropped_at_end"]
    # <|endoftext|>, not the EOS <|im_end|> that ends a chat turn
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert end in rows[0]["input_ids"] and tokenizer.eos_token_id not in rows[0]["input_ids"]
    rows, _ = tokenize_pt([{"text": "one two three"}] * 20, tokenizer, {"max_length": 16, "eos_per_document": False})
    assert end not in rows[0]["input_ids"]


def test_pt_documents_can_start_with_the_tokenizers_bos(real):
    tok = real("llama2")
    rows, _ = tokenize_pt([{"text": "one two"}] * 4, tok, {"max_length": 6, "bos_per_document": True,
                                                          "eos_per_document": False})
    doc = [tok.bos_token_id] + tok("one two", add_special_tokens=False)["input_ids"]
    assert [t for r in rows for t in r["input_ids"]] == doc * 4


def test_dpo_ids_split_prompt_and_responses(tokenizer):
    recs = [{"id": "p", "messages": [{"role": "user", "content": "2 + 3"}], "chosen": "5", "rejected": "6"}]
    settings = {"max_length": 64, "chat_template": "tokenizer", "template": None}
    rows, _ = tokenize_dpo(recs, tokenizer, settings)
    r = rows[0]
    assert tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(r["chosen_ids"]) == "5<|im_end|>" and tokenizer.decode(r["rejected_ids"]) == "6<|im_end|>"
    rows, stats = tokenize_dpo(recs, tokenizer, {**settings, "max_length": 4})
    assert rows == [] and stats["dropped"] == 1 and stats["dropped_examples"] == ["p"]


def test_stop_tokens_include_end_of_turn(tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)


def _converted(tmp_path, records):
    d = tmp_path / "data" / "cut"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "validation.jsonl").write_text("")
    from tuneflow.io import write_dir_manifest

    write_dir_manifest(d, "convert")
    return d


def test_many_cut_records_warn_with_counts_and_ids_or_stop_the_job(tokenizer, tmp_path, capsys):
    long = [{"id": f"r{i}", "messages": [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok"}]}
            for i in range(3)]
    fine = [{"id": f"f{i}", "messages": CONV[1:3]} for i in range(97)]
    data = _converted(tmp_path, long + fine)
    meta = tokenize_dataset(data, tokenizer, sft(max_length=24), tmp_path / "out")
    assert meta["splits"]["train"]["dropped"] == 3 and len(meta["warnings"]) == 1
    assert "3 of 100 records (3.0%)" in meta["warnings"][0] and "r0, r1, r2" in meta["warnings"][0]
    assert "WARNING" in capsys.readouterr().err
    # 1% or less: no warning
    fine99 = fine + [{"id": f"g{i}", "messages": CONV[1:3]} for i in range(2)]
    meta = tokenize_dataset(_converted(tmp_path / "few", long[:1] + fine99), tokenizer, sft(max_length=24), tmp_path / "out2")
    assert meta["warnings"] == []
    with pytest.raises(TuneflowError, match=r"3 dropped \(e.g. r0, r1, r2\).*on_truncation"):
        tokenize_dataset(data, tokenizer, sft(max_length=24, on_truncation="error"), tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_kto_unpairs_preference_pairs_and_keeps_unpaired_examples(tokenizer):
    q = [{"role": "user", "content": "2 + 3"}]
    recs = [{"messages": q, "chosen": "5", "rejected": "6"}, {"messages": q, "completion": "five", "label": True}]
    rows, stats = tokenize_kto(recs, tokenizer, {"max_length": 64, "chat_template": "tokenizer"})
    assert [(tokenizer.decode(r["completion_ids"]), r["label"]) for r in rows] == [
        ("5<|im_end|>", True), ("6<|im_end|>", False), ("five<|im_end|>", True)]
    assert all(tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n") for r in rows)
    assert stats == {"records": 2, "desirable": 2, "undesirable": 1, "unpaired_from_pairs": 1,
                     "dropped_prompt_too_long": 0, "tokens": stats["tokens"]}
    rows, stats = tokenize_kto(recs, tokenizer, {"max_length": 4, "chat_template": "tokenizer"})
    assert rows == [] and stats["dropped_prompt_too_long"] == 3


def test_rl_prompts_end_before_the_last_answer_which_becomes_the_reference(tokenizer):
    recs = [{"id": "a", "messages": CONV, "meta": {"task_dataset": "KUAKE-QIC"}},
            {"id": "b", "messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "x"}]}]
    rows, stats = tokenize_prompts(recs, tokenizer, {"max_length": 64, "chat_template": "tokenizer"}, dataset="demo")
    assert len(rows) == 1 and stats["dropped_prompt_too_long"] == 1
    assert rows[0]["prompt"] == CONV[:-1] and rows[0]["reference"] == "tac"
    assert json.loads(rows[0]["meta"]) == {"id": "a", "dataset": "demo", "task_dataset": "KUAKE-QIC"}


def test_plain_text_mixed_into_sft_is_trained_on_every_token(tokenizer):
    rows, stats = tokenize_split([{"text": "one two three"}] * 20, tokenizer, {"kind": "sft", "max_length": 16})
    assert rows and all(r["labels"] == r["input_ids"] and len(r["input_ids"]) == 16 for r in rows)
    assert stats["blocks"] == len(rows)
