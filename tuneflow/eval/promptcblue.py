"""PromptCBLUE scoring with the official rules, quirks included.

The rules follow the official evaluation code of PromptCBLUE (github.com/michael-wzhu/PromptCBLUE,
folder ``src/evaluation/``): ``post_generate_process.py`` turns the model's free text into a
structured answer with each task's answer template, ``evaluators.py`` scores the structured answers
and ``evaluate.py`` picks the metric, the label list and the primary number of every task. This
module is a re-implementation (no code copied); each quirk below is kept on purpose so that our
numbers match the leaderboard's.

Usage
-----
>>> result = score({"dev-1": "不是", ...}, gold_records)            # doctest: +SKIP
>>> result = evaluate_files("pred.jsonl", "dev.json")                # doctest: +SKIP

``preds`` is ``{sample_id: text}`` or a list of texts aligned with ``golds``. Gold records are
PromptCBLUE JSON lines ``{input, target, answer_choices, task_type, task_dataset, sample_id}``;
their ``target`` is parsed with the same template as the prediction (the official scorer reads a
structured gold file made the same way, see ``dev_structured.json`` of the toy examples).

Result shape (every number is on a 0-100 scale; JSON-serialisable, key order fixed)
----------------------------------------------------------------------------------
::

    {
      "benchmark": "PromptCBLUE",
      "overall": 63.2,          # mean of tasks[*].score over the tasks present in the gold file
      "n": 72,                  # gold records scored
      "n_missing": 0,           # gold records without a prediction (scored as empty predictions)
      "tasks": {                # official task order; a task absent from the gold file is absent here
        "CMeEE-V2":  {"primary": "micro_f1", "score": 71.0, "micro_precision": .., "micro_recall": ..,
                      "micro_f1": 71.0, "n": 4, "n_missing": 0},
        "CHIP-CTC":  {"primary": "macro_f1", "score": .., "macro_precision": .., "macro_recall": ..,
                      "macro_f1": .., "n": 5, "n_missing": 0},
        "CHIP-STS":  {"primary": "weighted_f1", "score": .., "weighted_precision": ..,
                      "weighted_recall": .., "weighted_f1": .., "n": 5, "n_missing": 0},
        "MedDG":     {"primary": "rougeL", "score": .., "rouge1": .., "rouge2": .., "rougeL": ..,
                      "n": 5, "n_missing": 0},
        "Text2DT":   {"primary": "tree_edit_ratio", "score": .., "tree_edit_ratio": .., "node_f1": ..,
                      "path_f1": .., "n": 1, "n_missing": 0},
        ...
      }
    }

``tasks[name]["score"]`` always equals ``tasks[name][tasks[name]["primary"]]``; a report table can
show ``score`` per task plus ``overall``. ``evaluate_files`` adds ``"n_extra_predictions"``
(prediction records that matched no gold record) after ``n_missing``.

Task families and metrics (evaluate.py / evaluators.py)
-------------------------------------------------------
* extraction, strict micro P/R/F1 over exact-match tuples summed over the whole task:
  CMeEE-V2, CMeIE-V2 (alias CMeIE, the name in PromptCBLUE v1 data), CHIP-CDN, CHIP-CDEE,
  IMCS-V2-NER, IMCS-V2-SR, CHIP-MDCFNPC, CMedCausal. Primary: micro_f1.
* classification, macro-averaged P/R/F1: CHIP-CTC, IMCS-V2-DAC, KUAKE-QIC. Primary: macro_f1.
* classification, support-weighted P/R/F1 (the README calls it micro; the code uses sklearn's
  "weighted avg"): CHIP-STS, KUAKE-IR, KUAKE-QQR, KUAKE-QTR. Primary: weighted_f1.
* generation, ROUGE-1/2/L F (rouge-chinese, averaged over pairs): MedDG (one pair per sample),
  IMCS-V2-MRG (one pair per (sample, report section)). Primary: rougeL.
* Text2DT: tree edit ratio 1 - sum(edit distance) / sum(max edit distance), plus node and path F1.
  Primary: tree_edit_ratio.
* overall: mean of the primary scores (the official scorer divides by its fixed list of 18 tasks;
  here the mean is over the tasks present in the gold file).

Quirks reproduced (source file in the official repo, src/evaluation/)
----------------------------------------------------------------------
post_generate_process.py (answer templates):
* Lines are split on "\\n" only and most lines are not stripped: a stray "\\r" or space makes a
  field differ (e.g. an SR/MDCFNPC label with a trailing space is "not a label").
* CMeEE-V2 / IMCS-V2-NER: for each answer choice, every line starting with "<choice>实体" gives the
  mentions after "<choice>实体：", split on "，", stripped, empties dropped.
* CMeIE: predicate = line.split("关系的头尾实体对")[0][2:].strip(); the header is removed, then the
  line is split on "。" and each piece with "，尾实体为" gives (head, tail) with "头实体为" /
  "尾实体为" removed.
* CHIP-CDN: only the last line counts; split on "，", stripped, kept only if it is one of the
  answer choices, deduplicated.
* CHIP-CDEE: every line after the first is an event (an empty line gives an all-empty event); fields
  split on "；", "key：value"; 描述词/解剖部位 are lists split on "，"; missing keys are "" / [].
* IMCS-V2-SR / CHIP-MDCFNPC: lines after the first with exactly one "："; entity stripped; a label
  not among the answer choices becomes "无法根据上下文确定病人是否患有该症状" (SR) or "不标注"
  (MDCFNPC: the current official string, which is not a v1 label, so such a guess is always wrong).
* CHIP-STS: "相同" -> "是的", "不同" -> "不是" (the we1k files use 相同/不同).
* Other classification tasks: text.strip(), no mapping to the label set.
* IMCS-V2-MRG: lines after the first of the stripped text; a line starting with "主诉：", "现病史：",
  "辅助检查：", "既往史：", "诊断：" or "建议：" gives that section (text after the last occurrence of
  the key, stripped); a later line overwrites an earlier one.
* MedDG: text.strip().
* CMedCausal: header lines set the relation (因果关系 / 条件关系 / 上下位关系); "给定的文本没有指定关系的
  三元组" stops; "头实体：X；尾实体：Y" lines, and for 条件关系 "头实体：X；尾三元组：头实体：A；尾实体：B；关系：因果关系"
  whose tail is a nested triple; the head is text.split("头实体：")[1].split("；尾实体：")[0], so on
  a 条件关系 line it is "X；尾三元组：" (kept: gold and prediction are parsed alike).
* Text2DT: one node per non-empty line (the header line skipped): role between "：role=" and
  "；logical_rel="; logical_rel up to "；triples=" ("null" if absent); triples = the Python literal
  after "；triples=", kept only if it is a list, dropping items whose len() is not 3 (any item
  without a len() empties the node's triples); no node at all gives one D node with no triples.
evaluators.py (scoring):
* Extraction tuples are the json.dumps (ensure_ascii=False) of each field value in sorted-key order
  (so list fields are order-sensitive), compared as per-sample sets (duplicates collapse); when there
  is no true positive at all, P = R = F1 = 0, even when gold and prediction are both empty.
* Classification: an empty prediction is replaced by the first label of the task's official label
  list (evaluate.py); labels are the union of gold and predicted strings (sklearn
  classification_report, zero_division=0), so an off-list prediction adds a class with F1 = 0 to
  the macro average (and weight 0 to the weighted one). An empty gold label is an error.
* Generation: text is split with BERT's BasicTokenizer (CJK characters split, English words kept,
  punctuation split, lower-cased, accents stripped) and joined with spaces; an empty string (gold or
  prediction) becomes "无 。"; ROUGE is rouge-chinese's ``Rouge().get_scores(avg=True)`` (set-based
  n-grams, F = 2PR/(P+R+1e-8), so a perfect answer scores 99.9999995, not 100). IMCS-V2-MRG pools
  (sample, section) pairs over the sections present in the gold answer; a section missing from the
  prediction is "".
* Text2DT (text2dt_eval_func.py): triples lower-cased; the pre-order node list is folded into a tree
  (at most 101 passes); edit distance by the official stack walk; max edit distance = predicted
  triples + 2 x predicted nodes-with-triples + the same for gold; node/path F1 with counters that
  start at 1e-6; an exception inside the path or edit computation keeps the partial result, as the
  official try/except does.

Version
-------
These are the rules of the current ``src/evaluation/`` (PromptCBLUE v2, 18 tasks). The toy and we1k
data are v1 (16 tasks, "CMeIE"). The v1 post-processing (``src/for_eval/post_generate_process.py``)
differed in two ways that are NOT applied here: it first replaced up to 100 each of ":" "," ";" by
their full-width forms (that splits CHIP-CDN terms containing "," and drops them), and it mapped an
unknown CHIP-MDCFNPC label to "无实际意义的不标注或者和病人当前的状态独立不标注" instead of "不标注". The v1
scorer (``src/for_evaluation/``) also had no empty-label replacement.

Deliberate differences (the official code crashes or is unsafe there)
---------------------------------------------------------------------
* A prediction that the official post-processing cannot parse (a CMedCausal line without
  "头实体：" / "；尾实体：", a 条件关系 tail whose relation is not 因果关系, a Text2DT line without
  "：role=") crashes it; here that line is skipped.
* Text2DT triples are read with ``ast.literal_eval`` instead of ``eval``; a triple whose items are
  not all strings (the official code would crash on ``.lower()``) is dropped.
* Text2DT with a max edit distance of 0 (no triples anywhere) divides by zero officially; here the
  ratio is 100 when the edit distance is 0 too, else 0. A generation task with no pairs scores 0.
* Missing predictions: the official scorer rejects the whole submission; ``score`` treats a missing
  prediction as an empty string (then parsed and scored as above, e.g. first label for
  classification) and counts it in ``n_missing``; ``strict=True`` raises instead.
* Duplicate sample_ids (the we1k files reuse them): pass ``preds`` as a list aligned with ``golds``
  (a dict keyed by sample_id gives every duplicate the same prediction); ``evaluate_files`` pairs the
  k-th prediction of an id with the k-th gold record of that id.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from tuneflow.errors import DataError

__all__ = [
    "TASKS", "TASK_ALIASES", "CLASSIFICATION_LABELS", "parse_answer", "score", "score_structured",
    "basic_tokenize", "read_jsonl", "pair_predictions", "evaluate_files", "round_scores",
]

# ---------------------------------------------------------------------------------------------
# Task table (evaluate.py): official order, metric family
# ---------------------------------------------------------------------------------------------

EXTRACTION, MACRO, WEIGHTED, GENERATION, SECTIONS, TREE = (
    "extraction", "macro", "weighted", "generation", "sections", "tree")

TASKS: dict[str, str] = {
    "CMeEE-V2": EXTRACTION,
    "CMeIE-V2": EXTRACTION,
    "CMeIE": EXTRACTION,          # PromptCBLUE v1 name of CMeIE-V2
    "CHIP-CDN": EXTRACTION,
    "CHIP-CDEE": EXTRACTION,
    "IMCS-V2-NER": EXTRACTION,
    "CHIP-MDCFNPC": EXTRACTION,
    "IMCS-V2-SR": EXTRACTION,
    "IMCS-V2-DAC": MACRO,
    "IMCS-V2-MRG": SECTIONS,
    "CHIP-CTC": MACRO,
    "CHIP-STS": WEIGHTED,
    "KUAKE-IR": WEIGHTED,
    "KUAKE-QIC": MACRO,
    "KUAKE-QQR": WEIGHTED,
    "KUAKE-QTR": WEIGHTED,
    "MedDG": GENERATION,
    "Text2DT": TREE,
    "CMedCausal": EXTRACTION,
}
TASK_ALIASES = {"CMeIE": "CMeIE-V2"}

PRIMARY = {EXTRACTION: "micro_f1", MACRO: "macro_f1", WEIGHTED: "weighted_f1",
           GENERATION: "rougeL", SECTIONS: "rougeL", TREE: "tree_edit_ratio"}

# The official label lists; only the first label matters (it replaces an empty prediction).
CLASSIFICATION_LABELS: dict[str, list[str]] = {
    "CHIP-STS": ["是的", "不是"],
    "CHIP-CTC": [
        "非上述类型", "疾病", "症状(患者感受)", "体征(医生检测）", "怀孕相关", "肿瘤进展", "疾病分期", "过敏耐受",
        "器官组织状态", "预期寿命", "口腔相关", "药物", "治疗或手术", "设备", "护理", "诊断", "实验室检查", "风险评估",
        "受体状态", "年龄", "特殊病人特征", "读写能力", "性别", "教育情况", "居住情况", "种族", "知情同意",
        "参与其它试验", "研究者决定", "能力", "伦理审查", "依存性", "成瘾行为", "睡眠", "锻炼", "饮食", "酒精使用",
        "性取向", "吸烟状况", "献血", "病例来源", "残疾群体", "健康群体", "数据可及性", "含有多个类别"],
    "IMCS-V2-DAC": [
        "非上述类型", "关于症状的询问", "关于症状的回答", "关于病因的询问", "关于病因的回答", "关于个人基本信息的询问",
        "关于个人基本信息的回答", "关于已有检查和治疗的提问", "关于已有检查和治疗的回答", "关于用药建议的提问",
        "关于用药建议的解答", "关于就医建议的提问", "关于就医建议的解答", "关于注意事项的提问", "关于注意事项的解答",
        "给出诊断"],
    "KUAKE-IR": ["相关", "不相关"],
    "KUAKE-QIC": ["非上述类型", "病情诊断", "病因分析", "治疗方案", "就医建议", "指标解读", "疾病描述", "后果表述",
                  "注意事项", "功效作用", "医疗费用"],
    "KUAKE-QTR": ["完全不匹配或者没有参考价值", "很少匹配有一些参考价值", "部分匹配", "完全匹配"],
    "KUAKE-QQR": ["完全一致", "后者是前者的语义子集", "后者是前者的语义父集", "语义无直接关联"],
}

SR_DEFAULT_LABEL = "无法根据上下文确定病人是否患有该症状"
MDCFNPC_DEFAULT_LABEL = "不标注"
CDEE_KEYS = ("主体词", "发生状态", "描述词", "解剖部位")
CDEE_LIST_KEYS = ("描述词", "解剖部位")
MRG_SECTIONS = ("主诉", "现病史", "辅助检查", "既往史", "诊断", "建议")
EMPTY_TEXT = "无 。"  # what an empty generation becomes before ROUGE (evaluators.py)


def _canonical(task: str) -> str:
    return TASK_ALIASES.get(task, task)


# ---------------------------------------------------------------------------------------------
# Answer templates (post_generate_process.py)
# ---------------------------------------------------------------------------------------------

def _parse_entities(text: str, choices) -> list[dict]:
    found = []
    for choice in choices or []:
        head = f"{choice}实体"
        for line in text.split("\n"):
            if not line.startswith(head):
                continue
            for mention in line.replace(f"{choice}实体：", "").split("，"):
                if mention.strip():
                    found.append({"entity": mention.strip(), "type": choice})
    return found


def _parse_spo(text: str) -> list[dict]:
    found = []
    for line in text.split("\n"):
        predicate = line.split("关系的头尾实体对")[0][2:].strip()
        body = line.replace(f"具有{predicate}关系的头尾实体对如下：", "")
        for piece in body.split("。"):
            parts = piece.split("，尾实体为")
            if len(parts) < 2:
                continue
            found.append({"predicate": predicate,
                          "subject": parts[0].replace("头实体为", "").strip(),
                          "object": parts[1].replace("尾实体为", "").strip()})
    return found


def _parse_cdn(text: str, choices) -> list[dict]:
    picked = [w.strip() for w in text.split("\n")[-1].split("，") if w.strip()]
    picked = {w for w in picked if w in (choices or [])}
    return [{"entity": w, "type": "normalization"} for w in sorted(picked)]


def _parse_cdee(text: str) -> list[dict]:
    events = []
    for line in text.split("\n")[1:]:
        event = {}
        for field in line.split("；"):
            for key in CDEE_KEYS:
                if field.startswith(f"{key}："):
                    field = field.replace(f"{key}：", "").strip()
                    if key in CDEE_LIST_KEYS:
                        event[key] = [w.strip() for w in field.split("，") if w.strip()]
                    else:
                        event[key] = field
        events.append({k: event.get(k, [] if k in CDEE_LIST_KEYS else "") for k in CDEE_KEYS})
    return events


def _parse_attr(text: str, choices, default: str) -> list[dict]:
    found = []
    for line in text.split("\n")[1:]:
        parts = line.split("：")
        if len(parts) != 2:
            continue
        finding, label = parts
        found.append({"entity": finding.strip(), "attr": label if label in (choices or []) else default})
    return found


def _parse_mrg(text: str) -> dict:
    lines = text.strip().split("\n")[1:]
    report = {}
    for section in MRG_SECTIONS:
        key = f"{section}："
        for line in lines:
            if line.startswith(key):
                report[section] = line.strip().split(key)[-1].strip()
    return report


def _parse_causal(text: str) -> list[dict]:
    found, relation = [], None
    for line in text.split("\n"):
        line = line.strip()
        if "因果关系三元组如下" in line:
            relation = "因果关系"
            continue
        if "条件关系三元组" in line:
            relation = "条件关系"
            continue
        if "上下位关系" in line:
            relation = "上下位关系"
            continue
        if "给定的文本没有指定关系的三元组" in line:
            break
        if not line:
            continue
        try:  # the official code has no try here (a malformed line crashes it): we skip the line
            head = line.split("头实体：")[1].split("；尾实体：")[0]
            if relation != "条件关系":
                found.append({"predicate": relation, "subject": head, "object": line.split("；尾实体：")[1]})
                continue
            tail = line.split("；尾三元组：")[1]
            inner = {"predicate": tail.split("；关系：")[1].split("；关系：")[0],
                     "subject": tail.split("头实体：")[1].split("；尾实体：")[0],
                     "object": tail.split("；尾实体：")[1].split("；关系：")[0]}
        except IndexError:
            continue
        if inner["predicate"] != "因果关系":
            continue
        found.append({"predicate": relation, "subject": head, "object": inner})
    return found


def _literal_triples(text: str) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []
    if not isinstance(value, list):
        return []
    try:
        return [t for t in value if len(t) == 3]
    except TypeError:  # an item without len(): the official try/except empties the whole list
        return []


def _parse_tree(text: str) -> list[dict]:
    nodes = []
    for line in text.split("\n"):
        if "根据给定的指南文本抽取的诊疗决策树" in line or not line:
            continue
        if "：role=" not in line:  # officially an IndexError that crashes the post-processing
            continue
        role = line.split("：role=")[1].split("；logical_rel=")[0]
        rest = line.split("；logical_rel=")
        logical_rel = rest[1].split("；triples=")[0] if len(rest) > 1 else "null"
        rest = line.split("；triples=")
        triples = _literal_triples(rest[1]) if len(rest) > 1 else []
        triples = [list(t) for t in triples
                   if isinstance(t, (list, tuple, str)) and all(isinstance(x, str) for x in t)]
        nodes.append({"role": role, "logical_rel": logical_rel, "triples": triples})
    return nodes or [{"role": "D", "logical_rel": "null", "triples": []}]


def parse_answer(task: str, text: str, answer_choices=None):
    """The structured answer the official post-processing extracts from `text` for `task`.

    Shapes follow the official results.json: a list of dicts (extraction tasks), a label string
    (classification), a string (MedDG), {section: text} (IMCS-V2-MRG) or a list of nodes (Text2DT).
    """
    task = _canonical(task)
    text = text if isinstance(text, str) else ""
    if task in ("CMeEE-V2", "IMCS-V2-NER"):
        return _parse_entities(text, answer_choices)
    if task == "CMeIE-V2":
        return _parse_spo(text)
    if task == "CHIP-CDN":
        return _parse_cdn(text, answer_choices)
    if task == "CHIP-CDEE":
        return _parse_cdee(text)
    if task == "IMCS-V2-SR":
        return _parse_attr(text, answer_choices, SR_DEFAULT_LABEL)
    if task == "CHIP-MDCFNPC":
        return _parse_attr(text, answer_choices, MDCFNPC_DEFAULT_LABEL)
    if task == "CMedCausal":
        return _parse_causal(text)
    if task == "Text2DT":
        return _parse_tree(text)
    if task == "IMCS-V2-MRG":
        return _parse_mrg(text)
    if task == "CHIP-STS":
        label = text.strip()
        return {"相同": "是的", "不同": "不是"}.get(label, label)
    if task in CLASSIFICATION_LABELS or task == "MedDG":
        return text.strip()
    raise ValueError(f"unknown PromptCBLUE task {task!r}; known: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------------------
# Metrics (evaluators.py, text2dt_eval_func.py)
# ---------------------------------------------------------------------------------------------

def _tuple_set(answer) -> set:
    return {tuple(json.dumps(item[k], ensure_ascii=False) for k in sorted(item)) for item in answer}


def _extraction_scores(golds: list, preds: list) -> dict:
    tp = fp = fn = 0
    for gold, pred in zip(golds, preds):
        g, p = _tuple_set(gold), _tuple_set(pred)
        tp += len(g & p)
        fp += len(p - g)
        fn += len(g - p)
    if tp:
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
    else:
        precision = recall = f1 = 0.0
    return {"micro_precision": precision, "micro_recall": recall, "micro_f1": f1}


def _classification_scores(golds: list, preds: list, first_label: str, average: str) -> dict:
    """sklearn classification_report(zero_division=0) 'macro avg' / 'weighted avg', re-done."""
    y_true = list(golds)
    y_pred = [p if p != "" else first_label for p in preds]
    labels = sorted(set(y_true) | set(y_pred))
    per_label = []
    for label in labels:
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == label and p == label)
        n_pred = sum(1 for p in y_pred if p == label)
        support = sum(1 for t in y_true if t == label)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (n_pred + support) if (n_pred + support) and tp else 0.0
        per_label.append((precision, recall, f1, support))
    if average == MACRO:
        weights = [1] * len(per_label)
    else:
        weights = [s for *_, s in per_label]
    total = sum(weights)
    avg = [sum(row[i] * w for row, w in zip(per_label, weights)) / total for i in range(3)]
    return {f"{average}_precision": avg[0], f"{average}_recall": avg[1], f"{average}_f1": avg[2]}


_PUNCT_ASCII = set(range(33, 48)) | set(range(58, 65)) | set(range(91, 97)) | set(range(123, 127))
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punct(ch: str) -> bool:
    return ord(ch) in _PUNCT_ASCII or unicodedata.category(ch).startswith("P")


def basic_tokenize(text: str) -> list[str]:
    """BERT BasicTokenizer (lower case, strip accents, split CJK characters and punctuation).

    The same tokens as ``transformers.BasicTokenizer(tokenize_chinese_chars=True).tokenize``, which
    the official scorer uses before ROUGE; re-implemented so scoring needs no transformers import.
    """
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(ch):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    tokens = []
    for word in unicodedata.normalize("NFC", "".join(cleaned)).split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                       if unicodedata.category(c) != "Mn")
        piece = ""
        for ch in word:
            if _is_punct(ch):
                if piece:
                    tokens.append(piece)
                    piece = ""
                tokens.append(ch)
            else:
                piece += ch
        if piece:
            tokens.append(piece)
    return " ".join(tokens).split()


def _rouge_ready(text: str) -> str:
    joined = " ".join(basic_tokenize(text.strip())).strip()
    return joined if joined else EMPTY_TEXT


def _rouge_scores(pairs: list[tuple[str, str]]) -> dict:
    if not pairs:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    from rouge_chinese import Rouge

    hyps = [_rouge_ready(p) for _, p in pairs]
    refs = [_rouge_ready(g) for g, _ in pairs]
    avg = Rouge().get_scores(hyps, refs, avg=True)
    return {"rouge1": avg["rouge-1"]["f"], "rouge2": avg["rouge-2"]["f"], "rougeL": avg["rouge-l"]["f"]}


# --- Text2DT (text2dt_eval_func.py) ---

def _tree_links(roles: list[str]) -> list[list]:
    """Fold a pre-order role list into links: links[a][b] is 'F' (b is a's parent), 'L' or 'R'
    (b is a's left / right child), else 0. A C node takes the next two finished subtrees."""
    work = list(roles)
    n = len(work)
    links = [[0] * n for _ in range(n)]
    passes = 0
    while work[0] != "D":
        for i in range(n):
            if work[i] != "C":
                continue
            first = None
            folded = stop = False
            for j in range(i + 1, n):
                if work[j] == "X":
                    continue
                if work[j] == "C":
                    stop = True
                elif work[j] == "D" and first is None:
                    first = j
                elif work[j] == "D":
                    links[first][i] = links[j][i] = "F"
                    links[i][first], links[i][j] = "L", "R"
                    work[i] = "D"
                    for k in range(i + 1, j + 1):
                        work[k] = "X"
                    folded = True
                if folded or stop:
                    break
            if folded:
                break
        passes += 1
        if passes > 100:
            break
    return links


_EMPTY_NODE = {"role": "", "triples": [], "logical_rel": "null"}


def _node_distance(a: dict, b: dict | None) -> int:
    b = _EMPTY_NODE if b is None else b
    return ((a["role"] != b["role"]) + (a["logical_rel"] != b["logical_rel"])
            + len(set(a["triples"]) ^ set(b["triples"])))


def _is_leaf(row) -> bool:
    return "L" not in row and "R" not in row


def _has_both(row) -> bool:
    return "L" in row and "R" in row


def _subtree_cost(tree, links, root) -> int:
    """Cost of deleting the children subtrees of `root` (each node against an empty node)."""
    cost = 0
    todo = [links[root].index("R"), links[root].index("L")]
    while todo:
        k = todo.pop()
        cost += _node_distance(tree[k], None)
        if _has_both(links[k]):
            todo += [links[k].index("R"), links[k].index("L")]
    return cost


def _tree_edit_distance(pred, gold, pl, gl) -> int:
    total = 0
    stack_p, stack_g = [0], [0]
    try:
        while stack_p:
            a, b = stack_p.pop(), stack_g.pop()
            if _is_leaf(pl[a]) and not _is_leaf(gl[b]):
                total += _node_distance(pred[a], gold[b])
                total += _subtree_cost(gold, gl, b)
            elif _has_both(pl[a]) and not _has_both(gl[b]):
                total += _node_distance(pred[a], gold[b])
                total += _subtree_cost(pred, pl, a)
            elif _is_leaf(pl[a]) and _is_leaf(gl[b]):
                total += _node_distance(pred[a], gold[b])
            else:
                stack_p += [pl[a].index("R"), pl[a].index("L")]
                stack_g += [gl[b].index("R"), gl[b].index("L")]
                total += _node_distance(pred[a], gold[b])
    except (ValueError, IndexError):
        pass  # the official code prints and keeps the distance accumulated so far
    return total


def _nodes_equal(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["logical_rel"] == b["logical_rel"] and set(a["triples"]) == set(b["triples"])


def _root_paths(tree, links, out: list) -> None:
    for leaf in range(len(links)):
        if not _is_leaf(links[leaf]):
            continue
        path, node = [tree[leaf]], leaf
        while node != 0:
            parent = links[node].index("F")
            path += [links[parent][node], tree[parent]]
            node = parent
        out.append(path)


def _paths_equal(p: list, q: list) -> bool:
    if len(p) != len(q):
        return False
    for a, b in zip(p, q):
        if isinstance(a, dict) and isinstance(b, dict):
            if not _nodes_equal(a, b):
                return False
        elif a != b:
            return False
    return True


def _decision_paths(pred, gold, pl, gl) -> tuple[int, int, int]:
    paths_p, paths_g = [], []
    try:
        _root_paths(pred, pl, paths_p)
        _root_paths(gold, gl, paths_g)
        correct = sum(1 for p in paths_p if any(_paths_equal(p, g) for g in paths_g))
    except (ValueError, IndexError):
        correct = 0  # the official code keeps the path counts collected so far
    return correct, len(paths_p), len(paths_g)


def _normalise_tree(tree: list) -> list[dict]:
    return [{"role": node["role"], "logical_rel": node["logical_rel"],
             "triples": [tuple(x.lower() for x in t) for t in node["triples"]]} for node in tree]


def _tree_counts(pred_tree: list, gold_tree: list) -> dict:
    pred, gold = _normalise_tree(pred_tree), _normalise_tree(gold_tree)
    pl, gl = _tree_links([n["role"] for n in pred]), _tree_links([n["role"] for n in gold])
    path_ok, path_p, path_g = _decision_paths(pred, gold, pl, gl)
    p_trip = {t for n in pred for t in n["triples"]}
    g_trip = {t for n in gold for t in n["triples"]}
    p_nodes = [n for n in pred if n["triples"]]
    g_nodes = [n for n in gold if n["triples"]]
    return {
        "edit": _tree_edit_distance(pred, gold, pl, gl),
        "max_edit": len(p_trip) + 2 * len(p_nodes) + len(g_trip) + 2 * len(g_nodes),
        "node_ok": sum(1 for a in p_nodes for b in g_nodes if _nodes_equal(a, b)),
        "node_p": len(p_nodes), "node_g": len(g_nodes),
        "path_ok": path_ok, "path_p": path_p, "path_g": path_g,
    }


def _f1_eps(correct: float, predicted: float, gold: float) -> float:
    p, r = correct / predicted, correct / gold
    return 2 * p * r / (p + r)


def _tree_scores(golds: list, preds: list) -> dict:
    eps = 0.000001  # the official F1 counters start at 1e-6 and are summed sample by sample
    sums = {"edit": 0, "max_edit": 0, "node_ok": eps, "node_p": eps, "node_g": eps,
            "path_ok": eps, "path_p": eps, "path_g": eps}
    for gold, pred in zip(golds, preds):
        for key, value in _tree_counts(pred, gold).items():
            sums[key] += value
    if sums["max_edit"]:
        ratio = 1 - sums["edit"] / sums["max_edit"]
    else:  # official: ZeroDivisionError
        ratio = 1.0 if sums["edit"] == 0 else 0.0
    return {
        "tree_edit_ratio": ratio,
        "node_f1": _f1_eps(sums["node_ok"], sums["node_p"], sums["node_g"]),
        "path_f1": _f1_eps(sums["path_ok"], sums["path_p"], sums["path_g"]),
    }


def _task_metrics(task: str, golds: list, preds: list) -> dict:
    family = TASKS[task]
    canonical = _canonical(task)
    if family == EXTRACTION:
        return _extraction_scores(golds, preds)
    if family in (MACRO, WEIGHTED):
        return _classification_scores(golds, preds, CLASSIFICATION_LABELS[canonical][0], family)
    if family == GENERATION:
        return _rouge_scores(list(zip(golds, preds)))
    if family == SECTIONS:
        pairs = [(g[key], p.get(key, "")) for g, p in zip(golds, preds) for key in g]
        return _rouge_scores(pairs)
    return _tree_scores(golds, preds)


# ---------------------------------------------------------------------------------------------
# Public scoring API
# ---------------------------------------------------------------------------------------------

def _task_order(tasks) -> list[str]:
    order = list(TASKS)
    return sorted(tasks, key=order.index)


def score_structured(structured_golds: Mapping, structured_preds: Mapping, missing: Mapping | None = None) -> dict:
    """Score structured answers: {task: [answer, ...]} for gold and prediction, aligned per task.

    Classification golds must be non-empty strings. Returns the result dict described in the module
    docstring (all numbers x 100).
    """
    missing = missing or {}
    tasks = {}
    for task in _task_order(structured_golds):
        golds, preds = list(structured_golds[task]), list(structured_preds[task])
        if len(golds) != len(preds):
            raise ValueError(f"{task}: {len(golds)} gold answers but {len(preds)} predictions")
        metrics = _task_metrics(task, golds, preds)
        primary = PRIMARY[TASKS[task]]
        entry = {"primary": primary, "score": 100 * metrics[primary]}
        entry.update({k: 100 * v for k, v in metrics.items()})
        entry.update({"n": len(golds), "n_missing": int(missing.get(task, 0))})
        tasks[task] = entry
    overall = sum(t["score"] for t in tasks.values()) / len(tasks) if tasks else 0.0
    return {"benchmark": "PromptCBLUE", "overall": overall,
            "n": sum(t["n"] for t in tasks.values()),
            "n_missing": sum(t["n_missing"] for t in tasks.values()),
            "tasks": tasks}


def score(preds, golds: Sequence[Mapping], *, strict: bool = False) -> dict:
    """Score free-text predictions against PromptCBLUE gold records with the official rules.

    preds: ``{sample_id: text}`` or a sequence of texts (None = missing) aligned with ``golds``.
    golds: records with ``task_dataset``, ``target``, ``answer_choices`` and ``sample_id``.
    A missing prediction is scored as "" and counted in ``n_missing``; ``strict=True`` raises.
    Raises ValueError for an unknown task or an empty classification gold label.
    """
    golds = list(golds)
    if isinstance(preds, Mapping):
        texts = [preds.get(g.get("sample_id")) for g in golds]
    else:
        texts = list(preds)
        if len(texts) != len(golds):
            raise ValueError(f"{len(texts)} predictions for {len(golds)} gold records")
    s_gold, s_pred, missing = defaultdict(list), defaultdict(list), defaultdict(int)
    for gold, text in zip(golds, texts):
        task = gold.get("task_dataset")
        if task not in TASKS:
            raise ValueError(f"sample {gold.get('sample_id')!r}: unknown PromptCBLUE task {task!r}; "
                             f"known: {', '.join(TASKS)}")
        if text is None:
            if strict:
                raise ValueError(f"no prediction for sample {gold.get('sample_id')!r} ({task})")
            missing[task] += 1
            text = ""
        choices = gold.get("answer_choices")
        gold_answer = parse_answer(task, gold.get("target") or "", choices)
        if TASKS[task] in (MACRO, WEIGHTED) and gold_answer == "":
            raise ValueError(f"sample {gold.get('sample_id')!r} ({task}): empty gold label")
        s_gold[task].append(gold_answer)
        s_pred[task].append(parse_answer(task, text, choices))
    return score_structured(s_gold, s_pred, missing)


def round_scores(result: dict, digits: int = 4) -> dict:
    """A copy of a score() result with every float rounded (for stable, tabular JSON output)."""
    if isinstance(result, float):
        return round(result, digits)
    if isinstance(result, dict):
        return {k: round_scores(v, digits) for k, v in result.items()}
    return result


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, record) for each record of a JSON-lines file (or a JSON array: record number
    from 1), read by tuneflow.data.readers (\\r\\n, \\r or \\n line ends, `.gz`, a UTF-8 BOM); a
    record that is not an object raises DataError naming the file and line."""
    from tuneflow.data.readers import SourceInfo, iter_records

    records = []
    for raw in iter_records(Path(path), SourceInfo(str(path))):
        where = raw.line if raw.line is not None else raw.index + 1
        if not isinstance(raw.value, dict):
            raise DataError(path, f"expected a JSON object, got {type(raw.value).__name__}", line=where)
        records.append((where, raw.value))
    return records


def pair_predictions(gold_ids: Sequence[str], pred_items: Sequence[tuple[str, object]]):
    """Match predictions to gold records by sample_id: the k-th prediction with an id goes to the
    k-th gold record with that id (the we1k files reuse ids). Returns (texts aligned with gold_ids,
    None where missing; number of predictions left unmatched)."""
    queues = defaultdict(deque)
    for sid, text in pred_items:
        queues[sid].append(text)
    texts = [queues[sid].popleft() if queues.get(sid) else None for sid in gold_ids]
    return texts, sum(len(q) for q in queues.values())


def _load_gold(path) -> list[dict]:
    golds = []
    for lineno, rec in read_jsonl(path):
        for key in ("task_dataset", "sample_id", "target"):
            if key not in rec:
                raise DataError(path, f"gold record has no {key!r} field", line=lineno)
        if not isinstance(rec["target"], str):
            raise DataError(path, "gold 'target' must be a string", line=lineno)
        if rec["task_dataset"] not in TASKS:
            raise DataError(path, f"unknown PromptCBLUE task {rec['task_dataset']!r} "
                                  f"(known: {', '.join(TASKS)})", line=lineno)
        if _canonical(rec["task_dataset"]) in CLASSIFICATION_LABELS and not parse_answer(
                rec["task_dataset"], rec["target"]):
            raise DataError(path, "empty gold label for a classification task", line=lineno)
        golds.append(rec)
    if not golds:
        raise DataError(path, "no gold records")
    return golds


def _load_predictions(path, field: str) -> list[tuple[str, object]]:
    items = []
    for lineno, rec in read_jsonl(path):
        if "sample_id" not in rec:
            raise DataError(path, "prediction record has no 'sample_id' field", line=lineno)
        text = rec.get(field)
        if text is not None and not isinstance(text, str):
            raise DataError(path, f"prediction {field!r} must be a string or null", line=lineno)
        items.append((rec["sample_id"], text))
    return items


def evaluate_files(pred_path, gold_path, *, pred_field: str = "target", strict: bool = False) -> dict:
    """Score a predictions JSON-lines file against a PromptCBLUE gold file (see `score`).

    Predictions are matched by sample_id (k-th duplicate to k-th duplicate); a prediction whose
    `pred_field` is null or that is absent counts as missing. Adds "n_extra_predictions".
    """
    golds = _load_gold(gold_path)
    items = _load_predictions(pred_path, pred_field)
    texts, n_extra = pair_predictions([g["sample_id"] for g in golds], items)
    if strict:
        for gold, text in zip(golds, texts):
            if text is None:
                raise DataError(pred_path, f"no prediction for gold sample {gold['sample_id']!r} "
                                           f"({gold['task_dataset']}) of {gold_path}")
    result = score(texts, golds)
    out = {k: result[k] for k in ("benchmark", "overall", "n", "n_missing")}
    out["n_extra_predictions"] = n_extra
    out["tasks"] = result["tasks"]
    return out
