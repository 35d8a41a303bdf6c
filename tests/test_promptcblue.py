"""PromptCBLUE scorer: hand-computed cases per task family, the official quirks, the real data
(perfect predictions give 100; one wrong answer lowers only its task) and the CLI end to end."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import skip_or_fail
from tuneflow.errors import DataError
from tuneflow.eval import promptcblue as pc
from tuneflow.eval.promptcblue import basic_tokenize, evaluate_files, pair_predictions, parse_answer, score

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TOY = SHARED / "promptcblue" / "toy_examples"
WE1K = SHARED / "promptcblue_aug_we1k"
CLI = REPO / "scripts" / "evaluate.py"

@pytest.fixture
def needs_shared_data():
    if not TOY.is_dir() or not WE1K.is_dir():
        skip_or_fail(f"shared PromptCBLUE data not found at {SHARED} (expected <repo>/../shared/data)")


needs_shared = pytest.mark.usefixtures("needs_shared_data")

approx = pytest.approx


def rec(task, target, sid, choices=None):
    return {"input": "", "target": target, "answer_choices": choices, "task_type": "",
            "task_dataset": task, "sample_id": sid}


def run(golds, preds, **kw):
    """Score texts aligned with golds (so the tests do not depend on sample_id matching)."""
    return score(preds, golds, **kw)


# ---------------------------------------------------------------------------------------------
# Extraction: strict micro P/R/F1
# ---------------------------------------------------------------------------------------------

def test_ner_micro_f1_with_partial_matches():
    ch = ["疾病", "药物"]
    golds = [rec("CMeEE-V2", "上述句子中的实体包含：\n疾病实体：肺炎，哮喘\n药物实体：阿莫西林", "a", ch),
             rec("CMeEE-V2", "上述句子中的实体包含：\n疾病实体：\n药物实体：布洛芬", "b", ch)]
    preds = ["上述句子中的实体包含：\n疾病实体：肺炎，感冒\n药物实体：",
             "上述句子中的实体包含：\n疾病实体：\n药物实体：布洛芬，布洛芬"]  # duplicate collapses
    t = run(golds, preds)["tasks"]["CMeEE-V2"]
    # a: gold {肺炎,哮喘,阿莫西林} pred {肺炎,感冒} -> tp 1 fp 1 fn 2; b: tp 1
    # tp=2 fp=1 fn=2: P = 2/3, R = 2/4, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    assert t["micro_precision"] == approx(100 * 2 / 3)
    assert t["micro_recall"] == approx(50.0)
    assert t["micro_f1"] == approx(100 * 4 / 7)
    assert t["primary"] == "micro_f1" and t["score"] == t["micro_f1"] and t["n"] == 2


def test_cmeie_alias_and_cdn_choice_filter():
    golds = [rec("CMeIE", "具有药物治疗关系的头尾实体对如下：头实体为心衰，尾实体为地高辛。头实体为心衰，尾实体为利尿剂。\n"
                          "具有相关（症状）关系的头尾实体对如下：", "a", ["药物治疗", "相关（症状）"]),
             rec("CHIP-CDN", "肺炎，哮喘", "b", ["肺炎", "哮喘", "感冒"])]
    preds = ["具有药物治疗关系的头尾实体对如下：头实体为心衰，尾实体为地高辛。",
             "肺炎，鼻炎"]  # 鼻炎 is not an answer choice: dropped by the template
    tasks = run(golds, preds)["tasks"]
    # CMeIE: gold 2 triples, pred 1 correct -> P 1, R 1/2, F1 = 2/3
    assert tasks["CMeIE"]["micro_f1"] == approx(100 * 2 / 3)
    # CDN: gold {肺炎,哮喘}, pred {肺炎} -> P 1, R 1/2, F1 = 2/3
    assert tasks["CHIP-CDN"]["micro_precision"] == approx(100.0)
    assert tasks["CHIP-CDN"]["micro_f1"] == approx(100 * 2 / 3)


def test_cdee_lists_are_order_sensitive_and_causal_triples():
    golds = [rec("CHIP-CDEE", "上述句子中的临床发现事件如下：\n主体词：疼痛；发生状态：；描述词：胀痛，持续性；解剖部位：腹\n"
                              "主体词：发热；发生状态：否定；描述词：；解剖部位：", "a"),
             rec("CMedCausal", "根据给定的文本抽取的因果关系三元组如下：\n头实体：吸烟；尾实体：肺癌\n"
                               "根据给定的文本抽取的条件关系三元组如下：\n头实体：高龄；尾三元组：头实体：吸烟；尾实体：肺癌；关系：因果关系\n"
                               "根据给定的文本抽取的上下位关系三元组如下：\n头实体：肺癌；尾实体：癌症", "b")]
    preds = ["上述句子中的临床发现事件如下：\n主体词：疼痛；发生状态：；描述词：持续性，胀痛；解剖部位：腹\n"
             "主体词：发热；发生状态：否定；描述词：；解剖部位：",
             "根据给定的文本抽取的因果关系三元组如下：\n头实体：吸烟；尾实体：肺癌\n"
             "根据给定的文本抽取的上下位关系三元组如下：\n头实体：肺癌；尾实体：癌症"]
    tasks = run(golds, preds)["tasks"]
    # CDEE: the 描述词 list order differs -> that event is wrong (json.dumps of the list):
    # tp 1, fp 1, fn 1 -> P = R = F1 = 1/2
    assert tasks["CHIP-CDEE"]["micro_f1"] == approx(50.0)
    # CMedCausal: the nested 条件关系 triple is missing: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 = 0.8
    assert tasks["CMedCausal"]["micro_precision"] == approx(100.0)
    assert tasks["CMedCausal"]["micro_f1"] == approx(80.0)
    nested = parse_answer("CMedCausal", golds[1]["target"])[1]
    # official quirk: head = text.split("头实体：")[1].split("；尾实体：")[0] keeps "；尾三元组：" on 条件关系 lines
    assert nested == {"predicate": "条件关系", "subject": "高龄；尾三元组：",
                      "object": {"predicate": "因果关系", "subject": "吸烟", "object": "肺癌"}}


def test_extraction_without_any_true_positive_is_zero_even_when_both_empty():
    golds = [rec("IMCS-V2-NER", "上述句子中的实体包含：\n症状实体：", "a", ["症状"])]
    # official: "if tp: ... else: precision, recall, f1 = 0, 0, 0"
    t = run(golds, ["上述句子中的实体包含：\n症状实体："])["tasks"]["IMCS-V2-NER"]
    assert (t["micro_precision"], t["micro_recall"], t["micro_f1"]) == (0.0, 0.0, 0.0)


def test_attr_templates_default_labels():
    sr = ["没有患有该症状", "患有该症状", "无法根据上下文确定病人是否患有该症状"]
    got = parse_answer("IMCS-V2-SR", "当前对话中的症状及其阴阳性判断为：\n咳嗽：患有\n发热：患有该症状\n无冒号行\n头：痛：x", sr)
    assert got == [{"entity": "咳嗽", "attr": "无法根据上下文确定病人是否患有该症状"},
                   {"entity": "发热", "attr": "患有该症状"}]
    md = ["已有症状疾病或者假设未来可能发生的疾病等", "未患有症状疾病"]
    got = parse_answer("CHIP-MDCFNPC", "上述对话中临床发现实体以及其阴阳性判别如下：\n腹泻：随便\n呕吐：未患有症状疾病", md)
    assert got == [{"entity": "腹泻", "attr": "不标注"}, {"entity": "呕吐", "attr": "未患有症状疾病"}]


# ---------------------------------------------------------------------------------------------
# Classification: macro / weighted F1 (sklearn classification_report, zero_division=0)
# ---------------------------------------------------------------------------------------------

def test_macro_f1_counts_off_list_predictions_as_a_class():
    golds = [rec("KUAKE-QIC", lab, f"q{i}") for i, lab in enumerate(["治疗方案", "治疗方案", "病情诊断", "就医建议"])]
    preds = ["治疗方案", "病情诊断", "病情诊断", "不知道"]
    t = run(golds, preds)["tasks"]["KUAKE-QIC"]
    # labels = gold ∪ pred = {治疗方案, 病情诊断, 就医建议, 不知道}
    # 治疗方案: tp 1, predicted 1, support 2 -> P 1,   R 1/2, F1 2/3
    # 病情诊断: tp 1, predicted 2, support 1 -> P 1/2, R 1,   F1 2/3
    # 就医建议: tp 0, predicted 0, support 1 -> 0, 0, 0;  不知道: predicted 1, support 0 -> 0, 0, 0
    # macro P = (1 + 1/2)/4 = 0.375, R = (1/2 + 1)/4 = 0.375, F1 = (2/3 + 2/3)/4 = 1/3
    assert t["macro_precision"] == approx(37.5)
    assert t["macro_recall"] == approx(37.5)
    assert t["macro_f1"] == approx(100 / 3)
    assert t["primary"] == "macro_f1"


def test_weighted_f1():
    golds = [rec("KUAKE-QTR", lab, f"t{i}") for i, lab in enumerate(["部分匹配"] * 3 + ["完全匹配"])]
    preds = ["部分匹配", "部分匹配", "完全匹配", "完全匹配"]
    t = run(golds, preds)["tasks"]["KUAKE-QTR"]
    # 部分匹配: tp 2, predicted 2, support 3 -> P 1,   R 2/3, F1 4/5
    # 完全匹配: tp 1, predicted 2, support 1 -> P 1/2, R 1,   F1 2/3
    # weighted P = (1*3 + 1/2*1)/4 = 0.875; R = (2/3*3 + 1*1)/4 = 0.75; F1 = (4/5*3 + 2/3)/4 = 23/30
    assert t["weighted_precision"] == approx(87.5)
    assert t["weighted_recall"] == approx(75.0)
    assert t["weighted_f1"] == approx(100 * 23 / 30)
    assert t["primary"] == "weighted_f1"


def test_empty_classification_prediction_becomes_first_official_label():
    golds = [rec("KUAKE-IR", "相关", "i0"), rec("KUAKE-IR", "不相关", "i1")]
    t = run(golds, ["", "  "])["tasks"]["KUAKE-IR"]
    # both empty -> "相关" (first of ["相关", "不相关"]):
    # 相关: tp 1, predicted 2, support 1 -> P 1/2, R 1, F1 2/3; 不相关: all 0
    # weighted P = (1/2)/2 = 0.25, R = 1/2, F1 = (2/3)/2 = 1/3  (an empty class would give 0)
    assert t["weighted_precision"] == approx(25.0)
    assert t["weighted_recall"] == approx(50.0)
    assert t["weighted_f1"] == approx(100 / 3)
    # CHIP-STS: 相同/不同 map to 是的/不是 (gold too), and "" -> 是的 = right here
    golds = [rec("CHIP-STS", "相同", "s0"), rec("CHIP-STS", "不同", "s1")]
    assert run(golds, ["", "不同"])["tasks"]["CHIP-STS"]["weighted_f1"] == approx(100.0)


def test_missing_prediction_is_scored_as_empty_and_counted():
    golds = [rec("KUAKE-IR", "相关", "i0"), rec("KUAKE-IR", "不相关", "i1")]
    by_id = score({"i1": "不相关"}, golds)
    explicit = score({"i0": "", "i1": "不相关"}, golds)
    assert by_id["tasks"] == {**explicit["tasks"], "KUAKE-IR": {**explicit["tasks"]["KUAKE-IR"], "n_missing": 1}}
    assert by_id["n_missing"] == 1 and by_id["tasks"]["KUAKE-IR"]["weighted_f1"] == approx(100.0)
    with pytest.raises(ValueError, match="no prediction for sample 'i0'"):
        score({"i1": "不相关"}, golds, strict=True)


def test_empty_gold_label_and_unknown_task_are_errors():
    with pytest.raises(ValueError, match="empty gold label"):
        run([rec("CHIP-CTC", " ", "c0")], ["疾病"])
    with pytest.raises(ValueError, match="unknown PromptCBLUE task"):
        run([rec("NOPE", "x", "n0")], ["x"])


# ---------------------------------------------------------------------------------------------
# Generation: ROUGE on BasicTokenizer tokens, empties -> "无 。", MRG pooled over sections
# ---------------------------------------------------------------------------------------------

def test_basic_tokenize_splits_cjk_keeps_english_words_lowercased():
    assert basic_tokenize("Take ASPIRIN，每日2次 naïve") == ["take", "aspirin", "，", "每", "日", "2", "次", "naive"]


def test_basic_tokenize_matches_transformers():
    transformers = pytest.importorskip("transformers")
    bt = transformers.BasicTokenizer(tokenize_chinese_chars=True)
    texts = ["患者：Café 3.5mg（口服）e-mail\u00a0x\u3000y\x00z\ufffd", "ＡＢＣ１２３，。！“引号”", "豈 \u2028 x"]
    for t in texts:
        assert basic_tokenize(t) == bt.tokenize(t)


def test_meddg_rouge_with_empties():
    golds = [rec("MedDG", g, f"m{i}") for i, g in enumerate(["你好", "多喝水", "", "注意休息"])]
    preds = ["你好", "", "", "多休息"]
    t = run(golds, preds)["tasks"]["MedDG"]
    # F = 2PR/(P+R+1e-8) on distinct n-grams of the character tokens, averaged over the 4 pairs:
    # 1) 你 好 = 你 好: F1 = F2 = FL = 1
    # 2) hyp "" -> "无 。" vs 多 喝 水: 0
    # 3) "" vs "" -> "无 。" vs "无 。": 1
    # 4) hyp 多 休 息, ref 注 意 休 息: R1 P 2/3 R 1/2 -> 4/7; R2 {多休,休息} vs {注意,意休,休息}
    #    P 1/2 R 1/3 -> 0.4; LCS 休息 = 2 -> 4/7
    # R1 = RL = (1 + 0 + 1 + 4/7)/4 = 9/14; R2 = (1 + 0 + 1 + 0.4)/4 = 0.6
    assert t["rouge1"] == approx(100 * 9 / 14, abs=1e-5)
    assert t["rouge2"] == approx(60.0, abs=1e-5)
    assert t["rougeL"] == approx(100 * 9 / 14, abs=1e-5)
    assert t["score"] == t["rougeL"]


def test_empty_prediction_placeholder_overlaps_final_full_stop():
    # official quirk: "" -> "无 。", which shares "。" with a reference ending in a full stop:
    # hyp {无, 。} vs ref {感, 冒, 。}: P 1/2, R 1/3 -> F1 = 2*(1/6)/(5/6) = 0.4
    t = run([rec("MedDG", "感冒。", "m")], [""])["tasks"]["MedDG"]
    assert t["rouge1"] == approx(40.0, abs=1e-5)


def test_mrg_pools_sample_section_pairs():
    golds = [rec("IMCS-V2-MRG", "上述问诊对话的诊疗报告如下：\n主诉：发热。\n诊断：感冒", "r0"),
             rec("IMCS-V2-MRG", "上述问诊对话的诊疗报告如下：\n主诉：咳嗽", "r1")]
    preds = ["报告：\n主诉：发热。\n建议：休息。",  # 诊断 missing -> "", 建议 not in gold -> ignored
             "报告：\n主诉：咳嗽"]
    t = run(golds, preds)["tasks"]["IMCS-V2-MRG"]
    # pairs: (发热。, 发热。) = 1; (感冒, "" -> "无 。") = 0; (咳嗽, 咳嗽) = 1 -> mean 2/3
    # (a per-sample mean would give (1/2 + 1)/2 = 0.75)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert t[key] == approx(100 * 2 / 3, abs=1e-5)


def test_mrg_template_takes_text_after_the_last_key():
    got = parse_answer("IMCS-V2-MRG", "引导\n主诉：发热 主诉：咳嗽 \n 诊断：x\n主诉：流涕")
    assert got == {"主诉": "流涕"}  # " 诊断：x" does not start with the key; last 主诉 line wins
    assert parse_answer("IMCS-V2-MRG", "引导\n主诉：发热 主诉：咳嗽 ") == {"主诉": "咳嗽"}


# ---------------------------------------------------------------------------------------------
# Text2DT: tree edit ratio
# ---------------------------------------------------------------------------------------------

HEAD = "根据给定的指南文本抽取的诊疗决策树如下：\n"


def test_text2dt_tree_edit_ratio():
    gold1 = (HEAD + "节点1：role=C；logical_rel=null；triples=[('患者', '临床表现', '发热')]\n"
                    "节点2：role=D；logical_rel=null；triples=[('患者', '药物', '布洛芬')]\n"
                    "节点3：role=D；logical_rel=null；triples=[]")
    pred1 = gold1.replace("布洛芬", "对乙酰氨基酚")
    gold2 = HEAD + "节点1：role=D；logical_rel=null；triples=[('Fever', '治疗', 'Aspirin')]"
    pred2 = gold2.replace("Fever", "fever").replace("Aspirin", "ASPIRIN")  # triples are lower-cased
    t = run([rec("Text2DT", gold1, "d1"), rec("Text2DT", gold2, "d2")], [pred1, pred2])["tasks"]["Text2DT"]
    # tree 1: roots C=C (0), left leaves differ by 2 triples (symmetric difference), right leaves 0 -> 2
    #   max = pred (2 triples + 2*2 nodes with triples) + gold (2 + 4) = 12
    # tree 2: equal after lower-casing -> 0; max = (1 + 2) + (1 + 2) = 6
    # ratio = 1 - 2/18 = 8/9
    assert t["tree_edit_ratio"] == approx(100 * 8 / 9)
    # nodes with triples: correct 1 + 1 of predicted 2 + 1 and gold 2 + 1 -> F1 2/3 (counters start at 1e-6)
    assert t["node_f1"] == approx(100 * 2 / 3, abs=1e-3)
    # root-to-leaf paths: tree 1 right path equal, left not; tree 2 single path equal -> 2 of 3 and 3
    assert t["path_f1"] == approx(100 * 2 / 3, abs=1e-3)
    assert t["primary"] == "tree_edit_ratio"


def test_text2dt_leaf_against_a_subtree_costs_the_whole_subtree():
    gold = (HEAD + "节点1：role=C；logical_rel=null；triples=[('患者', '临床表现', '发热')]\n"
                   "节点2：role=D；logical_rel=null；triples=[('患者', '药物', '布洛芬')]\n"
                   "节点3：role=D；logical_rel=null；triples=[('患者', '药物', '阿司匹林')]")
    pred = HEAD + "节点1：role=D；logical_rel=null；triples=[('患者', '临床表现', '发热')]"
    t = run([rec("Text2DT", gold, "d1")], [pred])["tasks"]["Text2DT"]
    # root: role D vs C (1) + same triple (0); gold's two leaves deleted, each against an empty
    # node: role (1) + one triple (1) -> 1 + 2 + 2 = 5; max = (1 + 2*1) + (3 + 2*3) = 12
    assert t["tree_edit_ratio"] == approx(100 * (1 - 5 / 12))


def test_perfect_predictions_score_100_on_the_tasks_without_shared_data():
    golds = [rec("Text2DT", HEAD + "节点1：role=C；logical_rel=or；triples=[('患者', '临床表现', '发热'), ('患者', '临床表现', '咳嗽')]\n"
                                   "节点2：role=D；logical_rel=null；triples=[('患者', '药物', '布洛芬')]\n"
                                   "节点3：role=D；logical_rel=null；triples=[]", "t1"),
             rec("CMedCausal", "根据给定的文本抽取的因果关系三元组如下：\n头实体：吸烟；尾实体：肺癌\n"
                               "根据给定的文本抽取的条件关系三元组如下：\n头实体：高龄；尾三元组：头实体：吸烟；尾实体：肺癌；关系：因果关系", "c1")]
    tasks = run(golds, [g["target"] for g in golds])["tasks"]
    assert tasks["Text2DT"]["score"] == approx(100.0) and tasks["CMedCausal"]["score"] == approx(100.0)


def test_text2dt_template_quirks():
    got = parse_answer("Text2DT", HEAD + "a：role=C；logical_rel=and；triples=[('a','b','c'), ('x','y'), 'abc']\n"
                                         "b：role=D；logical_rel=null；triples=not a literal\n"
                                         "c：role=D\n"
                                         "no role here")
    assert got == [{"role": "C", "logical_rel": "and", "triples": [["a", "b", "c"], ["a", "b", "c"]]},
                   {"role": "D", "logical_rel": "null", "triples": []},
                   {"role": "D", "logical_rel": "null", "triples": []}]
    assert parse_answer("Text2DT", "") == [{"role": "D", "logical_rel": "null", "triples": []}]
    # an item without len() empties the node's triples (the official try/except)
    assert parse_answer("Text2DT", "x：role=D；logical_rel=null；triples=[('a','b','c'), 5]")[0]["triples"] == []


# ---------------------------------------------------------------------------------------------
# Output shape, overall, pairing
# ---------------------------------------------------------------------------------------------

def test_overall_is_mean_of_primary_scores_in_official_order():
    golds = [rec("KUAKE-IR", "相关", "i0"), rec("CMeEE-V2", "引导\n疾病实体：肺炎", "e0", ["疾病"]),
             rec("KUAKE-IR", "不相关", "i1")]
    res = run(golds, ["相关", "引导\n疾病实体：哮喘", "不相关"])
    assert list(res) == ["benchmark", "overall", "n", "n_missing", "tasks"]
    assert list(res["tasks"]) == ["CMeEE-V2", "KUAKE-IR"]
    assert res["overall"] == approx((0.0 + 100.0) / 2)
    assert res["n"] == 3
    json.dumps(res)  # serialisable


def test_pair_predictions_matches_duplicate_ids_in_order():
    texts, extra = pair_predictions(["a", "b", "a", "c"], [("a", "1"), ("a", "2"), ("b", "3"), ("z", "4")])
    assert texts == ["1", "3", "2", None] and extra == 1


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------

def _records(path):
    return [r for _, r in pc.read_jsonl(path)]


def _by_key(answers):
    return sorted(json.dumps(a, ensure_ascii=False, sort_keys=True) for a in answers) if isinstance(answers, list) else answers


@needs_shared
def test_templates_reproduce_dev_structured():
    structured = json.loads((TOY / "dev_structured.json").read_text(encoding="utf-8"))
    expected = {(task, x["sample_id"]): x["answer"] for task, xs in structured.items() for x in xs}
    dev = _records(TOY / "dev.json")
    assert len(dev) == len(expected) == 72
    for r in dev:
        got = parse_answer(r["task_dataset"], r["target"], r["answer_choices"])
        assert _by_key(got) == _by_key(expected[(r["task_dataset"], r["sample_id"])]), r["sample_id"]


@needs_shared
@pytest.mark.parametrize("name", ["dev.json", "train.json"])
def test_perfect_predictions_score_100_on_toy(name):
    golds = _records(TOY / name)
    res = score({g["sample_id"]: g["target"] for g in golds}, golds)
    assert len(res["tasks"]) == 16
    for task, t in res["tasks"].items():
        assert t["score"] == approx(100.0, abs=1e-5), task
    assert res["overall"] == approx(100.0, abs=1e-5)


@needs_shared
def test_perfect_predictions_score_100_on_we1k_files():
    files = sorted(p for p in WE1K.iterdir() if p.name.endswith((".json", ".json.gz")))
    assert len(files) == 15
    seen = set()
    for path in files:  # CR / CRLF / LF line ends, .gz, duplicate sample_ids
        res = evaluate_files(path, path)
        assert res["n_missing"] == 0 and res["n_extra_predictions"] == 0, path.name
        for task, t in res["tasks"].items():
            assert t["score"] == approx(100.0, abs=1e-5), (path.name, task)
            seen.add(task)
    assert len(seen) == 12


@needs_shared
def test_one_wrong_answer_lowers_only_its_task():
    golds = _records(TOY / "dev.json")
    perfect = score([g["target"] for g in golds], golds)["tasks"]
    for task in perfect:
        # the first record of the task whose gold answer is not empty
        i = next(k for k, g in enumerate(golds) if g["task_dataset"] == task
                 and parse_answer(task, g["target"], g["answer_choices"]))
        texts = [g["target"] for g in golds]
        texts[i] = "完全错误的回答"
        got = score(texts, golds)["tasks"]
        assert got[task]["score"] < perfect[task]["score"] - 1, task
        assert {k: v for k, v in got.items() if k != task} == {k: v for k, v in perfect.items() if k != task}, task


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

GOLD = [rec("KUAKE-IR", "相关", "i0", ["相关", "不相关"]), rec("KUAKE-IR", "不相关", "i1", ["相关", "不相关"]),
        rec("CMeEE-V2", "引导\n疾病实体：肺炎，哮喘", "e0", ["疾病"]), rec("MedDG", "多喝水。", "m0")]


def _cli(*args):
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True, text=True,
                          cwd="/", timeout=60)


def test_cli_end_to_end_with_cr_gz_and_missing_prediction(tmp_path):
    gold = tmp_path / "gold.json.gz"
    with gzip.open(gold, "wt", encoding="utf-8", newline="") as f:  # bare-CR line ends, gzipped
        f.write("\r".join(json.dumps(g, ensure_ascii=False) for g in GOLD) + "\r")
    pred = tmp_path / "pred.jsonl"
    preds = [{"sample_id": "i1", "target": "不相关"}, {"sample_id": "e0", "target": "引导\n疾病实体：肺炎"},
             {"sample_id": "m0", "target": "多喝水。"}, {"sample_id": "zz", "target": "extra"}]
    pred.write_text("\r\n".join(json.dumps(p, ensure_ascii=False) for p in preds) + "\r\n", encoding="utf-8")
    out = tmp_path / "scores.json"
    proc = _cli("promptcblue", "--pred", pred, "--gold", gold, "--out", out, "--digits", "-1")
    assert proc.returncode == 0, proc.stderr
    assert "1 gold record(s) have no prediction" in proc.stderr and "1 prediction(s)" in proc.stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["n"] == 4 and res["n_missing"] == 1 and res["n_extra_predictions"] == 1
    assert list(res["tasks"]) == ["CMeEE-V2", "KUAKE-IR", "MedDG"]
    # the missing i0 is scored as an empty prediction (-> first label 相关 = right); same as the API
    api = score({"i0": "", "i1": "不相关", "e0": "引导\n疾病实体：肺炎", "m0": "多喝水。"}, GOLD)
    for task in res["tasks"]:
        assert res["tasks"][task]["score"] == approx(api["tasks"][task]["score"])
    assert res["tasks"]["KUAKE-IR"]["n_missing"] == 1
    assert res["tasks"]["CMeEE-V2"]["micro_f1"] == approx(100 * 2 / 3)  # P 1, R 1/2
    assert res["overall"] == approx(api["overall"])
    # the printed table
    assert "overall" in proc.stdout and "CMeEE-V2" in proc.stdout

    # --strict: missing predictions are an error (as in the official scorer), nothing written
    out2 = tmp_path / "strict.json"
    proc = _cli("promptcblue", "--pred", pred, "--gold", gold, "--out", out2, "--strict")
    assert proc.returncode == 2 and "no prediction for gold sample 'i0'" in proc.stderr
    assert not out2.exists()


def test_cli_rounds_by_default(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(g, ensure_ascii=False) for g in GOLD), encoding="utf-8")
    out = tmp_path / "s.json"
    proc = _cli("promptcblue", "--pred", gold, "--gold", gold, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["overall"] == 100.0 and res["tasks"]["MedDG"]["rougeL"] == 100.0


def test_cli_malformed_json_line_names_file_and_line(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(g, ensure_ascii=False) for g in GOLD), encoding="utf-8")
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"sample_id": "i0", "target": "相关"}\r\n{"sample_id": "i1", "target": \r\n', encoding="utf-8")
    out = tmp_path / "scores.json"
    proc = _cli("promptcblue", "--pred", pred, "--gold", gold, "--out", out)
    assert proc.returncode == 2
    assert f"{pred}, line 2: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    # a bad gold line, and a gold record without a target
    gold.write_text(json.dumps(GOLD[0], ensure_ascii=False) + "\n\n" + json.dumps({"sample_id": "x", "task_dataset": "MedDG"}),
                    encoding="utf-8")
    proc = _cli("promptcblue", "--pred", pred, "--gold", gold, "--out", out)
    assert proc.returncode == 2 and f"{gold}, line 3: gold record has no 'target' field" in proc.stderr


def test_read_jsonl_errors(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\r[1]\r', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl, line 2: expected a JSON object"):
        pc.read_jsonl(p)
    with pytest.raises(DataError, match="cannot read"):
        pc.read_jsonl(tmp_path / "missing.jsonl")


def test_cli_requires_a_subcommand():
    proc = _cli()
    assert proc.returncode == 2 and "COMMAND" in proc.stderr


def test_convert_knows_the_tasks_evaluation_scores():
    """convert refuses a record of an unknown task (tuneflow.data.formats) so that evaluation, which
    scores each task by its rule, never meets one: the two lists are the same."""
    from tuneflow.data.formats import PROMPTCBLUE_TASKS
    from tuneflow.eval.promptcblue import TASKS

    assert list(PROMPTCBLUE_TASKS) == list(TASKS)
