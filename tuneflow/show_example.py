"""See what the model sees: a tokenized training row as text with the tokens that carry loss
marked, and the counts (`python scripts/show_example.py`; the report shows the same per dataset).

The row is decoded token by token (a token's text is what decoding the row up to it adds), so a
mark falls on a token boundary and special tokens (BOS, <|im_end|>, ...) appear as their text.
Marks: colour on a terminal, [[double brackets]] otherwise.
"""

from __future__ import annotations

IGNORE = -100
COLOR_ON, COLOR_OFF = "\x1b[1;32m", "\x1b[0m"
OPEN, CLOSE = "[[", "]]"


def row_sequences(row: dict, kind: str) -> dict:
    """name -> (input_ids, labels) of one tokenized row of `kind` (tuneflow.tokenize's columns)."""
    if kind == "pt":
        return {"text": (list(row["input_ids"]), list(row["input_ids"]))}
    if kind == "sft":
        return {"conversation": (list(row["input_ids"]), list(row["labels"]))}
    prompt = list(row["prompt_ids"])
    return {side: (prompt + list(row[f"{side}_ids"]), [IGNORE] * len(prompt) + list(row[f"{side}_ids"]))
            for side in ("chosen", "rejected")}


def pieces(tokenizer, ids, labels) -> list[list]:
    """[[text, carries_loss], ...], consecutive tokens with the same flag joined."""
    out, emitted, pending = [], "", []
    for i, label in enumerate(labels):
        pending.append(label != IGNORE)
        text = tokenizer.decode(ids[:i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not text.startswith(emitted) or text.endswith("\ufffd"):
            continue  # an incomplete character: its text comes with the token that completes it
        new, emitted = text[len(emitted):], text
        trained = pending[-1]
        pending = []
        if out and out[-1][1] == trained:
            out[-1][0] += new
        elif new:
            out.append([new, trained])
    return out


def example(tokenizer, row: dict, kind: str) -> dict:
    """What the report and the script show of one row."""
    seqs = row_sequences(row, kind)
    return {"kind": kind,
            "sequences": {name: {"tokens": len(ids), "label_tokens": sum(1 for x in labels if x != IGNORE),
                                 "pieces": pieces(tokenizer, ids, labels)}
                          for name, (ids, labels) in seqs.items()}}


def render(ex: dict, color: bool) -> str:
    """An example as terminal text."""
    lines = []
    for name, seq in ex["sequences"].items():
        lines.append(f"-- {name}: {seq['tokens']} tokens, {seq['label_tokens']} carry loss "
                     f"({'green' if color else OPEN + 'marked' + CLOSE})")
        text = "".join((COLOR_ON + t + COLOR_OFF if color else OPEN + t + CLOSE) if trained else t
                       for t, trained in seq["pieces"])
        lines.append(text)
    return "\n".join(lines)
