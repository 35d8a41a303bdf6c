"""The evaluation primitives on a tiny model: log-probs (batched, budgeted, against a hand
computation), batched left-padded greedy generation (the same as one prompt at a time) and the
preference metrics on hand numbers."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch

from conftest import REPO
from tuneflow.eval import evaluate as ev


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tiny_model(num_layers=2, num_heads=4)
    return AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)


def test_sequence_logps_match_a_hand_computation_whatever_the_batching(tiny, monkeypatch):
    model, tok = tiny
    rows = [([5, 9, 14, 20, 3], [-100, -100, 14, 20, 3]), ([7, 8], [-100, 8]), ([30, 31, 32, 33, 34, 35, 36], [30, 31, 32, 33, 34, 35, 36])]
    expected = []
    for ids, labels in rows:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        scored = [(t, labels[t]) for t in range(1, len(ids)) if labels[t] != -100]
        expected.append((sum(logp[t - 1, lab].item() for t, lab in scored), len(scored)))
    for batch_size in (1, 3):
        got = ev.sequence_logps(model, tok, rows, batch_size, "cpu")
        assert [n for _, n in got] == [n for _, n in expected]
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4) for (a, _), (b, _) in zip(got, expected))
    # a budget of one row of logits: every row scored on its own, same numbers
    monkeypatch.setattr(ev, "LOGIT_BUDGET", 8 * model.config.vocab_size)
    assert [len(b) for b in ev._scoring_batches(rows, 3, model.config.vocab_size)] == [1, 1, 1]
    got = ev.sequence_logps(model, tok, rows, 3, "cpu")
    assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4) for (a, _), (b, _) in zip(got, expected))


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny):
    model, tok = tiny
    from tuneflow.templates import Settings, prompt_ids

    prompts = [prompt_ids(tok, [{"role": "user", "content": c}], Settings())
               for c in ("Add the two numbers.\n2 + 2", "Reverse the word.\nglass", "这个数是奇数还是偶数？\n18")]
    assert len({len(p) for p in prompts}) > 1  # different lengths: padding is exercised
    settings = {"batch_size": 3, "max_new_tokens": 8, "do_sample": False, "temperature": 1.0}
    batched = ev.generate(model, tok, prompts, settings, "cpu")
    alone = [ev.generate(model, tok, [p], {**settings, "batch_size": 1}, "cpu")[0] for p in prompts]
    assert batched == alone


def test_preference_metrics_on_hand_numbers():
    pairs = [{"chosen": -10.0, "rejected": -12.0, "ref_chosen": -11.0, "ref_rejected": -11.5},  # margin 0.1*(1-(-0.5))=0.15
             {"chosen": -9.0, "rejected": -8.0, "ref_chosen": -9.5, "ref_rejected": -7.0}]      # margin 0.1*(0.5-(-1))=0.15
    m = ev.preference_metrics(pairs, beta=0.1)
    assert m["logp_accuracy"] == 50.0 and m["preference_accuracy"] == 100.0
    assert math.isclose(m["reward_margin"], 0.15)
    worse = [{"chosen": -10.0, "rejected": -12.0, "ref_chosen": -9.0, "ref_rejected": -12.5}]  # 0.1*(-1-0.5) = -0.15
    m = ev.preference_metrics(worse, beta=0.1)
    assert m["preference_accuracy"] == 0.0 and math.isclose(m["reward_margin"], -0.15)
    assert ev.preference_metrics([{"chosen": -1.0, "rejected": -2.0}]) == {"logp_accuracy": 100.0}


def test_a_finished_rank_skips_interpreter_shutdown(tmp_path):
    """Gloo's threads left to interpreter shutdown can abort a rank that has finished its work
    (SIGABRT, seen in CI), failing the job: after a successful main, tuneflow.cli.run destroys the
    group, flushes what the rank printed, and exits 0 without finalization (no atexit handler
    runs, no code after run())."""
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(
        "import atexit, os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import torch.distributed as dist\n"
        "from tuneflow.cli import run\n"
        "def main(argv):\n"
        "    dist.init_process_group('gloo')\n"
        "    out = [None] * dist.get_world_size()\n"
        "    dist.all_gather_object(out, dist.get_rank())\n"
        "    atexit.register(lambda: print('finalized', flush=True))\n"
        "    print(f'rank {dist.get_rank()} gathered {out}')  # block-buffered: must not be lost\n"
        "run(main)\n"
        "print('after run', flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as in a Slurm job: stdout block-buffered
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks share the pipe, so their lines may interleave
    assert sorted(re.findall(r"rank (\d) gathered \[0, 1\]", proc.stdout)) == ["0", "1"], proc.stdout
    assert "finalized" not in proc.stdout and "after run" not in proc.stdout, proc.stdout


def test_reward_model_pairwise_metrics_on_hand_numbers():
    pairs = [{"chosen": 1.0, "rejected": 0.5}, {"chosen": -1.0, "rejected": 0.0}, {"chosen": 2.0, "rejected": -1.0}]
    assert ev.pairwise_metrics(pairs) == {"pairwise_accuracy": pytest.approx(200 / 3), "mean_margin": pytest.approx(2.5 / 3)}


def test_reward_metrics_average_each_term_over_the_answers_it_scores():
    scores = {"terms": {"rm": [1.0, 3.0], "promptcblue": [None, 1.0]}, "total": [1.0, 4.0]}
    assert ev.reward_metrics(scores) == {"mean_reward": 2.5, "reward/rm": 2.0, "reward/promptcblue": 1.0}
