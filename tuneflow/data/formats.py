"""Raw formats -> the canonical record schema.

Canonical records (one JSON object per line in results/data/<name>/{train,validation}.jsonl):
  instruction data:  {"id", "messages": [...], "tools"?, "meta"?}
  preference pairs:  {"id", "messages": [...prompt, ending with a user or tool turn], "chosen", "rejected", "tools"?}
  unpaired (KTO):    {"id", "messages": [...prompt, ending with a user turn], "completion", "label"}
  pre-training text: {"id", "text"}
A message is {"role": "system"|"user"|"assistant"|"tool", "content"}; an assistant message that
calls tools also has "tool_calls": [{"type": "function", "function": {"name", "arguments": {...}}}]
(OpenAI's shape, which chat templates with tool support render), and a "tool" message is what a
call returned. `tools` lists the functions offered ([{"type": "function", "function": {name,
description, parameters}}]). A preference response is a string, or such an assistant message
when it is a tool call. `meta` carries what evaluation needs (PromptCBLUE: task_type,
task_dataset, answer_choices).

A converter gets the raw record and the dataset's Options; it raises RecordError with a short
problem (the caller adds file and line), BadTurn when only some turns are wrong (the caller
applies data.on_bad_turn), and with Options.drop_bad_turns it drops such turns instead, listing
them under "_dropped_turns". The dataset's default system prompt is not added here: the split
and duplicate keys are computed on the record's own content first (tuneflow.data.convert).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field


class RecordError(ValueError):
    """One record is malformed; the message says which field and why. `category` groups the
    message in the manifest's dropped_reasons when the message names record-specific details."""

    def __init__(self, message, category=None):
        super().__init__(message)
        self.category = category or message


class BadTurn(RecordError):
    """Some turns of a conversation are out of place (data.on_bad_turn decides)."""


FORMATS = ("alpaca", "promptcblue", "sharegpt", "text", "preference", "unpaired")
# PromptCBLUE's task names (its v1 name CMeIE included); evaluation scores each task by its own
# rule (tuneflow.eval.promptcblue.TASKS, which tests/test_promptcblue.py keeps equal to this).
PROMPTCBLUE_TASKS = ("CMeEE-V2", "CMeIE-V2", "CMeIE", "CHIP-CDN", "CHIP-CDEE", "IMCS-V2-NER", "CHIP-MDCFNPC",
                     "IMCS-V2-SR", "IMCS-V2-DAC", "IMCS-V2-MRG", "CHIP-CTC", "CHIP-STS", "KUAKE-IR", "KUAKE-QIC",
                     "KUAKE-QQR", "KUAKE-QTR", "MedDG", "Text2DT", "CMedCausal")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                "system": "system", "function_call": "function_call", "observation": "tool", "tool": "tool",
                "function": "tool"}
# LLaMA-Factory's "tags" of a sharegpt dataset: which keys hold the role and the text, and the role names.
TAG_ROLES = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
             "function_tag": "function_call", "system_tag": "system"}
# LLaMA-Factory's default tool-call text ("Action: name\nAction Input: {json}"), as MedicalGPT's data writes it.
ACTION_TEXT = re.compile(r"\s*Action:\s*([A-Za-z0-9_.-]+)\s*\nAction Input:\s*(.+?)\s*(?=\nAction:|\Z)", re.S)


@dataclass(frozen=True)
class Options:
    columns: dict = field(default_factory=dict)   # canonical field -> raw field
    tags: dict = field(default_factory=dict)      # sharegpt role/content keys and role names (LLaMA-Factory tags)
    drop_bad_turns: bool = False                  # data.on_bad_turn: drop_turn
    keep_linebreaks: bool = False                 # text files: lines as they are (datasets.<name>.keep_linebreaks)


def _field(rec, columns, name, *, required=True, kind=str, default=None, allow_empty=False):
    """Fetch canonical field `name` (possibly renamed by `columns`) with a type check."""
    src = columns.get(name, name)
    if src not in rec or rec[src] is None:
        if required:
            raise _missing(rec, name, src)
        return default
    value = rec[src]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"field '{src}' must be {expected}, got {type(value).__name__}")
    if required and not allow_empty and isinstance(value, str) and not value.strip():
        raise RecordError(f"field '{src}' is empty")
    return value


def _missing(rec, name, src):
    if src == name:
        return RecordError(f"missing field '{src}'")
    keys = sorted(map(str, rec))
    close = difflib.get_close_matches(src, keys, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return RecordError(f"missing field '{src}' (columns maps {name} to '{src}'; the record has: {', '.join(keys)}){hint}",
                       category=f"missing field '{src}' (columns maps {name} to '{src}')")


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


def _own_system(rec, columns):
    system = _field(rec, columns, "system", required=False, default=None)
    return [{"role": "system", "content": system}] if system and system.strip() else []


def _tools(rec, columns):
    """The record's `tools` (a list, or LLaMA-Factory's JSON string of one) in OpenAI's shape."""
    src = columns.get("tools", "tools")
    tools = rec.get(src)
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise RecordError(f"field '{src}' is not valid JSON: {e.msg}") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RecordError(f"field '{src}' must be a list of function descriptions")
    out = []
    for t in tools:
        function = t.get("function", t) if t.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RecordError(f"field '{src}': every tool needs a function name")
        out.append({"type": "function", "function": function})
    return out or None


def _tool_calls(value, where):
    """Tool calls from a function_call turn's value: {"name", "arguments"} or a list of them,
    as JSON text or already parsed; arguments as an object or its JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where} is not a JSON function call: {e.msg}") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            raise RecordError(f"{where} must name the function it calls ({{\"name\", \"arguments\"}})")
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # kept as written: some templates take argument text as it is
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    if not out:
        raise RecordError(f"{where} calls no function")
    return out


def _action_text_calls(text):
    """Tool calls written as LLaMA-Factory's default text ("Action: name\\nAction Input: {json}"), or None."""
    matches = list(ACTION_TEXT.finditer(text))
    if not matches or "".join(m.group(0) for m in matches).strip() != text.strip():
        return None
    calls = []
    for m in matches:
        try:
            arguments = json.loads(m.group(2).strip().strip("`"))
        except json.JSONDecodeError:
            return None
        calls.append({"type": "function", "function": {"name": m.group(1), "arguments": arguments}})
    return calls


def _assistant_message(content, tool_calls=None):
    return {"role": "assistant", "content": content, **({"tool_calls": tool_calls} if tool_calls else {})}


def _roles(opts: Options):
    """(role key, content key, raw role name -> canonical role) from the defaults and the tags."""
    tags = opts.tags or {}
    names = dict(ROLE_ALIASES)
    for tag, role in TAG_ROLES.items():
        if tags.get(tag):
            names[str(tags[tag]).lower()] = role
    return tags.get("role_tag"), tags.get("content_tag"), names


def _conversation(turns, where="conversations", allow_trailing_user=False, opts: Options = Options()):
    """A list of {from, value} (or {role, content}) turns -> messages. Returns (messages, the
    reasons of the turns dropped when opts.drop_bad_turns)."""
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field '{where}' must be a non-empty list of {{from, value}} turns")
    role_key, content_key, names = _roles(opts)
    messages, dropped = [], []

    def bad_turn(problem, reason):
        if not opts.drop_bad_turns:
            raise BadTurn(problem)  # the record is dropped or refused as before, under this message
        dropped.append(reason)

    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{where}[{i}] must be an object with 'from' and 'value'")
        role_raw = turn.get(role_key) if role_key else turn.get("from", turn.get("role"))
        content = turn.get(content_key) if content_key else turn.get("value", turn.get("content"))
        role = names.get(str(role_raw).lower()) if role_raw is not None else None
        if role is None:
            raise RecordError(f"{where}[{i}] has unsupported role {role_raw!r} (expected human/gpt/system, "
                              "function_call/observation or tool)")
        if role == "function_call":
            messages.append(_assistant_message("", _tool_calls(content, f"{where}[{i}] ({role_raw})")))
            continue
        if role == "assistant" and turn.get("tool_calls"):
            messages.append(_assistant_message(content if isinstance(content, str) else "",
                                               _tool_calls(turn["tool_calls"], f"{where}[{i}].tool_calls")))
            continue
        if not isinstance(content, str):
            raise RecordError(f"{where}[{i}].value must be a string, got {type(content).__name__}")
        if role == "system":
            if messages:
                bad_turn(f"{where}[{i}] is a system turn after the conversation started",
                         "system turn after the conversation started")
                continue
        elif not content.strip():
            raise RecordError(f"{where}[{i}] ({role_raw}) is empty")
        messages.append({"role": role, "content": content})

    start = 1 if messages and messages[0]["role"] == "system" else 0
    while len(messages) > start and messages[start]["role"] != "user":  # an assistant greeting, say
        bad_turn(f"field '{where}' must alternate human/gpt turns starting with human "
                 f"(turn 0 is {messages[start]['role']})", f"conversation opens with a{'n' * (messages[start]['role'] == 'assistant')} "
                 f"{messages[start]['role']} turn")
        del messages[start]
    if not allow_trailing_user and len(messages) > start + 1 and messages[-1]["role"] == "user":
        bad_turn(f"field '{where}' must end with a gpt turn", "conversation ends with a user turn")
        messages.pop()
    body = messages[start:]
    if not body:
        raise RecordError(f"field '{where}' has no human/gpt turns")
    for i, m in enumerate(body):
        user_side = m["role"] in ("user", "tool")
        if user_side != (i % 2 == 0):
            raise RecordError(f"field '{where}' must alternate human/gpt turns starting with human (turn {i} is {m['role']})")
        if m["role"] == "tool" and not (i and body[i - 1].get("tool_calls")):
            raise RecordError(f"field '{where}': turn {i} is a tool result that follows no function call")
    if body[-1]["role"] != "assistant" and not allow_trailing_user:
        raise RecordError(f"field '{where}' must end with a gpt turn")
    if allow_trailing_user and body[-1]["role"] == "assistant":
        raise RecordError(f"field '{where}' must end with a human turn (the prompt of the pair)")
    return messages, dropped


def _with_tools(rec: dict, tools) -> dict:
    if tools:
        rec["tools"] = tools
    return rec


def _with_dropped(rec: dict, dropped) -> dict:
    if dropped:
        rec["_dropped_turns"] = dropped
    return rec


def _prompt(rec, columns):
    """Alpaca's prompt: the instruction, then the input on the next line when there is one."""
    instruction = _field(rec, columns, "instruction")
    inp = _field(rec, columns, "input", required=False, default="")
    return f"{instruction}\n{inp}" if inp.strip() else instruction


def convert_alpaca(rec, opts: Options):
    _require_dict(rec)
    columns = opts.columns
    prompt = _prompt(rec, columns)
    output = _field(rec, columns, "output")
    messages = _own_system(rec, columns) + _history(rec, columns)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return _with_tools({"messages": messages}, _tools(rec, columns))


def convert_promptcblue(rec, opts: Options):
    _require_dict(rec)
    columns = opts.columns
    inp = _field(rec, columns, "input")
    target = _field(rec, columns, "target")
    # The PromptCBLUE README calls the field "type"; the released files say "task_type".
    task_type = _field(rec, columns, "task_type", required=False, default=None)
    if task_type is None:
        task_type = _field(rec, {}, "type", required=False, default=None)
    # Evaluation scores a record by its task's rule: an unknown task is refused here, not there.
    task = _field(rec, columns, "task_dataset")
    if task not in PROMPTCBLUE_TASKS:
        raise RecordError(f"field '{columns.get('task_dataset', 'task_dataset')}' names an unknown PromptCBLUE task "
                          f"{task!r} (known: {', '.join(PROMPTCBLUE_TASKS)})")
    choices_src = columns.get("answer_choices", "answer_choices")
    meta = {
        "sample_id": _field(rec, columns, "sample_id", required=False, kind=(str, int), default=None),
        "task_type": task_type,
        "task_dataset": task,
        # null stays null (the scorer tells "no choices given" from "none"); absent is [] as before
        "answer_choices": None if choices_src in rec and rec[choices_src] is None else
        _field(rec, columns, "answer_choices", required=False, kind=list, default=[]),
    }
    if meta["sample_id"] is not None:
        meta["sample_id"] = str(meta["sample_id"])
    messages = [{"role": "user", "content": inp}, {"role": "assistant", "content": target}]
    return {"messages": messages, "meta": meta}


def convert_sharegpt(rec, opts: Options):
    _require_dict(rec)
    columns = opts.columns
    name = columns.get("conversations", columns.get("messages", "conversations"))
    turns = rec.get(name)
    if turns is None and name == "conversations" and isinstance(rec.get("messages"), list):
        name, turns = "messages", rec["messages"]  # OpenAI's key
    if turns is None:
        raise _missing(rec, "conversations", name)
    if not isinstance(turns, list):
        raise RecordError(f"field '{name}' must be list, got {type(turns).__name__}")
    messages, dropped = _conversation(turns, name, opts=opts)
    if messages[0]["role"] != "system":
        messages = _own_system(rec, columns) + messages
    return _with_dropped(_with_tools({"messages": messages}, _tools(rec, columns)), dropped)


def convert_text(rec, opts: Options):
    """opts.keep_linebreaks: a line of a text file is kept as it is, line break included (a blank line too)."""
    if isinstance(rec, str):
        text = rec
    else:
        _require_dict(rec)
        text = _field(rec, opts.columns, "text")
    if not text.strip() and not (opts.keep_linebreaks and isinstance(rec, str) and text):
        raise RecordError("text is empty")
    return {"text": text}


def _response(value, name, tools, opts: Options):
    """A preference response: a string, a {from, value} turn (LLaMA-Factory's sharegpt shape), or a
    list holding one assistant message (TRL's conversational shape). A tool call (a function_call
    turn, or "Action: ..." text when the record offers tools) becomes an assistant message with
    tool_calls."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(f"field '{name}' must hold exactly one assistant message")
        value = value[0]
    if isinstance(value, dict):
        role_key, content_key, names = _roles(opts)
        role = names.get(str(value.get(role_key) if role_key else value.get("from", value.get("role", "gpt"))).lower())
        content = value.get(content_key) if content_key else value.get("value", value.get("content"))
        if role == "function_call":
            return _assistant_message("", _tool_calls(content, f"field '{name}'"))
        if value.get("tool_calls"):
            return _assistant_message(content if isinstance(content, str) else "",
                                      _tool_calls(value["tool_calls"], f"field '{name}'.tool_calls"))
        if role not in (None, "assistant"):
            raise RecordError(f"field '{name}' must be an assistant turn, not {role}")
        value = content
    if not isinstance(value, str):
        raise RecordError(f"field '{name}' must be a string or a {{from, value}} turn")
    if not value.strip():
        raise RecordError(f"field '{name}' is empty")
    calls = _action_text_calls(value) if tools else None
    return _assistant_message("", calls) if calls else value


def _same_response(a, b) -> bool:
    return (a.strip() == b.strip()) if isinstance(a, str) and isinstance(b, str) else a == b


NOT_A_PAIR = ("not a preference pair: expected 'conversations', 'question', 'instruction' or 'prompt' with chosen/rejected "
              "responses (or output: [chosen, rejected]), or chosen/rejected conversations")


def convert_preference(rec, opts: Options):
    """Preference pairs in the shapes of ../shared/data/README.md, plus the common ones:

    (a) {conversations, chosen: {from, value}, rejected: {from, value}}   LLaMA-Factory (sharegpt, ranking)
    (b) {conversations, chosen: str, rejected: str}                       MedicalGPT
    (c) {system, history, question, response_chosen, response_rejected}   MedicalGPT legacy
    (d) {question, response_chosen, response_rejected}                    MedicalGPT legacy test
    (e) {prompt: str | messages, chosen, rejected}                        TRL / UltraFeedback
    (f) {instruction, input, chosen, rejected}                            alpaca (MedicalGPT reward data):
                                                                          prompt = instruction + input
    (g) {instruction, input, output: [chosen, rejected]}                  LLaMA-Factory comparison data
    (h) {chosen: [messages], rejected: [messages]}                        TRL conversational, implicit prompt
    Conversations may carry tool turns and the record `tools`.
    """
    _require_dict(rec)
    columns = opts.columns
    col = lambda n: columns.get(n, n)  # noqa: E731
    tools = _tools(rec, columns)
    dropped = []
    chosen_raw, rejected_raw = rec.get(col("chosen")), rec.get(col("rejected"))
    conv_key = col("conversations") if col("conversations") in rec else col("messages") \
        if col("messages") in rec and col("messages") != col("prompt") else None
    if conv_key:
        messages, dropped = _conversation(rec[conv_key], conv_key, allow_trailing_user=True, opts=opts)
    elif col("question") in rec:
        question = _field(rec, columns, "question")
        messages = _history(rec, columns) + [{"role": "user", "content": question}]
        chosen_raw, rejected_raw = rec.get(col("response_chosen")), rec.get(col("response_rejected"))
        chosen = _response(chosen_raw, col("response_chosen"), tools, opts)
        rejected = _response(rejected_raw, col("response_rejected"), tools, opts)
    elif col("instruction") in rec:
        messages = _history(rec, columns) + [{"role": "user", "content": _prompt(rec, columns)}]
        output = rec.get(col("output"))
        if chosen_raw is None and rejected_raw is None:
            if not isinstance(output, list):
                raise RecordError(NOT_A_PAIR)  # alpaca instruction data, say
            if len(output) != 2:
                raise RecordError(f"field '{col('output')}' must be [chosen, rejected]")
            chosen_raw, rejected_raw = output
    elif col("prompt") in rec:
        prompt = rec[col("prompt")]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise RecordError(f"field '{col('prompt')}' is empty")
            inp = rec.get(col("input"))
            messages = [{"role": "user", "content": f"{prompt}\n{inp}" if isinstance(inp, str) and inp.strip() else prompt}]
        else:
            messages, dropped = _conversation(prompt, col("prompt"), allow_trailing_user=True, opts=opts)
    elif isinstance(chosen_raw, list) and isinstance(rejected_raw, list) and len(chosen_raw) > 1:
        # The prompt is what both conversations share; each goes on with one assistant message.
        n = 0
        while n < min(len(chosen_raw), len(rejected_raw)) - 1 and chosen_raw[n] == rejected_raw[n]:
            n += 1
        messages, dropped = _conversation(chosen_raw[:n], col("chosen"), allow_trailing_user=True, opts=opts)
        chosen_raw, rejected_raw = chosen_raw[n:], rejected_raw[n:]
    else:
        raise RecordError(NOT_A_PAIR)
    if col("question") not in rec or conv_key:
        chosen = _response(chosen_raw, col("chosen"), tools, opts)
        rejected = _response(rejected_raw, col("rejected"), tools, opts)
    if _same_response(chosen, rejected):
        raise RecordError("chosen and rejected responses are identical")
    if messages[0]["role"] != "system":
        sys_field = rec.get(col("system"))
        if isinstance(sys_field, str) and sys_field.strip():
            messages.insert(0, {"role": "system", "content": sys_field})
    return _with_dropped(_with_tools({"messages": messages, "chosen": chosen, "rejected": rejected}, tools), dropped)


def convert_unpaired(rec, opts: Options):
    """One completion judged on its own (KTO): {prompt: str | messages, completion, label: bool}
    (TRL's unpaired preference shape), or {conversations (ending with a human turn), completion, label}.
    label true = desirable, false = undesirable."""
    _require_dict(rec)
    col = lambda n: opts.columns.get(n, n)  # noqa: E731
    dropped = []
    if col("conversations") in rec:
        messages, dropped = _conversation(rec[col("conversations")], col("conversations"), allow_trailing_user=True,
                                          opts=opts)
    elif col("prompt") in rec:
        prompt = rec[col("prompt")]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise RecordError(f"field '{col('prompt')}' is empty")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages, dropped = _conversation(prompt, col("prompt"), allow_trailing_user=True, opts=opts)
    else:
        raise RecordError("not an unpaired example: expected 'prompt' or 'conversations' with 'completion' and 'label'")
    completion = _response(rec.get(col("completion")), col("completion"), None, opts)
    label = rec.get(col("label"))
    if not isinstance(label, bool):
        raise RecordError(f"field '{col('label')}' must be true (desirable) or false (undesirable), got {label!r}")
    return _with_dropped({"messages": messages, "completion": completion, "label": label}, dropped)


CONVERTERS = {
    "alpaca": convert_alpaca,
    "promptcblue": convert_promptcblue,
    "sharegpt": convert_sharegpt,
    "text": convert_text,
    "preference": convert_preference,
    "unpaired": convert_unpaired,
}


def with_default_system(rec: dict, system: str | None) -> dict:
    """The dataset's `system` prompt added to a conversation that has none (after the record's keys
    were taken from its own content)."""
    if system and rec.get("messages") is not None and (not rec["messages"] or rec["messages"][0]["role"] != "system"):
        rec["messages"] = [{"role": "system", "content": system}] + rec["messages"]
    return rec
