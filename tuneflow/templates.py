"""Chat templates: the tokenizer's own (`chat_template: tokenizer`) or a named built-in one.

Built-ins are Jinja templates in the format transformers' `apply_chat_template` renders, so one
code path tokenizes, trains and generates with all of them. Each ends the assistant turn with a
marker that is part of the trained span, so the model learns to stop.
"""

from __future__ import annotations

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


def render(tokenizer, messages, add_generation_prompt=False, tools=None) -> str:
    """`tools`: the functions a conversation with tool calls offers (see supports_tools)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         tools=tools)


def assistant_spans(tokenizer, messages, tools=None) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages`; return the text and the character spans of every assistant turn.

    A span runs from the end of the generation prompt before the turn to the end of the turn as
    rendered (end-of-turn marker included). Assistant turns that call tools are trained too; tool
    results are not.
    """
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not text.startswith(prefix) or not text.startswith(upto):
            raise ModelError("the chat template renders a conversation differently when more turns follow, so the "
                             "prompt tokens cannot be masked; use a built-in chat_template or set mask_prompt: false")
        spans.append((len(prefix), len(upto)))
    return text, spans


def stop_token_ids(tokenizer) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN:
        if tok in vocab:
            ids.add(vocab[tok])
    return sorted(ids)


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool definitions (`tools`) and calls (`tool_calls`): the
    tokenizer's own templates of tool-calling models do (Qwen3, ...); the built-in ones do not."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates, e.g. {"default": ..., "tool_use": ...}
        template = "".join(template.values())
    return "tools" in template and "tool_calls" in template
