"""Raw formats -> the canonical record schema.

Canonical records (one JSON object per line in results/data/<name>/{train,validation}.jsonl):
  instruction data:  {"id", "messages": [{"role": "system"|"user"|"assistant", "content"}...], "meta"?}
  preference pairs:  {"id", "messages": [...prompt, ending with a user turn], "chosen", "rejected"}
  unpaired (KTO):    {"id", "messages": [...prompt, ending with a user turn], "completion", "label"}
  pre-training text: {"id", "text"}
`meta` carries what evaluation needs (PromptCBLUE: task_type, task_dataset, answer_choices).
A converter raises RecordError with a short problem; the caller adds file and line.
"""

from __future__ import annotations


class RecordError(ValueError):
    """One record is malformed; the message says which field and why."""


FORMATS = ("alpaca", "promptcblue", "sharegpt", "text", "preference", "unpaired")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                "system": "system"}


def _field(rec, columns, name, *, required=True, kind=str, default=None, allow_empty=False):
    """Fetch canonical field `name` (possibly renamed by `columns`) with a type check."""
    src = columns.get(name, name)
    if src not in rec or rec[src] is None:
        if required:
            mapped = f" (mapped from '{src}')" if src != name else ""
            raise RecordError(f"missing field '{src}'{mapped}")
        return default
    value = rec[src]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"field '{src}' must be {expected}, got {type(value).__name__}")
    if required and not allow_empty and isinstance(value, str) and not value.strip():
        raise RecordError(f"field '{src}' is empty")
    return value


def _require_dict(rec):
    if not isinstance(rec, dict):
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")


def _history(rec, columns):
    history = _field(rec, columns, "history", required=False, kind=list, default=[])
    turns = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"field 'history' item {i} must be a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _system(rec, columns, default_system):
    system = _field(rec, columns, "system", required=False, default=None)
    system = system if system and system.strip() else default_system
    return [{"role": "system", "content": system}] if system else []


def convert_alpaca(rec, columns, system=None):
    _require_dict(rec)
    instruction = _field(rec, columns, "instruction")
    inp = _field(rec, columns, "input", required=False, default="")
    output = _field(rec, columns, "output")
    prompt = f"{instruction}\n{inp}" if inp.strip() else instruction
    messages = _system(rec, columns, system) + _history(rec, columns)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def convert_promptcblue(rec, columns, system=None):
    _require_dict(rec)
    inp = _field(rec, columns, "input")
    target = _field(rec, columns, "target")
    # The PromptCBLUE README calls the field "type"; the released files say "task_type".
    task_type = _field(rec, columns, "task_type", required=False, default=None)
    if task_type is None:
        task_type = _field(rec, {}, "type", required=False, default=None)
    meta = {
        "sample_id": _field(rec, columns, "sample_id", required=False, kind=(str, int), default=None),
        "task_type": task_type,
        "task_dataset": _field(rec, columns, "task_dataset", required=False, default=None),
        "answer_choices": _field(rec, columns, "answer_choices", required=False, kind=list, default=[]),
    }
    if meta["sample_id"] is not None:
        meta["sample_id"] = str(meta["sample_id"])
    messages = ([{"role": "system", "content": system}] if system else [])
    messages += [{"role": "user", "content": inp}, {"role": "assistant", "content": target}]
    return {"messages": messages, "meta": meta}


def _conversation(turns, where="conversations", allow_trailing_user=False):
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field '{where}' must be a non-empty list of {{from, value}} turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{where}[{i}] must be an object with 'from' and 'value'")
        role_raw = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = ROLE_ALIASES.get(str(role_raw).lower()) if role_raw is not None else None
        if role is None:
            raise RecordError(f"{where}[{i}] has unsupported role {role_raw!r} (expected human/gpt/system)")
        if not isinstance(content, str):
            raise RecordError(f"{where}[{i}].value must be a string, got {type(content).__name__}")
        if role == "system":
            if messages:
                raise RecordError(f"{where}[{i}] is a system turn after the conversation started")
        elif not content.strip():
            raise RecordError(f"{where}[{i}] ({role_raw}) is empty")
        messages.append({"role": role, "content": content})
    body = [m for m in messages if m["role"] != "system"]
    expected = "user"
    for i, m in enumerate(body):
        if m["role"] != expected:
            raise RecordError(f"field '{where}' must alternate human/gpt turns starting with human (turn {i} is {m['role']})")
        expected = "assistant" if expected == "user" else "user"
    if not body:
        raise RecordError(f"field '{where}' has no human/gpt turns")
    if body[-1]["role"] != "assistant" and not allow_trailing_user:
        raise RecordError(f"field '{where}' must end with a gpt turn")
    if allow_trailing_user and body[-1]["role"] != "user":
        raise RecordError(f"field '{where}' must end with a human turn (the prompt of the pair)")
    return messages


def convert_sharegpt(rec, columns, system=None):
    _require_dict(rec)
    turns = _field(rec, columns, "conversations", kind=list)
    messages = _conversation(turns, columns.get("conversations", "conversations"))
    top_system = _field(rec, columns, "system", required=False, default=None)
    if messages[0]["role"] != "system" and ((top_system and top_system.strip()) or system):
        messages.insert(0, {"role": "system", "content": top_system if top_system and top_system.strip() else system})
    return {"messages": messages}


def convert_text(rec, columns, system=None):
    if isinstance(rec, str):
        text = rec
    else:
        _require_dict(rec)
        text = _field(rec, columns, "text")
    if not text.strip():
        raise RecordError("text is empty")
    return {"text": text}


def _response(value, name):
    """A preference response: a string, or a {from, value} turn (LLaMA-Factory's sharegpt shape)."""
    if isinstance(value, dict):
        value = value.get("value", value.get("content"))
    if not isinstance(value, str):
        raise RecordError(f"field '{name}' must be a string or a {{from, value}} turn")
    if not value.strip():
        raise RecordError(f"field '{name}' is empty")
    return value


def convert_preference(rec, columns, system=None):
    """Preference pairs in the shapes of ../shared/data/README.md, plus the common prompt/chosen/rejected.

    (a) {conversations, chosen: {from, value}, rejected: {from, value}}   LLaMA-Factory
    (b) {conversations, chosen: str, rejected: str}                       MedicalGPT
    (c) {system, history, question, response_chosen, response_rejected}   MedicalGPT legacy
    (d) {question, response_chosen, response_rejected}                    MedicalGPT legacy test
    (e) {prompt: str | messages, chosen, rejected}                        TRL / UltraFeedback
    """
    _require_dict(rec)
    col = lambda n: columns.get(n, n)  # noqa: E731
    if col("conversations") in rec:
        messages = _conversation(rec[col("conversations")], col("conversations"), allow_trailing_user=True)
        chosen, rejected = _response(rec.get(col("chosen")), col("chosen")), _response(rec.get(col("rejected")), col("rejected"))
    elif col("question") in rec:
        question = _field(rec, columns, "question")
        messages = _history(rec, columns) + [{"role": "user", "content": question}]
        chosen = _response(rec.get(col("response_chosen")), col("response_chosen"))
        rejected = _response(rec.get(col("response_rejected")), col("response_rejected"))
    elif col("prompt") in rec:
        prompt = rec[col("prompt")]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise RecordError(f"field '{col('prompt')}' is empty")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _conversation(prompt, col("prompt"), allow_trailing_user=True)
        chosen, rejected = _response(rec.get(col("chosen")), col("chosen")), _response(rec.get(col("rejected")), col("rejected"))
    else:
        raise RecordError("not a preference pair: expected 'conversations', 'question' or 'prompt' with chosen/rejected responses")
    if chosen.strip() == rejected.strip():
        raise RecordError("chosen and rejected responses are identical")
    if messages[0]["role"] != "system":
        sys_field = rec.get(col("system"))
        sys_text = sys_field if isinstance(sys_field, str) and sys_field.strip() else system
        if sys_text:
            messages.insert(0, {"role": "system", "content": sys_text})
    return {"messages": messages, "chosen": chosen, "rejected": rejected}


def convert_unpaired(rec, columns, system=None):
    """One completion judged on its own (KTO): {prompt: str | messages, completion, label: bool}
    (TRL's unpaired preference shape), or {conversations (ending with a human turn), completion, label}.
    label true = desirable, false = undesirable."""
    _require_dict(rec)
    col = lambda n: columns.get(n, n)  # noqa: E731
    if col("conversations") in rec:
        messages = _conversation(rec[col("conversations")], col("conversations"), allow_trailing_user=True)
    elif col("prompt") in rec:
        prompt = rec[col("prompt")]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise RecordError(f"field '{col('prompt')}' is empty")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _conversation(prompt, col("prompt"), allow_trailing_user=True)
    else:
        raise RecordError("not an unpaired example: expected 'prompt' or 'conversations' with 'completion' and 'label'")
    completion = _response(rec.get(col("completion")), col("completion"))
    label = rec.get(col("label"))
    if not isinstance(label, bool):
        raise RecordError(f"field '{col('label')}' must be true (desirable) or false (undesirable), got {label!r}")
    if messages[0]["role"] != "system" and system:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages, "completion": completion, "label": label}


CONVERTERS = {
    "alpaca": convert_alpaca,
    "promptcblue": convert_promptcblue,
    "sharegpt": convert_sharegpt,
    "text": convert_text,
    "preference": convert_preference,
    "unpaired": convert_unpaired,
}
