"""The RL rewards (tuneflow.rewards): the verifiable PromptCBLUE reward against an independent
re-implementation of the per-record metric on real PromptCBLUE records, exact match, terms limited
to some datasets, and a reward model whose tokenizer differs from the policy's (scored with its
own tokenizer and template, and refused clearly when it cannot be)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import REPO, shared_path
from tuneflow import rewards
from tuneflow.errors import ModelError
from tuneflow.eval import promptcblue as pc


def meta(rec, dataset="ds"):
    return json.dumps({"dataset": dataset, **{k: rec.get(k) for k in ("task_dataset", "answer_choices", "sample_id")}},
                      ensure_ascii=False)


def independent_record_score(task, gold_text, pred_text, choices):
    """The official metric of one record, re-done from its definition: classification tasks
    score 1 when the predicted label is the gold one (macro / weighted F1 of one sample); extraction
    tasks the F1 of the predicted vs gold tuple sets (micro F1 of one sample), 1 when both are
    empty."""
    gold, pred = pc.parse_answer(task, gold_text, choices), pc.parse_answer(task, pred_text, choices)
    family = pc.TASKS[task]
    if family in (pc.MACRO, pc.WEIGHTED):
        first = pc.CLASSIFICATION_LABELS[pc._canonical(task)][0]
        return 1.0 if (pred or first) == gold else 0.0
    if family == pc.EXTRACTION:
        g = {json.dumps(x, sort_keys=True, ensure_ascii=False) for x in gold}
        p = {json.dumps(x, sort_keys=True, ensure_ascii=False) for x in pred}
        if not g and not p:
            return 1.0  # nothing to find and nothing found: no error
        tp = len(g & p)
        return 2 * tp / (len(g) + len(p)) if tp else 0.0
    return None


def test_promptcblue_reward_is_the_official_per_record_metric_on_real_records():
    dev = [json.loads(line) for line in shared_path("promptcblue", "toy_examples", "dev.json").read_text().splitlines()]
    # Each record answered right (its target) and wrong-ish (the target of another record of its task).
    by_task = {}
    for r in dev:
        by_task.setdefault(r["task_dataset"], []).append(r)
    golds, preds = [], []
    for r in dev:
        other = next((o for o in by_task[r["task_dataset"]] if o is not r), r)
        golds += [r, r]
        preds += [r["target"], other["target"]]
    got = rewards.promptcblue([[]] * len(preds), preds, [g["target"] for g in golds], [meta(g) for g in golds])
    checked = 0
    for g, p, value in zip(golds, preds, got):
        expected = independent_record_score(g["task_dataset"], g["target"], p, g.get("answer_choices"))
        assert 0.0 <= value <= 1.0
        if expected is not None:
            assert value == pytest.approx(expected), (g["task_dataset"], p, g["target"])
            checked += 1
    assert checked >= 40 and any(v == 0.0 for v in got) and any(v == 1.0 for v in got)
    # the right answer of a record of any task scores (about) full marks
    assert all(v > 0.99 for v in got[::2])


def test_promptcblue_reward_gives_no_reward_outside_promptcblue_and_exact_match_is_strip_equality():
    demo = [json.loads(line) for line in (REPO / "resources/demo/sft_promptcblue.jsonl").read_text().splitlines()[:3]]
    completions = [[{"role": "assistant", "content": f" {demo[0]['target']} "}], "wrong", "x"]
    metas = [meta(demo[0]), meta(demo[1]), json.dumps({"dataset": "alpaca"})]
    refs = [demo[0]["target"], demo[1]["target"], "x"]
    assert rewards.promptcblue(None, completions, refs, metas) == [1.0, 0.0, None]
    assert rewards.exact_match(None, completions, refs) == [1.0, 0.0, 1.0]


def test_a_term_limited_to_some_datasets_gives_the_others_no_reward_and_the_total_skips_it():
    em = rewards.Term("exact_match", 2.0, func=rewards.exact_match, datasets=["a"])
    const = rewards.Term("const", 1.0, func=lambda completions, **_: [0.5] * len(completions))
    metas = [json.dumps({"dataset": "a"}), json.dumps({"dataset": "b"})]
    scored = rewards.score([em, const], [[], []], ["x", "x"], ["x", "x"], metas)
    assert scored["terms"] == {"exact_match": [1.0, None], "const": [0.5, 0.5]}
    assert scored["total"] == [2.5, 0.5]
    assert rewards.mean([None, 1.0, 3.0]) == 2.0 and rewards.mean([None]) is None


@pytest.fixture(scope="module")
def policy_and_reward_model(tiny_model, tmp_path_factory):
    """A policy tokenizer (trained on the alpaca demo) and a reward model (sequence
    classification, one output) whose own tokenizer was trained on other text: other ids."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    policy = tiny_model(corpus=["resources/demo/sft_alpaca.json"])
    other = tiny_model(corpus=["resources/demo/pt_text.txt"], vocab_size=450)
    rm_dir = tmp_path_factory.mktemp("rm") / "rm"
    cfg = AutoConfig.from_pretrained(other)
    cfg.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(other, config=cfg)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(other).pad_token_id
    model.save_pretrained(rm_dir)
    for f in other.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(f, rm_dir / f.name)
    return AutoTokenizer.from_pretrained(policy), rm_dir


def test_a_reward_model_with_another_tokenizer_scores_with_its_own(policy_and_reward_model):
    policy_tok, rm_dir = policy_and_reward_model
    term = rewards.build_terms([{"reward_model": str(rm_dir), "weight": 1.0}], "tokenizer", "stages.rl.rewards")[0]
    assert term.tokenizer.get_vocab() != policy_tok.get_vocab()
    prompts = [[{"role": "user", "content": "Add the two numbers.\n2 + 2"}], [{"role": "user", "content": "Reverse cat"}]]
    answers = ["4", "tac"]
    got = term(prompts=prompts, completions=[[{"role": "assistant", "content": a}] for a in answers])
    # by hand, one conversation at a time, with the reward model's own tokenizer and template
    for p, a, value in zip(prompts, answers, got):
        text = term.tokenizer.apply_chat_template(p + [{"role": "assistant", "content": a}], tokenize=False)
        ids = term.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            assert value == pytest.approx(term.model(**ids).logits[0, 0].item(), abs=1e-5)
    # the policy's tokenizer would have fed the reward model other ids
    text = policy_tok.apply_chat_template(prompts[0] + [{"role": "assistant", "content": "4"}], tokenize=False)
    assert policy_tok(text)["input_ids"] != term.tokenizer(text)["input_ids"]


def test_a_reward_model_without_a_chat_template_uses_the_configured_one_or_is_refused(policy_and_reward_model, tmp_path):
    _, rm_dir = policy_and_reward_model
    bare = tmp_path / "bare"
    shutil.copytree(rm_dir, bare)
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    key = "stages.rl.rewards[0].reward_model"
    with pytest.raises(ModelError, match=rf"config key '{re.escape(key)}'.*has no chat template and chat_template is 'tokenizer'"):
        rewards.load_reward_model(str(bare), "tokenizer", key)
    model, tok = rewards.load_reward_model(str(bare), "zephyr", key)
    assert tok.tuneflow_template == "zephyr"  # conversations are rendered by the built-in zephyr template
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert "<|assistant|>" in tok.decode(rewards._conversation_ids(tok, conversation))
    assert len(rewards.reward_model_scores(model, tok, [conversation[:1]], ["a"])) == 1


def test_a_causal_lm_is_refused_as_a_reward_model(tiny_model):
    key = "stages.rl.rewards[0].reward_model"
    with pytest.raises(ModelError, match=rf"config key '{re.escape(key)}': the model at .* is a causal language model "
                                         r"\(LlamaForCausalLM\) without a score head"):
        rewards.load_reward_model(str(tiny_model()), "tokenizer", key)
