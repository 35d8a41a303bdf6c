"""Damaged intermediates and diverged weights are named, never used: a directory output carries a
manifest of its files (size + sha256) that the jobs reading it verify, with the rule to force in
the error; the convert manifest records the bytes it read; merge refuses non-finite weights; the
loss log never writes a non-finite value as a number. (The end-to-end cases, with training, are
in tests/test_faults.py.)"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, env_with_venv, files_under

pytestmark = pytest.mark.fault


def cli(script, *args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)], capture_output=True,
                          text=True, env=env_with_venv(), timeout=300)


def convert(tmp_path, raw, fmt="alpaca"):
    out = tmp_path / "results" / "data" / "ds"
    spec = {"name": "ds", "path": str(raw), "format": fmt, "validation_fraction": 0.2, "split_seed": 1,
            "on_bad_record": "error", "max_record_bytes": 4_000_000}
    proc = cli("convert.py", "--settings", json.dumps(spec), "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_directory_output_lists_every_file_with_its_size_and_hash(tmp_path):
    out = convert(tmp_path, REPO / "resources" / "demo" / "sft_alpaca.json")
    manifest = json.loads((out / "files.json").read_text())
    assert manifest["rule"] == "convert"
    assert sorted(manifest["files"]) == ["manifest.json", "train.jsonl", "validation.jsonl"]
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def _delete(f):
    f.unlink()


def _truncate(f):
    f.write_bytes(f.read_bytes()[:-10])


def _overwrite_same_size(f):
    data = bytearray(f.read_bytes())
    data[5] = (data[5] + 1) % 256
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, problem", [(_delete, r"is missing"), (_truncate, r"has \d+ bytes, \d+ when written"),
                                             (_overwrite_same_size, r"changed since it was written \(sha256 differs\)")],
                         ids=["deleted", "truncated", "overwritten-same-size"])
def test_a_damaged_converted_dataset_is_named_by_the_job_reading_it(tmp_path, tiny_model, damage, problem):
    out = convert(tmp_path, REPO / "resources" / "demo" / "sft_alpaca.json")
    damage(out / "train.jsonl")
    settings = {"kind": "sft", "model": {"path": str(tiny_model()), "revision": None, "trust_remote_code": False},
                "max_length": 64, "chat_template": "chatml", "mask_prompt": True}
    tokenized = tmp_path / "results" / "tokenized" / "ds" / "sft-0123456789"
    proc = cli("tokenize_data.py", "--data", out, "--settings", json.dumps(settings), "--out", tokenized)
    assert proc.returncode == 2, proc.stderr
    assert re.search(f"tuneflow: error: {re.escape(str(out))}/train.jsonl: {problem}", proc.stderr), proc.stderr
    assert (f"{out} was damaged after the `convert` job wrote it; rebuild it: snakemake --forcerun {out} "
            "<your targets> (or -R convert to rerun every convert job)") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not tokenized.exists()


def test_the_convert_manifest_records_the_bytes_read_even_if_the_file_is_replaced_meanwhile(tmp_path, monkeypatch):
    """The old code hashed the raw file after converting it: a file replaced during conversion was
    recorded with the new file's hash and the old file's records."""
    from tuneflow.data import convert as convert_module

    raw = tmp_path / "a.jsonl"
    first = "".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(4)).encode()
    raw.write_bytes(first)
    original = convert_module.CONVERTERS["alpaca"]
    replaced = []

    def convert_and_replace_the_file(rec, opts):
        if not replaced:  # another process rewrites the file while conversion runs
            raw.write_bytes(b'{"instruction": "new", "output": "file"}\n')
            replaced.append(True)
        return original(rec, opts)

    monkeypatch.setitem(convert_module.CONVERTERS, "alpaca", convert_and_replace_the_file)
    manifest = convert_module.convert_dataset({"name": "ds", "path": str(raw), "format": "alpaca",
                                               "validation_fraction": 0.0, "split_seed": 1}, tmp_path / "out")
    assert manifest["counts"]["kept"] == 4  # the records of the first file
    source = manifest["sources"][0]
    assert source["sha256"] == hashlib.sha256(first).hexdigest()
    assert source["bytes"] == len(first)


def test_merge_refuses_weights_that_are_not_finite(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file, save_file

    from tuneflow.io import write_dir_manifest

    adapter = tmp_path / "results" / "adapters" / "pt"
    shutil.copytree(tiny_model(), adapter)
    (adapter / "files.json").unlink(missing_ok=True)
    weights = load_file(str(adapter / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name][0, 0] = float("nan")
    save_file(weights, str(adapter / "model.safetensors"), metadata={"format": "pt"})
    write_dir_manifest(adapter, "train_pt")
    settings = {"base_model": {"path": "unused-for-full", "revision": None}, "finetuning": "full", "rope_scaling": None}
    out = tmp_path / "results" / "merged" / "pt"
    proc = cli("merge.py", "--settings", json.dumps(settings), "--adapter", adapter, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert (f"tuneflow: error: the trained model {adapter} holds non-finite values (NaN / inf) in 1 of") in proc.stderr
    assert f"e.g. {name}: refusing to merge a diverged model" in proc.stderr, proc.stderr
    assert not out.exists() and files_under(out.parent) == []
    assert torch.isnan(load_file(str(adapter / "model.safetensors"))[name]).any()  # the input is left as it was


def test_the_loss_log_writes_non_finite_values_as_null_with_a_flag_never_as_a_number(tmp_path):
    from tuneflow.train.outputs import write_loss_log

    history = [
        {"step": 1, "loss": 2.5, "grad_norm": 1.0, "learning_rate": 0.1, "epoch": 0.1},
        {"step": 2, "nonfinite": "gradients"},
        {"step": 3, "nonfinite": "loss nan"},
        # what the trainer logs for steps 2-4: the average of the finite steps only, or 0.0 when none was
        {"step": 4, "loss": 0.0, "grad_norm": float("nan"), "learning_rate": 0.1, "epoch": 0.4},
        {"step": 5, "nonfinite": "gradients"},
        {"step": 6, "loss": 2.0, "grad_norm": float("inf"), "learning_rate": 0.1, "epoch": 0.6},
        {"step": 8, "loss": 1.9, "grad_norm": 0.5, "learning_rate": 0.1, "epoch": 0.8},
        {"step": 8, "eval_loss": float("nan"), "epoch": 0.8},
    ]
    write_loss_log(history, tmp_path)
    rows = json.loads((tmp_path / "loss_log.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["step"] for r in rows] == [1, 4, 6, 8, 8]
    assert "nonfinite" not in rows[0] and rows[0]["loss"] == 2.5
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None
    assert rows[1]["nonfinite"] == ["loss", "grad_norm"] and rows[1]["nonfinite_steps"] == [2, 3]
    assert rows[2]["loss"] == 2.0 and rows[2]["grad_norm"] is None  # a skipped step: the loss itself was finite
    assert rows[2]["nonfinite"] == ["grad_norm"] and rows[2]["nonfinite_steps"] == [5]
    assert rows[3]["loss"] == 1.9 and "nonfinite" not in rows[3]
    assert rows[4]["eval_loss"] is None and rows[4]["nonfinite"] == ["eval_loss"]
    with open(tmp_path / "loss_log.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert csv_rows[1]["step"] == "4" and csv_rows[1]["loss"] == "" and csv_rows[1]["nonfinite"] == "['loss', 'grad_norm']"
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for r in rows for v in r.values())


def test_every_file_of_a_directory_output_follows_the_umask(tmp_path, tiny_model):
    """safetensors writes its files 0600; every other output follows the umask (tiny_model: atomic_dir)."""
    model = tiny_model()
    mask = os.umask(0)
    os.umask(mask)
    modes = {p: oct((model / p).stat().st_mode & 0o777) for p in files_under(model)}
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes
