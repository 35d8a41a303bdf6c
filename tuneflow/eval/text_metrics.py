"""Reference-based metrics for generic instruction data (Chinese, English or mixed).

``instruction_metrics(predictions, references)`` returns, on a 0-100 scale::

    {"rouge1": .., "rouge2": .., "rougeL": .., "bleu4": .., "exact_match": .., "n": N}

Tokenisation (the same tokens feed ROUGE and BLEU): jieba word segmentation in its default
(accurate, HMM) mode with its bundled dictionary, which is deterministic; jieba keeps runs of
Latin letters / digits (``GPT``, ``3.5``) whole and splits punctuation off, so English text is
scored by words and Chinese by words rather than characters. Whitespace tokens are dropped and
case is kept.

* ROUGE-1/2/L: F-measure from rouge-chinese (``Rouge().get_scores(avg=True)``, the scorer used by
  PromptCBLUE and the ChatGLM/LLaMA-Factory SFT recipes), averaged over pairs. Its ROUGE-N counts
  distinct n-grams and its F is 2PR/(P+R+1e-8), so an exact match gives 99.9999995.
  Empty strings: rouge-chinese raises on an empty hypothesis or reference, so, as the official
  PromptCBLUE scorer does, an empty (after tokenisation) prediction or reference is replaced by
  "无 。" for ROUGE only (two empties then match; an empty prediction of a real reference scores
  about 0).
* BLEU-4: corpus-level BLEU from sacrebleu (uniform 4-gram weights, brevity penalty, default "exp"
  smoothing) with ``tokenize="none"`` on our space-joined jieba tokens, so the tokenisation is ours
  and identical to ROUGE's; sacrebleu's own "13a"/"zh" tokenisers would segment Chinese by
  characters and English by its own rules. Empty predictions are kept empty (they add length 0
  and no matches).
* exact_match: percentage of pairs whose ``strip()``-ed texts are equal.

jieba's "Building prefix dict" log lines are silenced; nothing is printed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = ["tokenize", "instruction_metrics"]

EMPTY_TEXT = "无 。"
_jieba = None


def _segmenter():
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        logging.getLogger("jieba").setLevel(logging.WARNING)
        _jieba = jieba.Tokenizer()
    return _jieba


def tokenize(text: str) -> list[str]:
    """jieba tokens of `text` without whitespace tokens."""
    if not text or not text.strip():
        return []
    return [tok for tok in _segmenter().lcut(text) if tok.strip()]


def instruction_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """ROUGE-1/2/L F, corpus BLEU-4 and exact match (all 0-100) of predictions vs references."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "bleu4": 0.0, "exact_match": 0.0, "n": 0}
    predictions = ["" if p is None else str(p) for p in predictions]
    references = ["" if r is None else str(r) for r in references]

    hyp_tokens = [" ".join(tokenize(p)) for p in predictions]
    ref_tokens = [" ".join(tokenize(r)) for r in references]

    from rouge_chinese import Rouge

    rouge = Rouge().get_scores([h or EMPTY_TEXT for h in hyp_tokens],
                               [r or EMPTY_TEXT for r in ref_tokens], avg=True)

    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize="none", force=True).corpus_score(hyp_tokens, [ref_tokens]).score

    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {
        "rouge1": 100 * rouge["rouge-1"]["f"],
        "rouge2": 100 * rouge["rouge-2"]["f"],
        "rougeL": 100 * rouge["rouge-l"]["f"],
        "bleu4": float(bleu),
        "exact_match": 100 * exact / n,
        "n": n,
    }
