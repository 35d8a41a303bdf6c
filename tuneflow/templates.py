"""Chat templates: the tokenizer's own (`chat_template: tokenizer`) or a named built-in one.

Built-ins are Jinja templates in the format transformers' `apply_chat_template` renders, so one
code path tokenizes, trains and generates with all of them. Each ends the assistant turn with a
marker that must be one token of the tokenizer (`end_of_turn`): it is the last trained token of
every answer and a stop token when generating, so the model learns to stop and does.
"""

from __future__ import annotations

import functools

from tuneflow.errors import ModelError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA2 = (
    "{% set bos = bos_token if bos_token is defined and bos_token else '' %}"
    "{% set eos = eos_token if eos_token is defined and eos_token else '' %}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.index0 == 0 and system %}{{ bos + '[INST] <<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos }}{% endif %}"
    "{% endfor %}"
)

LLAMA3 = (
    "{% set bos = bos_token if bos_token is defined and bos_token else '' %}"
    "{% set eos = eos_token if eos_token is defined and eos_token else '' %}"
    "{{ bos }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Stanford Alpaca / Chinese-LLaMA-Alpaca prompt format.
ALPACA = (
    "{% set bos = bos_token if bos_token is defined and bos_token else '' %}"
    "{% set eos = eos_token if eos_token is defined and eos_token else '' %}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% set loop_messages = messages[1:] %}"
    "{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' }}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{% else %}{{ message['content'] + eos + '\n\n' }}{% endif %}"
    "{% endfor %}"
)

ZEPHYR = (
    "{% set bos = bos_token if bos_token is defined and bos_token else '' %}"
    "{% set eos = eos_token if eos_token is defined and eos_token else '' %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

BUILTIN = {"chatml": CHATML, "llama2": LLAMA2, "llama3": LLAMA3, "alpaca": ALPACA, "zephyr": ZEPHYR}
# Tokens that end an assistant turn, used as extra stop tokens when generating.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>")


def apply_chat_template_setting(tokenizer, name: str, where: str = "chat_template"):
    """Install the configured template on `tokenizer` (in place) and return it."""
    if name == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"the tokenizer at {getattr(tokenizer, 'name_or_path', '?')} has no chat template, but config key "
                f"'{where}' is 'tokenizer'; set it to one of the built-in templates ({', '.join(BUILTIN)})")
        return tokenizer
    tokenizer.chat_template = BUILTIN[name]
    return tokenizer


def render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


PROBE = [{"role": "user", "content": "Q7x"}, {"role": "assistant", "content": "A7x"}]


def end_of_turn(tokenizer) -> str:
    """The text the installed template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`,
    ` </s>`...), found by rendering a probe conversation; what follows it (a newline before the next
    turn) is a separator, not part of the turn."""
    return _end_of_turn(tokenizer, tokenizer.chat_template)


@functools.lru_cache(maxsize=16)
def _end_of_turn(tokenizer, template: str) -> str:
    text = render(tokenizer, PROBE)
    after = text[text.rindex(PROBE[1]["content"]) + len(PROBE[1]["content"]):].rstrip()
    if not after:
        raise ModelError(f"the chat template of {getattr(tokenizer, 'name_or_path', '?')} ends an assistant turn with "
                         "nothing: a model trained with it cannot learn where its answer ends (end-of-turn token)")
    ids = tokenizer(after.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelError(f"the chat template ends an assistant turn with {after.strip()!r}, which the tokenizer of "
                         f"{getattr(tokenizer, 'name_or_path', '?')} splits into {len(ids)} tokens: the model cannot "
                         "learn to stop on one end-of-turn token; use a template built for this tokenizer")
    return after


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages`; return the text and the character spans of every assistant turn.

    A span runs from the end of the generation prompt before the turn (so what is trained follows
    exactly what is asked at inference) to the end of the turn's end-of-turn marker (the separator
    after it is not trained). A template may render earlier turns differently from the last one:
    Qwen3's own puts an empty <think></think> block before the last answer only, and it is part of
    that answer, as the model generates it after the prompt "<|im_start|>assistant\n".
    """
    text = render(tokenizer, messages)
    marker = end_of_turn(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        if not text.startswith(prefix):
            raise ModelError("the chat template renders the conversation before an answer differently from the "
                             "generation prompt it gives at inference, so what would be trained is not what the model "
                             "is asked; use a built-in chat_template")
        content = m["content"].strip()
        at = text.find(content, len(prefix)) if content else len(prefix)
        end = text.find(marker, at + len(content)) if at >= 0 else -1
        if end < 0:
            raise ModelError(f"the chat template does not render assistant turn {i} as its content followed by "
                             f"{marker!r}; use a built-in chat_template or set mask_prompt: false")
        spans.append((len(prefix), end + len(marker)))
    return text, spans


def stop_token_ids(tokenizer) -> list[int]:
    """EOS, the installed template's end-of-turn token and the usual end-of-turn tokens."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN:
        if tok in vocab:
            ids.add(vocab[tok])
    if getattr(tokenizer, "chat_template", None):
        ids.update(tokenizer(end_of_turn(tokenizer).strip(), add_special_tokens=False)["input_ids"])
    return sorted(ids)
