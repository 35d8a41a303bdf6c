"""Bad input gets a specific, clear error that names the file, line or config key, exits non-zero,
and leaves nothing under results/. Data cases go through the convert CLI; config and model cases
through a real `snakemake` run of a cheap target in a copy of the workflow."""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, env_with_venv, files_under, make_workdir, snakemake

pytestmark = pytest.mark.badinput


def run_convert(tmp_path, path, fmt="alpaca", **spec):
    out = tmp_path / "results" / "data" / "ds"
    spec = {"name": "ds", "path": str(path), "format": fmt, "validation_fraction": 0.0, "split_seed": 1,
            "on_bad_record": "error", "max_record_bytes": 4_000_000, **spec}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "convert.py"), "--settings", json.dumps(spec), "--out", str(out)],
                          capture_output=True, text=True, env=env_with_venv(), timeout=300)  # a FIFO used to hang it


def assert_refused(proc, tmp_path, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for frag in fragments:
        assert frag in proc.stderr, f"expected {frag!r} in:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert files_under(tmp_path / "results") == []


def jsonl(*records):
    return "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n"


OK = {"instruction": "i", "output": "o"}

# (id, file name, content (str or bytes), format, extra spec, expected fragments)
DATA_CASES = [
    ("invalid-json-array", "a.json", '[{"instruction": "a", "output": "b",}]', "alpaca", {},
     ["a.json, line 1: invalid JSON: Expecting property name enclosed in double quotes"]),
    ("broken-jsonl-line", "a.jsonl", jsonl(OK, OK, '{"instruction": "x", "output": ', OK), "alpaca", {},
     ["a.jsonl, line 3: invalid JSON"]),
    ("missing-field", "a.jsonl", jsonl(OK, {"instruction": "no answer"}), "alpaca", {},
     ["a.jsonl, line 2: missing field 'output'"]),
    ("wrong-type", "a.jsonl", jsonl({"instruction": 5, "output": "o"}), "alpaca", {},
     ["a.jsonl, line 1: field 'instruction' must be str, got int"]),
    ("empty-output", "a.json", json.dumps([OK, {"instruction": "i", "output": "  "}]), "alpaca", {},
     ["a.json, record 1: field 'output' is empty", "data.on_bad_record: skip"]),
    ("non-utf8", "a.jsonl", jsonl(OK).encode() + b'{"instruction": "caf\xe9", "output": "o"}\n', "alpaca", {},
     ["a.jsonl, line 2: not valid UTF-8: byte 0xe9 at offset"]),
    ("10mb-record", "a.jsonl", jsonl(OK, {"instruction": "x" * 10_000_000, "output": "o"}), "alpaca", {},
     ["a.jsonl, line 2: record is 10.0 MB, above the limit of 4.0 MB (data.max_record_bytes)"]),
    ("duplicate-sample-id", "p.jsonl", jsonl({"input": "q1", "target": "a", "sample_id": "s1", "task_dataset": "MedDG"},
                                             {"input": "q2", "target": "b", "sample_id": "s1", "task_dataset": "MedDG"}),
     "promptcblue", {},
     ["p.jsonl, line 2: duplicate sample_id 's1' (first seen at p.jsonl line 1)", "duplicate_ids: rename"]),
    ("chosen-equals-rejected", "d.jsonl", jsonl({"question": "q", "response_chosen": "same", "response_rejected": "same"}),
     "preference", {}, ["d.jsonl, line 1: chosen and rejected responses are identical"]),
    ("not-a-preference-pair", "d.jsonl", jsonl({"instruction": "q", "output": "a"}), "preference", {},
     ["d.jsonl, line 1: not a preference pair"]),
    ("empty-file", "a.json", "", "alpaca", {}, ["a.json: file is empty"]),
    ("whitespace-only-file", "a.jsonl", "\n \r\n", "alpaca", {}, ["a.jsonl: file is empty"]),
    ("sharegpt-not-alternating", "s.jsonl", jsonl({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                                                     {"from": "gpt", "value": "c"}]}), "sharegpt", {},
     ["s.jsonl, line 1: field 'conversations' must alternate human/gpt turns"]),
    ("sharegpt-unknown-role", "s.jsonl", jsonl({"conversations": [{"from": "robot", "value": "a"}]}), "sharegpt", {},
     ["s.jsonl, line 1: conversations[0] has unsupported role 'robot'"]),
    ("record-not-object", "a.json", json.dumps([OK, ["a", "b"]]), "alpaca", {},
     ["a.json, record 1: expected a JSON object, got list"]),
    ("all-records-dropped", "a.jsonl", jsonl({"instruction": "i", "output": ""}, {"instruction": "j", "output": ""}), "alpaca",
     {"on_bad_record": "skip"}, ["no records left after conversion (read 2, dropped: 2 x field 'output' is empty)"]),
    # found at convert time, not by the evaluate job after training
    ("promptcblue-task-missing", "p.jsonl", jsonl({"input": "q", "target": "a", "sample_id": "s1"}), "promptcblue", {},
     ["p.jsonl, line 1: missing field 'task_dataset'"]),
    ("promptcblue-task-unknown", "p.jsonl", jsonl({"input": "q", "target": "a", "task_dataset": "MedDG"},
                                                  {"input": "q", "target": "a", "task_dataset": "CHIP-XYZ"}), "promptcblue", {},
     ["p.jsonl, line 2: field 'task_dataset' names an unknown PromptCBLUE task 'CHIP-XYZ' (known: CMeEE-V2,"]),
    ("json-nested-100k-levels", "a.jsonl", jsonl(OK, '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + ', "output": "o"}'),
     "alpaca", {}, ["a.jsonl, line 2: JSON nested too deeply (more than about 1000 levels"]),
    ("json-array-nested-100k-levels", "a.json", "[" * 100_000 + "]" * 100_000, "alpaca", {},
     ["a.json, record 0: JSON nested too deeply"]),
    ("lone-surrogate", "a.jsonl", jsonl(OK, '{"instruction": "broken \\ud800 text", "output": "o"}'), "alpaca", {},
     ["a.jsonl, line 2: contains an unpaired UTF-16 surrogate escape (\\ud800)"]),
    ("lone-low-surrogate-in-array", "a.json", '[{"instruction": "x\\udc00", "output": "o"}]', "alpaca", {},
     ["a.json, record 0: contains an unpaired UTF-16 surrogate escape (\\udc00)"]),
    ("truncated-gz", "a.jsonl.gz", gzip.compress(jsonl(OK, OK).encode() * 50)[:-30], "alpaca", {},
     ["a.jsonl.gz: not a valid .gz file (Compressed file ended before the end-of-stream marker was reached)"]),
    ("not-gzip-gz", "a.jsonl.gz", jsonl(OK), "alpaca", {}, ["a.jsonl.gz: not a valid .gz file (Not a gzipped file"]),
    ("truncated-bz2", "a.jsonl.bz2", bz2.compress(jsonl(OK, OK).encode() * 50)[:-20], "alpaca", {},
     ["a.jsonl.bz2: not a valid .bz2 file"]),
    ("corrupt-xz", "a.jsonl.xz", b"\xfd7zXZ\x00" + b"garbage" * 10, "alpaca", {}, ["a.jsonl.xz: not a valid .xz file"]),
    ("utf16-le-bom", "a.jsonl", jsonl(OK).encode("utf-16"), "alpaca", {},
     ["a.jsonl: is encoded as UTF-16 little-endian (byte-order mark ff fe), not UTF-8", "iconv -f UTF-16 -t UTF-8"]),
    ("utf16-be-bom", "a.jsonl", b"\xfe\xff" + jsonl(OK).encode("utf-16-be"), "alpaca", {},
     ["a.jsonl: is encoded as UTF-16 big-endian (byte-order mark fe ff), not UTF-8"]),
    ("utf16-le-without-bom", "a.txt", "plain text\n".encode("utf-16-le") * 3, "text", {},
     ["a.txt: is encoded as UTF-16 little-endian (no byte-order mark), not UTF-8"]),
    ("utf32-bom", "a.jsonl", jsonl(OK).encode("utf-32"), "alpaca", {},
     ["a.jsonl: is encoded as UTF-32 little-endian (byte-order mark ff fe 00 00)", "iconv -f UTF-32"]),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_refused(tmp_path, case):
    _, name, content, fmt, extra, fragments = case
    raw = tmp_path / "raw"
    raw.mkdir()
    f = raw / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    assert_refused(run_convert(tmp_path, f, fmt, **extra), tmp_path, *fragments)


def test_missing_file_is_refused(tmp_path):
    assert_refused(run_convert(tmp_path, tmp_path / "nope.json"), tmp_path, "nope.json: file does not exist (config key datasets.ds.path)")


# A directory dataset: (id, {file name: content}, expected fragments)
DIRECTORY_CASES = [
    ("unknown-extension", {"a.jsonl": jsonl(OK), "b.csv": "instruction,output\ni,o\n"},
     ["directory holds files that are not a data format tuneflow reads: b.csv (it reads .json, .jsonl, .ndjson, .txt, "
      "each optionally .gz, .bz2, .xz); move them out or select the data files with a glob (config key datasets.ds.path)"]),
    ("readme-beside-the-data", {"part-1.jsonl": jsonl(OK), "README.md": "# my data\n"},
     ["directory holds files that are not a data format tuneflow reads: README.md"]),
    ("many-unknown", {"a.jsonl": jsonl(OK), **{f"shard-{i}.parquet": "x" for i in range(7)}},
     ["shard-0.parquet, shard-1.parquet, shard-2.parquet, shard-3.parquet, shard-4.parquet and 2 more"]),
    ("compression-not-read", {"a.jsonl": jsonl(OK), "b.jsonl.zst": "x"}, ["not a data format tuneflow reads: b.jsonl.zst"]),
]


@pytest.mark.parametrize("case", DIRECTORY_CASES, ids=[c[0] for c in DIRECTORY_CASES])
def test_bad_directory_dataset_is_refused(tmp_path, case):
    _, files, fragments = case
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, content in files.items():
        (raw / name).write_text(content)
    assert_refused(run_convert(tmp_path, raw), tmp_path, *fragments)


@pytest.mark.parametrize("where", ["file", "directory", "glob"])
def test_a_fifo_is_refused_instead_of_hanging(tmp_path, where):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text(jsonl(OK))
    fifo = raw / "b.jsonl"
    os.mkfifo(fifo)
    path = {"file": fifo, "directory": raw, "glob": raw / "*.jsonl"}[where]
    proc = run_convert(tmp_path, path)
    assert_refused(proc, tmp_path, f"{fifo}: is not a regular file (a named pipe, socket or device): datasets are read from "
                                   "regular files only")


def test_directory_datasets_read_every_data_format_by_name(tmp_path):
    """Upper-case extensions, .ndjson, .bz2 and .xz are read; hidden files are ignored."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rec = lambda i: {"instruction": f"q{i}", "output": "a"}  # noqa: E731
    (raw / "a.JSONL").write_text(jsonl(rec(1)))
    (raw / "b.ndjson").write_text(jsonl(rec(2)))
    (raw / "c.jsonl.bz2").write_bytes(bz2.compress(jsonl(rec(3)).encode()))
    (raw / "d.json.xz").write_bytes(lzma.compress(json.dumps([rec(4)]).encode()))
    (raw / "e.Json.GZ").write_bytes(gzip.compress(json.dumps([rec(5)]).encode()))
    (raw / ".DS_Store").write_bytes(b"\0\0")
    proc = run_convert(tmp_path, raw)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "results" / "data" / "ds" / "manifest.json").read_text())
    assert [Path(s["path"]).name for s in manifest["sources"]] == ["a.JSONL", "b.ndjson", "c.jsonl.bz2", "d.json.xz", "e.Json.GZ"]
    assert manifest["counts"]["kept"] == 5


def test_a_file_name_with_a_bracket_is_a_file_not_a_glob(tmp_path):
    f = tmp_path / "data[1].jsonl"
    f.write_text(jsonl(OK))
    proc = run_convert(tmp_path, f)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "results" / "data" / "ds" / "manifest.json").read_text())
    assert manifest["sources"][0]["path"] == str(f)


def test_utf8_bom_is_accepted_and_noted(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + jsonl(OK).encode())
    proc = run_convert(tmp_path, f)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "results" / "data" / "ds" / "manifest.json").read_text())
    assert manifest["sources"][0]["notes"] == ["UTF-8 byte-order mark stripped"]


# -- config and model: through Snakemake --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_model):
    """A small model on local disk (outside results/) for the model-dependent config checks."""
    return tiny_model(corpus=["resources/demo/pt_text.txt"])


def model_variant(src: Path, dest: Path, config_edit=None, tokenizer_edit=None) -> Path:
    shutil.copytree(src, dest)
    if config_edit:
        cfg = json.loads((dest / "config.json").read_text())
        config_edit(cfg)
        (dest / "config.json").write_text(json.dumps(cfg))
    if tokenizer_edit:
        tc = json.loads((dest / "tokenizer_config.json").read_text())
        tokenizer_edit(tc)
        (dest / "tokenizer_config.json").write_text(json.dumps(tc))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("badinput") / "project")


DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def with_config(project: Path, edit) -> None:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    edit(cfg)
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def assert_snakemake_refuses(project, *fragments, target="results/data/demo_text"):
    shutil.rmtree(project / "results", ignore_errors=True)
    proc = snakemake(project, "-c1", target, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for frag in fragments:
        assert frag in out, f"expected {frag!r} in:\n{out[-4000:]}"
    assert files_under(project / "results") == []
    return out


def set_key(path, value):
    def edit(cfg):
        node = cfg
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return edit


CONFIG_CASES = [
    ("unknown-key", set_key("stages.sft.training.learnig_rate", 0.1),
     ["config key 'stages.sft.training.learnig_rate': unknown key; did you mean 'stages.sft.training.learning_rate'?"]),
    ("wrong-type", set_key("stages.sft.lora.r", "sixteen"), ["config key 'stages.sft.lora.r': 'sixteen' is not of type 'integer'"]),
    ("negative-lr", set_key("stages.pt.training.learning_rate", -0.01),
     ["config key 'stages.pt.training.learning_rate': -0.01 is less than or equal to the minimum of 0"]),
    ("qlora-with-full", lambda c: c["stages"]["sft"].update(finetuning="full", quantization={"bits": 4}),
     ["config key 'stages.sft.quantization': quantization is only used with finetuning 'qlora', not 'full'"]),
    ("stage-without-dataset", lambda c: c["datasets"].pop("demo_pairs"),
     ["config key 'stages.dpo.enabled': stage 'dpo' is enabled but no dataset lists 'dpo'"]),
    ("variant-nonexistent-key", set_key("variants", {"r8": {"stages": {"sft": {"lora": {"rank": 8}}}}}),
     ["config key 'variants.r8.stages.sft.lora.rank': variant overrides a key that does not exist"]),
    ("unknown-format", set_key("datasets.demo_text.format", "jsonl"), ["config key 'datasets.demo_text.format': 'jsonl' is not one of"]),
    ("dataset-name-traversal", lambda c: c["datasets"].update({"../escape": c["datasets"]["demo_text"]}),
     ["config key 'datasets.../escape': name '../escape' cannot be used in result paths"]),
    ("variant-name-separator", set_key("variants", {"lr/high": {"seed": 1}}),
     ["config key 'variants.lr/high': name 'lr/high' cannot be used in result paths"]),
    ("dataset-name-newline", lambda c: c["datasets"].update({"evil\n": c["datasets"]["demo_text"]}),
     ["name 'evil\\n' cannot be used in result paths"]),
    ("glob-matches-nothing", set_key("datasets.demo_text.path", "resources/nothing/*.txt"),
     ["resources/nothing/*.txt: glob matches no files (config key datasets.demo_text.path)"]),
    ("unknown-deepspeed", set_key("stages.sft.deepspeed", "zero9"), ["config key 'stages.sft.deepspeed': 'zero9' is neither a preset"]),
    ("unknown-stage", set_key("datasets.demo_text.stages", ["ptt"]),
     ["config key 'datasets.demo_text.stages[0]': unknown stage 'ptt'; did you mean 'pt'?"]),
    # refused when planning, not by every evaluate job with an argparse error
    ("evaluation-datasets-empty", set_key("evaluation.datasets", []),
     ["config key 'evaluation.datasets': is empty: list the datasets to evaluate, leave the key out"]),
    ("variant-evaluation-datasets-empty", set_key("variants", {"v": {"evaluation": {"datasets": []}}}),
     ["config key 'variants.v.evaluation.datasets': is empty"]),
    # not a CyclicGraphException naming no key
    ("base-model-is-a-merged-output", set_key("base_model.path", "results/merged/pt"),
     ["config key 'base_model.path': 'results/merged/pt' is an output of this workflow, built from the base model "
      "itself, so the plan would be a cycle", "copy it out of results/"]),
    ("base-model-is-an-adapter", set_key("base_model.path", "./results/adapters/sft"),
     ["config key 'base_model.path': './results/adapters/sft' is an output of this workflow"]),
    ("variant-base-model-is-its-own-output", set_key("variants", {"v": {"base_model": {"path": "results/variants/v/merged/sft"}}}),
     ["config key 'variants.v.base_model.path': 'results/variants/v/merged/sft' is an output of this workflow"]),
    ("rl-without-reward", set_key("stages.rl.rewards", []),
     ["config key 'stages.rl.rewards': stage 'rl' is enabled but has no reward"]),
    ("num-generations-not-dividing-the-batch", set_key("stages.rl.num_generations", 3),
     ["config key 'stages.rl.num_generations': 3 does not divide the global batch of 16 completions (1 ranks x "
      "per_device_batch_size 16 x gradient_accumulation_steps 1)"]),
    ("reward-model-stage-disabled", set_key("stages.rm.enabled", False),
     ["config key 'stages.rl.rewards[0].reward_model': names the 'rm' stage, which is not enabled"]),
    ("reward-function-not-trusted", set_key("stages.rl.rewards", [{"function": "tuneflow.rewards.exact_match"}]),
     ["config key 'stages.rl.rewards[0].function': 'tuneflow.rewards.exact_match' would run your Python code",
      "stages.rl.trust_reward_code: true"]),
    ("reward-term-misspelt", set_key("stages.rl.rewards", [{"reward_modle": "rm"}]),
     ["config key 'stages.rl.rewards[0].reward_modle': unknown key; did you mean 'stages.rl.rewards[0].reward_model'?"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused(project, case):
    _, edit, fragments = case
    with_config(project, edit)
    assert_snakemake_refuses(project, *fragments)


# Config files as written by hand, given with --configfile (Snakemake reads them itself): (id, file
# name, text, expected fragments; {path} is the file's path as Snakemake names it)
ALIAS_BOMB = ("tiny_model:\n  corpus: [&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b],"
              " &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e],"
              " &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]\n")
YAML_CASES = [
    ("duplicate-top-level-key", "overlay.yaml", "seed: 1\nseed: 2\n",
     ["config key 'seed': {path}, line 2: duplicate key 'seed' (first at line 1); YAML would keep only the last one"]),
    ("duplicate-nested-key", "overlay.yaml",
     "stages:\n  sft:\n    training:\n      learning_rate: 0.1\n      max_steps: 3\n      learning_rate: 0.2\n",
     ["config key 'stages.sft.training.learning_rate': {path}, line 6: duplicate key 'learning_rate' (first at line 4)"]),
    ("duplicate-dataset", "overlay.yaml",
     "datasets:\n  extra: {path: resources/demo/pt_text.txt, format: text, stages: [pt]}\n"
     "  extra: {path: resources/demo/sft_alpaca.json, format: alpaca, stages: [sft]}\n",
     ["config key 'datasets.extra': {path}, line 3: duplicate key 'extra' (first at line 2)"]),
    ("duplicate-key-in-json", "overlay.json", '{"seed": 1, "evaluation": {"max_samples": 3, "max_samples": 4}}',
     ["config key 'max_samples': {path}: duplicate key in a JSON config file"]),
    ("alias-bomb", "overlay.yaml", ALIAS_BOMB,
     ["{path}: its YAML aliases expand to more than 100,000 values (an alias bomb?)"]),
    ("exponent-without-dot", "overlay.yaml", "stages:\n  pt:\n    training:\n      learning_rate: 3e-3\n",
     ["config key 'stages.pt.training.learning_rate': '3e-3' is read as a string, not a number: YAML 1.1",
      "takes exponent notation only with a dot and a signed exponent; write 3.0e-3"]),
    ("exponent-without-sign", "overlay.yaml", "stages:\n  sft:\n    training:\n      weight_decay: 1.0e2\n",
     ["config key 'stages.sft.training.weight_decay': '1.0e2' is read as a string", "write 1.0e+2"]),
    ("exponent-for-an-integer", "overlay.yaml", "stages:\n  dpo:\n    training:\n      max_steps: 1e3\n",
     ["config key 'stages.dpo.training.max_steps': '1e3' is read as a string", "write 1000"]),
]


@pytest.mark.parametrize("case", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_bad_config_file_is_refused(project, case):
    _, name, text, fragments = case
    with_config(project, lambda c: None)
    overlay = project / name
    overlay.write_text(text)
    shutil.rmtree(project / "results", ignore_errors=True)
    proc = snakemake(project, "-c1", "results/data/demo_text", "--configfile", overlay, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for frag in fragments:
        assert frag.format(path=overlay) in out, f"expected {frag.format(path=overlay)!r} in:\n{out[-4000:]}"
    assert files_under(project / "results") == []
    assert len(out) < 20_000  # the alias bomb is not expanded into the message either


def test_a_duplicate_key_in_the_default_config_file_is_refused(project):
    with_config(project, lambda c: None)
    cfg = project / "config" / "config.yaml"
    cfg.write_text(cfg.read_text() + "seed: 7\n")
    assert_snakemake_refuses(project, "config key 'seed': config/config.yaml, line")


# A DeepSpeed JSON of the user's, checked when Snakemake plans: (id, file text, expected fragments)
DEEPSPEED_CASES = [
    ("invalid-json", '{\n  "zero_optimization": {"stage": 2,}\n}\n', ["'ds.json', line 2 column 36: invalid JSON: Expecting property name"]),
    ("not-an-object", "[]", ["'ds.json': a DeepSpeed config is a JSON object, not list"]),
    ("zero-not-an-object", '{"zero_optimization": 2}', ["'ds.json': 'zero_optimization' must be an object, not int"]),
    ("stage-4", '{"zero_optimization": {"stage": 4}}', ["'ds.json': zero_optimization.stage is 4; DeepSpeed's ZeRO stages are 0, 1, 2 and 3"]),
    ("stage-as-text", '{"zero_optimization": {"stage": "two"}}', ["zero_optimization.stage is 'two'"]),
    ("unknown-zero-key", '{"zero_optimization": {"stage": 2, "overlap_com": true}}',
     ["'ds.json': zero_optimization.overlap_com is not a DeepSpeed ZeRO setting"]),
    ("offload-device", '{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}',
     ["zero_optimization.offload_optimizer.device is 'gpu'; DeepSpeed offloads to none, cpu, nvme"]),
    ("nvme-without-path", '{"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}',
     ["zero_optimization.offload_param offloads to nvme without an nvme_path"]),
    ("param-offload-below-stage-3", '{"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}',
     ["zero_optimization.offload_param needs ZeRO stage 3 (stage is 2)"]),
    ("fp16-and-bf16", '{"fp16": {"enabled": true}, "bf16": {"enabled": true}}', ["fp16.enabled and bf16.enabled are both true"]),
    ("micro-batch-disagrees", '{"train_micro_batch_size_per_gpu": 99}',
     ["train_micro_batch_size_per_gpu is 99 but the stage trains with 16 (training.per_device_batch_size)"]),
    ("global-batch-disagrees", '{"train_batch_size": 7, "gradient_accumulation_steps": "auto"}',
     ["train_batch_size is 7 but the stage trains with 16 (training.per_device_batch_size x gradient_accumulation_steps x ranks)"]),
]


@pytest.mark.parametrize("case", DEEPSPEED_CASES, ids=[c[0] for c in DEEPSPEED_CASES])
def test_bad_deepspeed_json_is_refused_when_planning(project, case):
    _, text, fragments = case
    (project / "ds.json").write_text(text)
    with_config(project, set_key("stages.sft.deepspeed", "ds.json"))
    assert_snakemake_refuses(project, *[f"config key 'stages.sft.deepspeed': {f}" if f.startswith("'ds.json'") else f
                                        for f in fragments])


def test_config_cases_have_a_good_control(project):
    """The same project with the unmodified config does write results (so the refusals above are real)."""
    with_config(project, lambda c: None)
    shutil.rmtree(project / "results", ignore_errors=True)
    snakemake(project, "-c1", "results/data/demo_text")
    assert "demo_text/manifest.json" in " ".join(files_under(project / "results"))


def model_case(project, tiny_model_dir, tmp_path, name, model_edit=None, cfg_edit=None, **kw):
    model = model_variant(tiny_model_dir, tmp_path / name, **kw) if (model_edit or kw) else tiny_model_dir
    if model_edit:
        model_edit(model)

    def edit(cfg):
        cfg["base_model"]["path"] = str(model)
        if cfg_edit:
            cfg_edit(cfg)
    with_config(project, edit)
    return model


def test_lora_target_module_that_does_not_exist(project, tiny_model_dir, tmp_path):
    model_case(project, tiny_model_dir, tmp_path, "m", cfg_edit=lambda c: c["stages"]["sft"].update(
        finetuning="lora", lora={"target_modules": ["q_proj", "query_key_value"]}))
    assert_snakemake_refuses(project, "config key 'stages.sft.lora.target_modules[1]': module 'query_key_value' does not exist in")


def test_max_length_above_model_positions(project, tiny_model_dir, tmp_path):
    model_case(project, tiny_model_dir, tmp_path, "m", cfg_edit=set_key("stages.sft.training.max_length", 4096))
    assert_snakemake_refuses(project, "config key 'stages.sft.training.max_length': 4096 is above the model's 128 positions")


def test_zero3_with_quantized_checkpoint(project, tiny_model_dir, tmp_path):
    model_case(project, tiny_model_dir, tmp_path, "quantized",
               config_edit=lambda c: c.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
               cfg_edit=lambda c: c["stages"]["pt"].update(finetuning="lora", deepspeed="zero3"))
    assert_snakemake_refuses(project, "config key 'stages.pt.deepspeed': the base model at", "is already quantized; ZeRO-3 cannot")


@pytest.mark.parametrize("edit, message", [
    (set_key("stages.dpo.lora.target_modules", ["q_proj", "query_key_value"]),
     "config key 'stages.dpo.lora.target_modules[1]': module 'query_key_value' does not exist in results/models/tiny"),
    (set_key("stages.dpo.training.max_length", 100000),
     "config key 'stages.dpo.training.max_length': 100000 is above the model's 1024 positions"),
], ids=["target-module", "max-length"])
def test_embedded_tiny_model_is_checked_before_it_is_built(project, edit, message):
    """The default base model does not exist yet when Snakemake plans: its settings stand in for it."""
    with_config(project, edit)
    assert_snakemake_refuses(project, message)


def test_reward_model_that_is_a_causal_lm_without_a_score_head(project, tiny_model_dir):
    with_config(project, set_key("stages.rl.rewards", [{"reward_model": str(tiny_model_dir)}]))
    assert_snakemake_refuses(project, "config key 'stages.rl.rewards[0].reward_model': the model at",
                             "is a causal language model (LlamaForCausalLM) without a score head")


def test_kto_with_only_desirable_examples(demo_run, tmp_path):
    """Whether both kinds exist is known once the data is read: the training job refuses before
    it writes anything of its own (no checkpoint, no adapter)."""
    from pipeline import copy_project, run_ci

    project = copy_project(demo_run, tmp_path / "project")
    good = [{"prompt": f"Say {w}.", "completion": w, "label": True} for w in ("yes", "ok", "fine", "sure", "good") * 8]
    (project / "resources" / "only_good.jsonl").write_text(jsonl(*good))
    change = project / "kto.yaml"
    change.write_text(yaml.safe_dump({"datasets": {
        "demo_pairs": {"path": "resources/demo/dpo_pairs.jsonl", "format": "preference", "stages": ["dpo", "rm"]},
        "only_good": {"path": "resources/only_good.jsonl", "format": "unpaired", "stages": ["kto"]}}}))
    proc = run_ci(project, "results/adapters/kto", configs=[change], check=False)
    log = (project / "logs" / "train_kto.log").read_text()
    assert proc.returncode != 0
    assert "tuneflow: error: config key 'stages.kto': the training data of the kto stage (only_good) has " in log, log[-3000:]
    assert "desirable and 0 undesirable examples: KTO needs both; add undesirable (label: false) examples" in log
    # The rank reports the error as one line; what follows is torchrun's own report of a rank that
    # exited non-zero (ChildFailedError), not a traceback through tuneflow's code.
    assert "/tuneflow/" not in log.split("tuneflow: error:")[1], log[-3000:]
    assert not (project / "results" / "adapters" / "kto").exists() and not (project / "results" / "work" / "kto").exists()


def test_model_path_that_does_not_exist(project):
    with_config(project, set_key("base_model.path", "/models/does-not-exist"))
    assert_snakemake_refuses(project, "config key 'base_model.path': model directory '/models/does-not-exist' does not exist")


def test_tokenizer_without_chat_template(project, tiny_model_dir, tmp_path):
    model = model_case(project, tiny_model_dir, tmp_path, "notemplate", tokenizer_edit=lambda t: t.pop("chat_template"))
    assert not (model / "chat_template.jinja").exists()
    assert_snakemake_refuses(project, "has no chat template, but config key 'chat_template' is 'tokenizer'")


def test_vocab_larger_than_embeddings(project, tiny_model_dir, tmp_path):
    model_case(project, tiny_model_dir, tmp_path, "smallvocab", config_edit=lambda c: c.update(vocab_size=100))
    assert_snakemake_refuses(project, "tokens but the model's embeddings hold only 100 (config.json vocab_size)")


def test_model_needing_remote_code_is_not_run(project, tiny_model_dir, tmp_path):
    model_case(project, tiny_model_dir, tmp_path, "remote",
               config_edit=lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"}))
    assert_snakemake_refuses(project, "needs its own Python code (auto_map in config.json)", "'base_model.trust_remote_code' is false")


def test_pickle_weights_are_refused(project, tiny_model_dir, tmp_path):
    def to_pickle(model: Path):
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
    model_case(project, tiny_model_dir, tmp_path, "pickle", model_edit=to_pickle)
    assert_snakemake_refuses(project, "has only pickle weights (.bin/.pt)", "base_model.allow_unsafe_weights: true")


def _truncate_weights(model: Path):
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def _weights_one_byte_short(model: Path):
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1])


def _weights_garbage_header(model: Path):
    (model / "model.safetensors").write_bytes((12).to_bytes(8, "little") + b"not a header" + b"\0" * 64)


def _invalid_config_json(model: Path):
    (model / "config.json").write_text('{"model_type": "llama",\n')


def _config_json_list(model: Path):
    (model / "config.json").write_text("[]")


def _no_tokenizer(model: Path):
    for f in model.glob("tokenizer*"):
        f.unlink()


def _truncated_tokenizer(model: Path):
    f = model / "tokenizer.json"
    f.write_text(f.read_text()[:200])


# A damaged base model directory, refused when planning instead of a traceback: (id, edit, fragments)
MODEL_DIR_CASES = [
    ("truncated-safetensors", _truncate_weights,
     ["model.safetensors: damaged safetensors file (truncated download or copy?): its header claims"]),
    ("safetensors-one-byte-short", _weights_one_byte_short, ["model.safetensors: damaged safetensors file", "its header describes"]),
    ("safetensors-garbage-header", _weights_garbage_header, ["model.safetensors: damaged safetensors file", "unreadable header"]),
    ("invalid-config-json", _invalid_config_json, ["config.json, line 2 column 1: invalid JSON: Expecting property name"]),
    ("config-json-not-an-object", _config_json_list, ["config.json: a model config is a JSON object, not list"]),
    ("missing-tokenizer", _no_tokenizer, ["has no tokenizer files (tokenizer.json, or tokenizer.model, with tokenizer_config.json)"]),
    ("truncated-tokenizer", _truncated_tokenizer, ["cannot be loaded from tokenizer.json, tokenizer_config.json: "]),
]


@pytest.mark.parametrize("case", MODEL_DIR_CASES, ids=[c[0] for c in MODEL_DIR_CASES])
def test_damaged_base_model_directory_is_refused_when_planning(project, tiny_model_dir, tmp_path, case):
    name, edit, fragments = case
    model_case(project, tiny_model_dir, tmp_path, name, model_edit=edit, cfg_edit=lambda c: [
        c["stages"][s]["training"].update(max_length=64) for s in ("sft", "dpo")])
    out = assert_snakemake_refuses(project, *fragments)
    assert "Traceback" not in out, out[-4000:]


def test_a_chat_template_that_raises_is_an_error_line_naming_the_template(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc["chat_template"] = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                           "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    raw = tmp_path / "a.jsonl"
    raw.write_text(jsonl(OK, OK))
    assert run_convert(tmp_path, raw, system="You are helpful.").returncode == 0
    settings = {"kind": "sft", "model": {"path": str(model), "revision": None, "trust_remote_code": False},
                "max_length": 64, "chat_template": "tokenizer", "mask_prompt": True}
    out = tmp_path / "results" / "tokenized" / "ds" / "sft-0123456789"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "tokenize_data.py"), "--data", str(out.parents[2] / "data" / "ds"),
                           "--settings", json.dumps(settings), "--out", str(out)], capture_output=True, text=True,
                          env=env_with_venv(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert (f"tuneflow: error: the chat template of {model} failed on a conversation (system/user/assistant): "
            "TemplateError: System role not supported; use data the template accepts or set config key 'chat_template' "
            "to a built-in template") in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("offline_env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "https://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_hub_name_while_offline_fails_fast(tmp_path, offline_env):
    data = tmp_path / "results" / "data" / "ds"
    settings = {"kind": "pt", "model": {"path": "some-org/some-model", "revision": None}, "max_length": 64}
    started = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "tokenize_data.py"), "--data", str(data),
                           "--settings", json.dumps(settings), "--out", str(tmp_path / "results" / "tokenized" / "x")],
                          capture_output=True, text=True, timeout=120,
                          env=env_with_venv({**offline_env, "HF_HOME": str(tmp_path / "hf")}))
    assert time.time() - started < 60
    expected = "the hub is offline (HF_HUB_OFFLINE=1)" if "HF_HUB_OFFLINE" in offline_env else "the Hugging Face Hub cannot be reached"
    assert proc.returncode == 2 and "'some-org/some-model' is not a local directory" in proc.stderr and expected in proc.stderr, proc.stderr
    assert files_under(tmp_path / "results") == []
    assert not os.environ.get("HF_TOKEN") or os.environ["HF_TOKEN"] not in proc.stderr
