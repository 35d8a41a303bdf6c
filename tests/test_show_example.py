"""See what the model sees: scripts/show_example.py prints one tokenized training row per dataset
with the loss-carrying tokens marked (brackets, or colour on a terminal) and the token counts; the
tokenize rule stores the same for the report (example.json)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, env_with_venv

CONV = [{"role": "user", "content": "2 + 3"}, {"role": "assistant", "content": "5"}]


def tokenized(tmp_path, tokenizer_dir, kind="sft", records=None, template="tokenizer"):
    from tuneflow.io import write_dir_manifest
    from tuneflow.models import load_tokenizer
    from tuneflow.tokenize import tokenize_dataset

    data = tmp_path / "results" / "data" / "ds"
    data.mkdir(parents=True)
    for split in ("train", "validation"):
        with open(data / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in records or [{"id": "a", "messages": CONV}]:
                f.write(json.dumps(r) + "\n")
    write_dir_manifest(data, "convert")
    settings = {"kind": kind, "model": {"path": str(tokenizer_dir)}, "max_length": 64, "mask_prompt": True,
                **({"chat_template": template} if template else {})}
    out = tmp_path / "results" / "tokenized" / "ds" / f"{kind}-0123456789"
    tokenize_dataset(data, load_tokenizer(tokenizer_dir, {}, template), settings, out)
    return out


def show(cwd, *args):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "show_example.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env_with_venv(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_script_prints_each_dataset_with_the_trained_tokens_marked_and_counted(tmp_path, real_tokenizer):
    out = tokenized(tmp_path, real_tokenizer("llama3_1"))
    text = show(tmp_path)  # no argument: every directory under results/tokenized
    assert f"== ds (sft; tokenizer {real_tokenizer('llama3_1')}; template tokenizer; max length 64) row 0 of 1: " \
           "results/tokenized/ds/sft-0123456789" in text
    assert "-- conversation: 16 tokens, 2 carry loss ([[marked]])" in text
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n[[5<|eot_id|>]]" in text
    assert text.startswith("==") and "\x1b[" not in text  # not a terminal: brackets
    coloured = show(tmp_path, str(out), "--color", "always")
    assert "\x1b[1;32m5<|eot_id|>\x1b[0m" in coloured and "[[" not in coloured
    # the report shows what the tokenize rule stored, computed the same way
    stored = json.loads((out / "example.json").read_text())
    seq = stored["sequences"]["conversation"]
    assert (seq["tokens"], seq["label_tokens"]) == (16, 2) and seq["pieces"][-1] == ["5<|eot_id|>", True]


def test_preference_and_pretraining_rows_are_shown_too(tmp_path, real_tokenizer):
    pairs = tokenized(tmp_path / "dpo", real_tokenizer("qwen3"), "dpo",
                      [{"id": "p", "messages": CONV[:1], "chosen": "5", "rejected": "6"}])
    text = show(tmp_path / "dpo", str(pairs))
    assert "-- chosen:" in text and "-- rejected:" in text and "[[<think>\n\n</think>\n\n6<|im_end|>" in text
    pt = tokenized(tmp_path / "pt", real_tokenizer("llama2"), "pt", [{"id": "t", "text": "Hello world"}], template=None)
    text = show(tmp_path / "pt", str(pt))
    assert "template -; max length 64" in text
    assert "-- text: 3 tokens, 3 carry loss" in text and "[[Hello world</s>]]" in text


def test_a_directory_that_is_not_tokenized_data_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "show_example.py"), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, env=env_with_venv(), timeout=300)
    assert proc.returncode == 2 and "is not a tokenized dataset directory (no meta.json)" in proc.stderr
