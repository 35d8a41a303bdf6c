"""Golden loss masks for the tokenizer's own chat template (the Jinja path of tuneflow.templates) on
the real tokenizers that ship one (Llama-3.1, Qwen3), single- and multi-turn: the tokens that carry
loss are exactly each assistant reply and its end-of-turn token: nothing of the system or user
turns, no role header, no separator after the end of the turn. The built-in templates reproduce
the seeds' own masks instead, tested against re-implementations of the seeds in test_parity.py.
For every template on every real tokenizer, what is trained is what is asked at inference: the
evaluation's generation prompt is the trained row up to the answer, token for token. No row starts
with two BOS.

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


def expected(tokenizer):
    """(replies of SINGLE, replies of MULTI) with the tokenizer's own template: the text of each
    stretch of loss-carrying tokens."""
    own = TOKENIZERS[tokenizer][1]
    return (own[:1], own[1:]) if len(own) == 3 else (own[:1], own)


OWN = [k for k, (_, own) in TOKENIZERS.items() if own]
CASES = [(t, k) for k, (_, own) in TOKENIZERS.items() for t in (("tokenizer",) if own else ()) +
         ("chatml", "llama2", "llama3", "alpaca", "zephyr")]


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


@pytest.mark.parametrize("name", OWN)
def test_only_each_reply_and_its_end_of_turn_token_carry_loss(real_tokenizer, name):
    from tuneflow.templates import stop_token_ids

    tok = prepared(real_tokenizer, "tokenizer", name)
    single, multi = expected(name)
    for messages, replies in ((SINGLE, single), (MULTI, multi)):
        ids, labels = sft_row(tok, "tokenizer", messages)
        assert trained_stretches(tok, ids, labels) == list(replies), (name, len(messages))
        assert all(label in (-100, i) for i, label in zip(ids, labels))
        # the reply ends with one token, and generation stops at it
        ends = [ids[k] for k in range(len(ids)) if labels[k] != -100 and (k + 1 == len(ids) or labels[k + 1] == -100)]
        assert len(ends) == len(replies) and set(ends) <= set(stop_token_ids(tok)), tok.convert_ids_to_tokens(ends)
        bos = tok.bos_token_id
        assert bos is None or [i for i in ids[:2]] != [bos, bos], "two BOS"


def test_a_template_whose_turn_end_is_no_single_token_is_refused(real_tokenizer):
    """The tokenizer's own template must end a reply with one token the model can learn to stop on."""
    tok = prepared(real_tokenizer, None, "llama2")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|end of reply|>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ModelError, match="the model cannot learn to stop on one end-of-turn token"):
        sft_row(tok, "tokenizer", SINGLE)


@pytest.mark.parametrize("template, name", CASES, ids=[f"{k}-{t}" for t, k in CASES])
def test_the_generation_prompt_is_the_trained_row_up_to_the_answer(real_tokenizer, template, name):
    from tuneflow.templates import Settings, prompt_ids  # what evaluation generates from

    tok = prepared(real_tokenizer, template, name)
    for messages in (SINGLE, MULTI):
        ids, labels = sft_row(tok, template, messages)
        last = max(k for k in range(len(labels)) if labels[k] != -100 and (k == 0 or labels[k - 1] == -100))
        assert prompt_ids(tok, messages, Settings(name=template)) == ids[:last], (template, name, len(messages))
