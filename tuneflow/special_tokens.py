"""The tokens with a job beyond text: padding and the end of a pre-training document.

- Pad: a tokenizer without one (Llama-2, Mistral, Llama-3) gets an existing token that never
  occurs in text, so the vocabulary and the embeddings keep their size: a dedicated pad token
  when the vocabulary has one (`<|finetune_right_pad_id|>`, `<pad>`...), else the first reserved
  special token (Llama-3), else `<unk>`, and only as a last resort the EOS token. Padding never
  carries loss (labels are -100 there, never derived from the pad id), so even a pad equal to EOS
  cannot stop the model from learning to end. The choice is saved with the tokenizer files and
  recorded in train_info.json (`special_tokens`).
- Document end (PT): the token that separates pre-training documents, which is not always
  `eos_token`: an instruct tokenizer's EOS ends a chat turn (Llama-3.1 `<|eot_id|>`, Qwen3
  `<|im_end|>`) while its documents end with `<|end_of_text|>` / `<|endoftext|>`.
"""

from __future__ import annotations

import re

PAD_NAMES = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "[PAD]", "<PAD>")
RESERVED = re.compile(r"^<\|reserved_special_token_\d+\|>$")
DOCUMENT_END_NAMES = ("<|end_of_text|>", "<|endoftext|>")


def pad_candidate(tokenizer) -> tuple[str, str]:
    """(token, why) for a tokenizer that has no pad token; never adds a token."""
    vocab = tokenizer.get_vocab()
    for name in PAD_NAMES:
        if name in vocab:
            return name, "a dedicated pad token of the vocabulary"
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    reserved = sorted((vocab[t], t) for t in special if RESERVED.match(t))
    if reserved:
        return reserved[0][1], "the first reserved special token (never occurs in text)"
    if tokenizer.unk_token is not None:
        return tokenizer.unk_token, "the unknown token (never produced by a byte-fallback tokenizer)"
    return tokenizer.eos_token, "EOS: the vocabulary has no unused token (padding carries no loss, so EOS is still learned)"


def ensure_pad_token(tokenizer) -> None:
    """Give `tokenizer` a pad token when it has none (in place), without growing the vocabulary."""
    if tokenizer.pad_token is not None:
        return
    size = len(tokenizer)
    tokenizer.pad_token = pad_candidate(tokenizer)[0]
    assert len(tokenizer) == size, "choosing a pad token must not grow the vocabulary"


def pad_choice(tokenizer) -> dict:
    """The pad token in use and where it comes from: the tokenizer files as loaded, or our choice."""
    own = tokenizer.init_kwargs.get("pad_token")
    source = "the tokenizer's own" if own is not None else f"chosen by tuneflow: {pad_candidate(tokenizer)[1]}"
    return {"token": tokenizer.pad_token, "id": tokenizer.pad_token_id, "source": source}


def document_end_id(tokenizer) -> int:
    """The token appended to every pre-training document."""
    vocab = tokenizer.get_vocab()
    for name in DOCUMENT_END_NAMES:
        if name in vocab:
            return vocab[name]
    return tokenizer.eos_token_id


def describe(tokenizer) -> dict:
    """The special tokens a run used, for train_info.json."""
    doc_end = document_end_id(tokenizer)
    return {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "unk": tokenizer.unk_token,
            "pad": pad_choice(tokenizer),
            "document_end": tokenizer.convert_ids_to_tokens(doc_end) if doc_end is not None else None,
            "vocabulary": len(tokenizer)}
