"""Golden loss masks: for each real tokenizer x chat template (the tokenizer's own where it has one,
every built-in), single- and multi-turn, the tokens that carry loss are exactly each assistant reply
and its end-of-turn token: nothing of the system or user turns, no role header, no separator after
the end of the turn. And what is trained is what is asked at inference: the evaluation's
generation prompt is the trained row up to the answer, token for token, and the token each trained
reply ends with is one that generation stops at. No row starts with two BOS.

The expected strings are written out by hand from each format's definition (the specification),
not computed by the code under test."""

from __future__ import annotations

import pytest

from tuneflow.errors import ModelError

SYSTEM = {"role": "system", "content": "Be brief."}
SINGLE = [{"role": "user", "content": "2 + 3"}, {"role": "assistant", "content": "5"}]
MULTI = [SYSTEM, *SINGLE, {"role": "user", "content": "reverse cat"}, {"role": "assistant", "content": "tac"}]
# Qwen3's own template puts an empty <think></think> block before the last answer (as Qwen3 renders
# and generates it with thinking on, its default): we train it as part of that answer, so the
# generation prompt stays "<|im_start|>assistant\n" and the model learns to close the block itself.
THINK = "<think>\n\n</think>\n\n"

# tokenizer -> (EOS text, its own template's replies or None)
TOKENIZERS = {
    "llama2": ("</s>", None),
    "mistral": ("</s>", None),
    "llama3_1": ("<|eot_id|>", ("5<|eot_id|>", "tac<|eot_id|>")),
    "qwen3": ("<|im_end|>", (THINK + "5<|im_end|>", "5<|im_end|>", THINK + "tac<|im_end|>")),
}


def expected(template, tokenizer):
    """(replies of SINGLE, replies of MULTI): the text of each stretch of loss-carrying tokens."""
    eos, own = TOKENIZERS[tokenizer]
    if template == "tokenizer":
        return (own[:1], own[1:]) if len(own) == 3 else (own[:1], own)
    end = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": f" {eos}", "alpaca": eos, "zephyr": eos}[template]
    # Llama-2's format: " answer " then EOS (the space after [/INST] is generated, not prompted)
    reply = (lambda a: f" {a}{end}") if template == "llama2" else (lambda a: f"{a}{end}")
    return (reply("5"),), (reply("5"), reply("tac"))


CASES = [(t, k) for k, (_, own) in TOKENIZERS.items() for t in (("tokenizer",) if own else ()) +
         ("chatml", "llama2", "llama3", "alpaca", "zephyr")]
# A format whose end-of-turn marker the tokenizer does not know as one token (Llama-3's <|eot_id|>
# on the other vocabularies, ChatML's <|im_end|> on those without it) cannot teach the model to
# stop: refused, naming the marker.
REFUSED = {("llama3", k) for k in ("llama2", "mistral", "qwen3")} | {("chatml", k) for k in ("llama2", "mistral", "llama3_1")}


@pytest.fixture(scope="module")
def tokenizers(real_tokenizer):
    from transformers import AutoTokenizer

    return {k: AutoTokenizer.from_pretrained(real_tokenizer(k)) for k in TOKENIZERS}


def prepared(real_tokenizer, template, name):
    from tuneflow.models import load_tokenizer

    return load_tokenizer(real_tokenizer(name), {}, template)


def sft_row(tok, template, messages):
    from tuneflow.tokenize import tokenize_split

    rows, _ = tokenize_split([{"id": "x", "messages": messages}], tok,
                             {"kind": "sft", "max_length": 512, "chat_template": template, "mask_prompt": True})
    return rows[0]["input_ids"], rows[0]["labels"]


def trained_stretches(tok, ids, labels) -> list[str]:
    from tuneflow.show_example import pieces

    return [text for text, trained in pieces(tok, ids, labels) if trained]


@pytest.mark.parametrize("template, name", CASES, ids=[f"{k}-{t}" for t, k in CASES])
def test_only_each_reply_and_its_end_of_turn_token_carry_loss(real_tokenizer, template, name):
    if (template, name) in REFUSED:
        with pytest.raises(ModelError, match="the model cannot learn to stop on one end-of-turn token"):
            sft_row(prepared(real_tokenizer, template, name), template, SINGLE)
        return
    tok = prepared(real_tokenizer, template, name)
    single, multi = expected(template, name)
    for messages, replies in ((SINGLE, single), (MULTI, multi)):
        ids, labels = sft_row(tok, template, messages)
        assert trained_stretches(tok, ids, labels) == list(replies), (template, name, len(messages))
        assert all(label in (-100, i) for i, label in zip(ids, labels))
        # the reply ends with one token, and generation stops at it
        from tuneflow.templates import stop_token_ids

        ends = [ids[k] for k in range(len(ids)) if labels[k] != -100 and (k + 1 == len(ids) or labels[k + 1] == -100)]
        assert len(ends) == len(replies) and set(ends) <= set(stop_token_ids(tok)), tok.convert_ids_to_tokens(ends)
        bos = tok.bos_token_id
        assert bos is None or [i for i in ids[:2]] != [bos, bos], "two BOS"


@pytest.mark.parametrize("template, name", [c for c in CASES if c not in REFUSED],
                         ids=[f"{k}-{t}" for t, k in CASES if (t, k) not in REFUSED])
def test_the_generation_prompt_is_the_trained_row_up_to_the_answer(real_tokenizer, template, name):
    from tuneflow.tokenize import prompt_ids  # what evaluation generates from

    tok = prepared(real_tokenizer, template, name)
    for messages in (SINGLE, MULTI):
        ids, labels = sft_row(tok, template, messages)
        last = max(k for k in range(len(labels)) if labels[k] != -100 and (k == 0 or labels[k - 1] == -100))
        assert prompt_ids(tok, messages) == ids[:last], (template, name, len(messages))
