"""instruction_metrics: hand-computed ROUGE / corpus BLEU / exact match, empties, quietness."""

import subprocess
import sys
from pathlib import Path

import pytest

from tuneflow.eval.text_metrics import instruction_metrics, tokenize

REPO = Path(__file__).resolve().parents[1]
approx = pytest.approx


def test_tokenize_uses_jieba_words_and_keeps_english_words():
    assert tokenize("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert tokenize("the cat  sat\n") == ["the", "cat", "sat"]
    assert tokenize("   ") == [] and tokenize("") == []


def test_english_hand_computed():
    m = instruction_metrics(["the cat sat on the mat"], ["the cat sat on the mat today"])
    # hyp: the cat sat on the mat (6 tokens); ref: + today (7 tokens)
    # ROUGE-1 counts distinct unigrams (rouge-chinese): hyp {the,cat,sat,on,mat} 5, ref 6, overlap 5
    #   P 1, R 5/6 -> F = 2*(5/6)/(11/6) = 10/11
    # ROUGE-2: hyp 5 distinct bigrams, ref 6, overlap 5 -> 10/11
    # ROUGE-L: LCS 6, P 6/6, R 6/7 -> F = 12/13
    # BLEU-4: all n-gram precisions 1 (6/6, 5/5, 4/4, 3/3); BP = exp(1 - 7/6) -> 100 * exp(-1/6)
    assert m["rouge1"] == approx(100 * 10 / 11, abs=1e-5)
    assert m["rouge2"] == approx(100 * 10 / 11, abs=1e-5)
    assert m["rougeL"] == approx(100 * 12 / 13, abs=1e-5)
    assert m["bleu4"] == approx(84.6481724890614, abs=1e-6)
    assert m["exact_match"] == 0.0 and m["n"] == 1


def test_corpus_bleu_and_chinese_words():
    m = instruction_metrics(["the cat sat on the mat", "我爱北京"],
                            ["the cat sat on the mat today", "我爱北京天安门"])
    # pair 2 (jieba words): hyp 我/爱/北京, ref 我/爱/北京/天安门
    #   R1: P 1, R 3/4 -> 6/7; R2: {我爱, 爱北京} vs 3 bigrams -> P 1, R 2/3 -> 4/5; RL: LCS 3 -> 6/7
    # ROUGE averages the pairs: R1 (10/11 + 6/7)/2, R2 (10/11 + 4/5)/2, RL (12/13 + 6/7)/2
    assert m["rouge1"] == approx(100 * (10 / 11 + 6 / 7) / 2, abs=1e-5)
    assert m["rouge2"] == approx(100 * (10 / 11 + 4 / 5) / 2, abs=1e-5)
    assert m["rougeL"] == approx(100 * (12 / 13 + 6 / 7) / 2, abs=1e-5)
    # corpus BLEU pools counts: 1-4-gram matches 9/9, 7/7, 5/5, 3/3; hyp length 9, ref length 11
    # -> 100 * exp(1 - 11/9) = 100 * exp(-2/9)  (a mean of sentence BLEUs would differ)
    assert m["bleu4"] == approx(80.07374029168, abs=1e-6)


def test_exact_match_strips():
    m = instruction_metrics([" 你好 ", "b", "c"], ["你好", "c", "c\n"])
    assert m["exact_match"] == approx(100 * 2 / 3)


def test_perfect_predictions():
    refs = ["多喝水，注意休息。", "Take one tablet twice a day.", "建议到医院做血常规检查"]
    m = instruction_metrics(refs, refs)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert m[key] == approx(100.0, abs=1e-5)  # rouge-chinese: 2PR/(P+R+1e-8)
    assert m["bleu4"] == approx(100.0) and m["exact_match"] == 100.0


def test_empty_predictions_do_not_crash():
    # "" -> "无 。" for ROUGE (as the official PromptCBLUE scorer); BLEU keeps it empty
    m = instruction_metrics(["", ""], ["你好", ""])
    # pair 1: "无 。" vs "你好" -> 0; pair 2: "无 。" vs "无 。" -> 1  => mean 1/2
    assert m["rouge1"] == approx(50.0, abs=1e-5)
    assert m["rougeL"] == approx(50.0, abs=1e-5)
    assert m["bleu4"] == 0.0
    assert m["exact_match"] == 50.0
    assert instruction_metrics([], [])["n"] == 0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        instruction_metrics(["a", "b"], ["a"])


def test_quiet_and_deterministic():
    code = ("from tuneflow.eval.text_metrics import instruction_metrics as f\n"
            "a = f(['我爱北京天安门', 'hello'], ['我爱北京', 'hello world'])\n"
            "b = f(['我爱北京天安门', 'hello'], ['我爱北京', 'hello world'])\n"
            "assert a == b\nprint(a['bleu4'])\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
            for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # jieba's "Building prefix dict ..." is silenced
    assert runs[0].stdout == runs[1].stdout
