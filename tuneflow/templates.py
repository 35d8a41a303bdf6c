"""Prompt formats as data, and the one engine that turns conversations into token ids.

Tokenizing (SFT, DPO), the evaluation's teacher-forced loss and its generation prompt all go through
`encode` here, so what is trained and what is asked at evaluation cannot drift apart: the
generation prompt is, token for token, the trained row up to the answer (`prompt_ids`).

A built-in `Template` is a list of pieces per place in the conversation. A piece is a string with
placeholders, or the marker BOS:

  {content}   the message's text (system, user or assistant)
  {system}    the template's system block (with the system text in it), or nothing
  {bos} {eos} the tokenizer's BOS / EOS token text (parsed back into the one token id)
  BOS         the tokenizer's BOS id where the tokenizer itself adds one at the start of a text
              (`template.bos` overrides: always / never)

The seeds differ in *where one tokenizer call ends and the next begins*, and with SentencePiece
tokenizers that changes the ids (each call starts a new word: "\n" alone is ["▁", "\n"]). So a
template says how its pieces are encoded:
  joined=False  every piece is its own tokenizer call, as Chinese-LLaMA-Alpaca-2, LLaMA-Factory,
                MedicalGPT and LLMs_train do (source and target tokenized separately);
  joined=True   the pieces of the whole conversation are one text and one tokenizer call, as
                transformers' apply_chat_template and TRL do; labels come from character offsets.
`chat_template: tokenizer` (the tokenizer's own Jinja template) is always joined.

Special-token strings inside dataset text (a user typing "</s>" or "<|im_end|>") are tokenized as
plain text for the roles in `template.escape_special_tokens` (default: system and user): only the
template's own text produces control tokens.

For the tokenizer's own template, each assistant turn is trained up to and including its
end-of-turn marker (`end_of_turn`: the last trained token of every answer and a stop token when
generating); the separator after it is in the row but never trained.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field

from tuneflow.errors import ModelError

IGNORE = -100


class _Bos:
    def __repr__(self):
        return "BOS"


BOS = _Bos()


@dataclass(frozen=True)
class Template:
    name: str
    origin: str                          # whose format this is (docs, README)
    first_prompt: tuple                  # pieces of the first user turn (with {system})
    prompt: tuple                        # pieces of every later user turn
    response: tuple                      # pieces of an assistant turn: what is trained
    system: tuple | None = None          # the system block; None: the format has no system prompt
    default_system: str | None = None    # used when a conversation has no system message
    joined: bool = False
    # Tokens the format needs as single special tokens, as transformers' add_special_tokens takes
    # them (eos_token / pad_token / additional_special_tokens); the model's embeddings are resized
    # to len(tokenizer) rounded up to `resize_multiple`.
    special_tokens: dict = field(default_factory=dict)
    resize_multiple: int = 8


def _t(name, origin, first_prompt, prompt, response, **kw) -> Template:
    return Template(name, origin, tuple(first_prompt), tuple(prompt), tuple(response), **kw)


LLAMA2_ZH_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
CHATML_TURN = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"

BUILTIN: dict[str, Template] = {t.name: t for t in (
    _t("chatml", "ChatML (OpenAI / Qwen): <|im_start|> and <|im_end|> are added as special tokens when the "
                 "tokenizer lacks them, <|im_end|> becomes EOS; one text, as apply_chat_template renders it",
       ["{system}" + CHATML_TURN], [CHATML_TURN], ["{content}<|im_end|>\n"],
       system=("<|im_start|>system\n{content}<|im_end|>\n",), joined=True,
       special_tokens={"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}),
    _t("chatml_peft", "huggingface/peft examples/sft (utils.py, --chat_template_format chatml): the same text as "
                      "chatml, but '<|im_start|>user', '<|im_start|>assistant', '<|im_start|>system' are whole "
                      "special tokens, <|im_end|> is EOS and <pad> the pad token",
       ["{system}" + CHATML_TURN], [CHATML_TURN], ["{content}<|im_end|>\n"],
       system=("<|im_start|>system\n{content}<|im_end|>\n",), joined=True,
       special_tokens={"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
                       "additional_special_tokens": ["<|im_start|>user", "<|im_start|>assistant",
                                                     "<|im_start|>system", "<|im_end|>", "<s>", "<pad>"]}),
    _t("llama2", "Meta Llama-2 chat (transformers' Llama-2 chat template): ' answer ' then EOS",
       [BOS, "[INST] {system}{content} [/INST]"], [BOS, "[INST] {content} [/INST]"], [" {content} {eos}"],
       system=("<<SYS>>\n{content}\n<</SYS>>\n\n",), joined=True),
    _t("llama2_zh", "ymcui/Chinese-LLaMA-Alpaca-2 scripts/training/build_dataset.py (LLaMA-Factory 'llama2_zh'): "
                    "its system prompt always, source and target tokenized separately, target = answer + EOS",
       [BOS, "[INST] {system}{content} [/INST]"], [BOS, "[INST] {content} [/INST]"], ["{content}{eos}"],
       system=("<<SYS>>\n{content}\n<</SYS>>\n\n",), default_system=LLAMA2_ZH_SYSTEM),
    _t("llama3", "Meta Llama-3 instruct; one text, as apply_chat_template renders it",
       [BOS, "{system}<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n"],
       ["<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"], ["{content}<|eot_id|>"],
       system=("<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",), joined=True),
    _t("alpaca", "hiyouga/LLaMA-Factory 2023 (src/llmtuner/extras/template.py 'alpaca'): BOS, system, '\\n\\n', "
                 "prompt, each its own tokenizer call; later turns start with '\\n\\n' + BOS",
       [BOS, "{system}", "### Instruction:\n{content}\n\n### Response:\n"],
       ["\n\n", BOS, "### Instruction:\n{content}\n\n### Response:\n"], ["{content}", "{eos}"],
       system=("{content}", "\n\n"), default_system=ALPACA_SYSTEM),
    _t("default", "hiyouga/LLaMA-Factory 2023 (src/llmtuner/extras/template.py 'default'): BOS, system, '\\n', "
                  "'Human: ...\\nAssistant: ', each its own tokenizer call",
       [BOS, "{system}", "Human: {content}\nAssistant: "], ["\n", BOS, "Human: {content}\nAssistant: "],
       ["{content}", "{eos}"], system=("{content}", "\n"), default_system=VICUNA_SYSTEM),
    _t("vicuna", "shibing624/MedicalGPT template.py 'vicuna' (its default): system + '</s>', 'USER: ... ASSISTANT:', "
                 "answer + EOS after every turn",
       [BOS, "{system}USER: {content} ASSISTANT:"], ["USER: {content} ASSISTANT:"], ["{content}", "{eos}"],
       system=("{content}</s>",), default_system=VICUNA_SYSTEM),
    _t("qwen", "shibing624/MedicalGPT template.py 'qwen': its system prompt always, answer + EOS after every "
               "turn, a blank line after the system block",
       [BOS, "{system}" + CHATML_TURN], ["\n" + CHATML_TURN], ["{content}", "{eos}"],
       system=("<|im_start|>system\n{content}<|im_end|>\n\n",), default_system="You are a helpful assistant."),
    _t("llms_train", "5663015/LLMs_train data_generate.py (chatglm_tokenize): no template; the input, EOS, then "
                     "BOS + target + EOS (BOS included in the trained part)",
       ["{content}{eos}"], ["{content}{eos}"], ["{bos}{content}{eos}"]),
    _t("zephyr", "HuggingFaceH4 zephyr; one text, as apply_chat_template renders it",
       ["{system}<|user|>\n{content}{eos}\n<|assistant|>\n"], ["<|user|>\n{content}{eos}\n<|assistant|>\n"],
       ["{content}{eos}\n"], system=("<|system|>\n{content}{eos}\n",), joined=True),
)}
NAMES = ("tokenizer", *BUILTIN)
# Tokens that end an assistant turn, used as extra stop tokens when generating.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>")


@dataclass(frozen=True)
class Settings:
    """The `template` block of the config (what the engine needs of it)."""
    name: str = "tokenizer"
    system: str | None = None                 # None: the template's own default; "": none
    bos: str = "auto"                         # auto | always | never
    escape: frozenset = frozenset({"system", "user"})

    @classmethod
    def from_config(cls, name: str, block: dict | None) -> "Settings":
        block = block or {}
        return cls(name=name, system=block.get("system"), bos=block.get("bos", "auto"),
                   escape=frozenset(block.get("escape_special_tokens", ("system", "user"))))


# -- the tokenizer ----------------------------------------------------------------------------------

def prepare_tokenizer(tokenizer, name: str, where: str = "chat_template"):
    """Make `tokenizer` ready for template `name` (in place) and return it: the tokenizer's own
    Jinja template must exist; a built-in's special tokens are added (EOS / pad as it says).
    `tokenizer.tuneflow_added_tokens` counts the tokens added (their embeddings are resized)."""
    before = len(tokenizer)
    if name == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"the tokenizer at {getattr(tokenizer, 'name_or_path', '?')} has no chat template, but config key "
                f"'{where}' is 'tokenizer'; set it to one of the built-in templates ({', '.join(BUILTIN)})")
    elif BUILTIN[name].special_tokens:
        wanted = dict(BUILTIN[name].special_tokens)
        # transformers 5 calls additional_special_tokens extra_special_tokens
        wanted["extra_special_tokens"] = wanted.pop("additional_special_tokens", [])
        tokenizer.add_special_tokens(wanted, replace_extra_special_tokens=False)
    tokenizer.tuneflow_added_tokens = getattr(tokenizer, "tuneflow_added_tokens", 0) + len(tokenizer) - before
    _special_strings.cache_clear()
    _adds_bos.cache_clear()
    return tokenizer


def render(tokenizer, messages, add_generation_prompt=False, tools=None) -> str:
    """The tokenizer's Jinja template applied; `tools`: the functions a conversation with tool calls
    offers (see supports_tools)."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             tools=tools)
    except TemplateError as e:  # raise_exception() in the template, a syntax error, an undefined value
        roles = "/".join(m["role"] for m in messages)
        raise ModelError(f"the chat template of {getattr(tokenizer, 'name_or_path', '?')} failed on a conversation "
                         f"({roles}): {type(e).__name__}: {e}; use data the template accepts or set config key "
                         f"'chat_template' to a built-in template ({', '.join(BUILTIN)})") from None


def embedding_rows(tokenizer, name: str, vocab_size: int) -> int:
    """How many embedding rows the model needs for this tokenizer and template (>= vocab_size)."""
    if len(tokenizer) <= vocab_size:
        return vocab_size
    multiple = BUILTIN[name].resize_multiple if name in BUILTIN else 8
    return -(-len(tokenizer) // multiple) * multiple


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


@functools.lru_cache(maxsize=16)
def _special_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special-token strings, longest first (what may turn text into control tokens)."""
    found = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    found |= {t for t in tokenizer.all_special_tokens if t}
    return tuple(sorted(found, key=len, reverse=True))


@functools.lru_cache(maxsize=16)
def _adds_bos(tokenizer) -> bool:
    """Does the tokenizer put its BOS at the start of a text by itself (Llama: yes; Qwen: no)?"""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _bos_ids(tokenizer, settings: Settings) -> list[int]:
    if settings.bos == "never":
        return []
    if settings.bos == "always":
        if tokenizer.bos_token_id is None:
            raise ModelError(f"config key 'template.bos' is 'always' but the tokenizer at "
                             f"{getattr(tokenizer, 'name_or_path', '?')} has no BOS token")
        return [tokenizer.bos_token_id]
    return [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []


# -- from a conversation to parts -------------------------------------------------------------------

@dataclass
class Part:
    """Text of one tokenizer call (pieces mode) or a stretch of the one text (joined mode)."""
    text: str = ""
    role: str | None = None    # whose content this is; None: the template's own text
    ids: list | None = None    # a BOS marker: ids given directly


def _expand(piece, content: str, role: str, system_parts: list[list[Part]], tokenizer, bos_ids) -> list[list[Part]]:
    """One piece -> the tokenizer calls it makes (a list of calls, each a list of parts)."""
    if piece is BOS:
        return [[Part(ids=list(bos_ids))]] if bos_ids else []
    if piece == "{system}":  # the system block as its own tokenizer calls
        return [list(call) for call in system_parts]
    parts: list[Part] = []
    rest = piece
    while rest:
        cut = min(((rest.find(ph), ph) for ph in ("{content}", "{system}", "{bos}", "{eos}") if ph in rest),
                  default=(len(rest), None))
        if cut[0]:
            parts.append(Part(rest[:cut[0]]))
        if cut[1] is None:
            break
        if cut[1] == "{content}":
            parts.append(Part(content, role))
        elif cut[1] == "{system}":
            for call in system_parts:
                parts.extend(call)
        else:
            token = tokenizer.bos_token if cut[1] == "{bos}" else tokenizer.eos_token
            parts.append(Part(token or ""))
        rest = rest[cut[0] + len(cut[1]):]
    return [parts] if parts else []


@dataclass
class Turn:
    source: list   # tokenizer calls (lists of parts) before the answer: system, user turn, template text
    target: list   # tokenizer calls of the answer (trained); empty for a generation prompt


def conversation_turns(tokenizer, messages, settings: Settings, *, open_end: bool = False) -> list[Turn]:
    """Split a conversation (system?, user, assistant, user, assistant, ...) into turns of
    tokenizer calls, as the template says. open_end: the conversation ends with a user turn to
    answer (generation / DPO prompt)."""
    template = BUILTIN[settings.name]
    bos_ids = _bos_ids(tokenizer, settings)
    messages = list(messages)
    system = settings.system if settings.system is not None else template.default_system
    if messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"]
    system_parts: list[list[Part]] = []
    if system:
        if template.system is None:
            raise ModelError(f"chat template '{template.name}' has no place for a system prompt, but a conversation "
                             "has one (a system turn, datasets.<name>.system or template.system); remove it or pick "
                             "a template with a system block")
        for piece in template.system:
            system_parts += _expand(piece, system, "system", [], tokenizer, bos_ids)
    turns = []
    for i in range(0, len(messages), 2):
        user = messages[i]
        if user["role"] != "user":
            raise ModelError(f"a conversation must alternate user and assistant turns (turn {i} is {user['role']})")
        pieces = template.first_prompt if i == 0 else template.prompt
        source = [call for p in pieces for call in _expand(p, user["content"], "user", system_parts, tokenizer, bos_ids)]
        target = []
        if i + 1 < len(messages):
            answer = messages[i + 1]
            target = [call for p in template.response
                      for call in _expand(p, answer["content"], "assistant", [], tokenizer, bos_ids)]
        turns.append(Turn(source, target))
    if not open_end and (not turns or not turns[-1].target):
        raise ModelError("a training conversation must end with an assistant turn")
    return turns


# -- from parts to ids ------------------------------------------------------------------------------

def _split_template_specials(tokenizer, parts: list[Part]):
    """Chunks of (text, offset, special_id|None): the text cut where the *template's* own text
    holds a special token; content is never cut (it is tokenized with special tokens as text)."""
    specials = _special_strings(tokenizer)
    chunks, buf, buf_start, pos = [], "", 0, 0
    for part in parts:
        if part.role is not None:
            buf += part.text
            pos += len(part.text)
            continue
        text, i = part.text, 0
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit is None:
                buf += text[i]
                i += 1
                continue
            if buf:
                chunks.append((buf, buf_start, None))
            chunks.append((hit, pos + i, tokenizer.convert_tokens_to_ids(hit)))
            i += len(hit)
            buf, buf_start = "", pos + i
        pos += len(text)
    if buf:
        chunks.append((buf, buf_start, None))
    return chunks


def encode_parts(tokenizer, parts: list[Part], escape: frozenset, offsets: bool = False):
    """Token ids (and character offsets into the parts' concatenated text) of one tokenizer call."""
    if any(p.ids is not None for p in parts):
        assert len(parts) == 1, "a BOS marker is its own tokenizer call"
        return (list(parts[0].ids), [(0, 0)] * len(parts[0].ids)) if offsets else list(parts[0].ids)
    text = "".join(p.text for p in parts)
    needs_escape = any(p.role in escape and any(s in p.text for s in _special_strings(tokenizer)) for p in parts)
    if not needs_escape:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
        return (enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]) if offsets else enc["input_ids"]
    ids, offs = [], []
    for chunk, start, special in _split_template_specials(tokenizer, parts):
        if special is not None:
            ids.append(special)
            offs.append((start, start + len(chunk)))
            continue
        enc = tokenizer(chunk, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=offsets)
        ids += enc["input_ids"]
        if offsets:
            offs += [(start + a, start + b) for a, b in enc["offset_mapping"]]
    return (ids, offs) if offsets else ids


@dataclass
class Encoded:
    """A tokenized conversation: per turn the ids of its source (prompt) and target (answer)."""
    turns: list[tuple[list[int], list[int]]]
    tail: list[int] = field(default_factory=list)  # after the last answer (a Jinja template's closing newline): never trained

    @property
    def input_ids(self) -> list[int]:
        return [t for s, g in self.turns for t in s + g] + self.tail


def _jinja_turns(tokenizer, messages, open_end: bool, tools=None) -> list[Turn]:
    """The tokenizer's own Jinja template as turns of one joined text. Each assistant turn runs from
    the end of the generation prompt before it (so what is trained follows exactly what is asked at
    inference) to the end of its end-of-turn marker. A template may render earlier turns differently
    from the last one: Qwen3's own puts an empty <think></think> block before the last answer only,
    and it is part of that answer, as the model generates it after "<|im_start|>assistant\n". The
    text after the last answer (a closing newline) is returned as a last turn with no target.
    Assistant turns that call tools are trained too (up to their end-of-turn marker); tool results
    are not."""
    text = render(tokenizer, messages, open_end, tools)
    marker = end_of_turn(tokenizer) if any(m["role"] == "assistant" for m in messages) else ""
    cuts = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], True, tools)
        if not text.startswith(prefix):
            raise ModelError("the chat template renders the conversation before an answer differently from the "
                             "generation prompt it gives at inference, so what would be trained is not what the model "
                             "is asked; use a built-in chat_template")
        content = (m.get("content") or "").strip()
        at = text.find(content, len(prefix)) if content else len(prefix)
        end = text.find(marker, at + len(content)) if at >= 0 else -1
        if end < 0:
            raise ModelError(f"the chat template does not render assistant turn {i} as its content followed by "
                             f"{marker!r}; use a built-in chat_template or set mask_prompt: false")
        cuts.append((len(prefix), end + len(marker)))
    roles = _content_roles(text, messages)
    turns, pos = [], 0
    for a, b in cuts:
        turns.append(Turn([_role_parts(text, pos, a, roles)], [_role_parts(text, a, b, roles)]))
        pos = b
    if pos < len(text) or not turns:
        turns.append(Turn([_role_parts(text, pos, len(text), roles)] if pos < len(text) else [], []))
    return turns


def _content_roles(text: str, messages) -> list[tuple[int, int, str]]:
    """Where each message's content sits in the rendered text (found in order; a template that
    rewrites content leaves that message unmarked, so its special tokens are not escaped)."""
    found, pos = [], 0
    for m in messages:
        content = m.get("content")
        at = text.find(content, pos) if isinstance(content, str) and content else -1
        if at >= 0:
            found.append((at, at + len(content), m["role"]))
            pos = at + len(content)
    return found


def _role_parts(text, start, end, roles) -> list[Part]:
    parts, pos = [], start
    for a, b, role in roles:
        a, b = max(a, start), min(b, end)
        if a >= b:
            continue
        if a > pos:
            parts.append(Part(text[pos:a]))
        parts.append(Part(text[a:b], role))
        pos = b
    if pos < end:
        parts.append(Part(text[pos:end]))
    return parts


def encode(tokenizer, messages, settings: Settings, *, open_end: bool = False, tools=None) -> Encoded:
    """Tokenize a conversation the way the template says (module docstring); nothing is cut here."""
    if settings.name == "tokenizer":
        turns, joined = _jinja_turns(tokenizer, messages, open_end, tools), True
    else:
        turns, joined = conversation_turns(tokenizer, messages, settings, open_end=open_end), BUILTIN[settings.name].joined
    has_tail = not open_end and len(turns) > 1 and not turns[-1].target
    if not joined:
        out = [([t for call in turn.source for t in encode_parts(tokenizer, call, settings.escape)],
                [t for call in turn.target for t in encode_parts(tokenizer, call, settings.escape)]) for turn in turns]
        return _encoded(tokenizer, out, has_tail)
    # Joined: one text, one tokenizer call; a token belongs to the turn part its first character
    # is in, and is trained only when it lies wholly inside the answer.
    parts, bounds = [], []
    for k, turn in enumerate(turns):
        for side, calls in (("s", turn.source), ("t", turn.target)):
            start = sum(len(p.text) if p.ids is None else 0 for p in parts)
            for call in calls:
                for p in call:
                    parts.append(p if p.ids is None else Part(tokenizer.decode(p.ids)))
            end = sum(len(p.text) for p in parts)
            bounds.append((k, side, start, end))
    ids, offs = encode_parts(tokenizer, parts, settings.escape, offsets=True)
    out = [([], []) for _ in turns]
    starts = [x[2] for x in bounds]  # the parts are contiguous, in order: the last that starts at or before a
    for tok, (a, b) in zip(ids, offs):
        i = bisect.bisect_right(starts, a) - 1
        k, side, _, end = bounds[i] if i >= 0 and a < bounds[i][3] else bounds[-1]
        if side == "t" and b <= end:
            out[k][1].append(tok)
        elif side == "t" and k + 1 < len(out):  # starts in the answer but runs past it: not trained
            out[k + 1][0].append(tok)
        else:
            out[k][0 if side == "s" else 1].append(tok)
    return _encoded(tokenizer, out, has_tail)


def _encoded(tokenizer, turns, has_tail: bool) -> Encoded:
    turns = _no_double_bos(tokenizer, turns)
    tail = turns.pop()[0] if has_tail else []
    return Encoded(turns, tail)


def _no_double_bos(tokenizer, turns):
    """A template whose text starts with the BOS token plus the tokenizer's own BOS would begin
    with two: keep one."""
    bos = tokenizer.bos_token_id
    if bos is not None and turns and turns[0][0][:2] == [bos, bos]:
        turns[0] = (turns[0][0][1:], turns[0][1])
    return turns


def prompt_ids(tokenizer, messages, settings: Settings) -> list[int]:
    """The generation prompt for the last assistant turn of `messages` (or for an open
    conversation ending with a user turn): exactly the trained row up to that answer."""
    if messages and messages[-1]["role"] == "assistant":
        enc = encode(tokenizer, messages, settings)
        return [t for s, g in enc.turns[:-1] for t in s + g] + enc.turns[-1][0]
    return encode(tokenizer, messages, settings, open_end=True).input_ids


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool definitions (`tools`) and calls (`tool_calls`): the
    tokenizer's own templates of tool-calling models do (Qwen3, ...); the built-in ones do not."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates, e.g. {"default": ..., "tool_use": ...}
        template = "".join(template.values())
    return "tools" in template and "tool_calls" in template
