"""Data at any scale: convert and tokenize stream (memory does not grow with the corpus), JSON arrays
are read element by element with the errors json.loads would give, the output does not depend on
the number of workers, long jobs log their progress, the data rules take data.resources, and
training reads the tokenized rows as they are (no re-mapping, nothing written next to them)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, env_with_venv, files_under, snakemake
from tuneflow.data import convert as convert_module
from tuneflow.data import readers
from tuneflow.data.convert import convert_dataset
from tuneflow.errors import DataError
from tuneflow.io import read_jsonl

DEMO = REPO / "resources" / "demo"
SPLIT = readers.LINE_SPLIT


def spec(path, fmt, **kw):
    return {"name": "ds", "path": str(path), "format": fmt, "validation_fraction": 0.1, "split_seed": 3,
            "on_bad_record": "error", "max_record_bytes": 4_000_000, **kw}


# -- memory: measured on the real jobs, never timed ---------------------------------------------------

PEAK_RSS = ("import os, subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, *sys.argv[1:]])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n")


def peak_rss_mb(cmd, tmp_path) -> float:
    """Peak resident memory of a job (kernel high-water mark), measured from a small wrapper
    process so that the test's own memory is not part of it."""
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, cmd)], stdout=subprocess.PIPE, stderr=f,
                             text=True, env=env_with_venv(), check=True).stdout.split()
    assert out[-1] == "0", log.read_text()[-3000:]
    return int(out[-2]) / 1024


def write_corpus(path: Path, mb: float, kind: str):
    """Unique records of about 1.4 kB (as the issue's Alpaca text) built from the demo's text: PT
    lines, or an Alpaca JSON array."""
    lines = [x for x in (DEMO / "pt_text.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    size, i = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        if kind == "array":
            f.write("[\n")
        while size < mb * 1e6:
            text = f"{i} " + " ".join(lines[(i * 7 + k) % len(lines)] for k in range(60))
            chunk = text + "\n" if kind == "text" else ("" if i == 0 else ",\n") + json.dumps(
                {"instruction": text[:80], "input": "", "output": text}, ensure_ascii=False, indent=2)
            f.write(chunk)
            size += len(chunk)
            i += 1
        if kind == "array":
            f.write("\n]\n")


def test_convert_and_tokenize_memory_does_not_grow_with_the_corpus(tmp_path, tiny_model):
    """Each job on a 10 and a 50 MB corpus (PT text; an Alpaca JSON array, tokenized as SFT rows on
    2 workers and as RL prompts): the 40 MB more may add at most a third of their size to the job's
    peak memory, allocator noise and the tokenizer's bounded word cache included. (Reading whole
    files, the jobs took about 20 times the corpus.)"""
    model = {"path": str(tiny_model()), "revision": None, "trust_remote_code": False}
    script = {"convert": REPO / "scripts" / "convert.py", "tokenize": REPO / "scripts" / "tokenize_data.py"}
    sizes = (10, 50)
    peaks = {}
    for mb in sizes:
        for kind in ("text", "array"):
            raw = tmp_path / f"{kind}{mb}.{'json' if kind == 'array' else 'txt'}"
            write_corpus(raw, mb, kind)
            settings = spec(raw, "alpaca" if kind == "array" else "text")
            peaks[f"convert {kind}", mb] = peak_rss_mb([script["convert"], "--out", tmp_path / f"data-{kind}{mb}",
                                                        "--settings", json.dumps(settings)], tmp_path)
        for job, data, settings, workers in (
                ("tokenize PT", "text", {"kind": "pt"}, 1),
                ("tokenize SFT", "array", {"kind": "sft", "chat_template": "chatml", "mask_prompt": True}, 2),
                ("tokenize RL prompts", "array", {"kind": "prompt", "chat_template": "chatml"}, 1)):
            settings = {**settings, "model": model, "max_length": 128}
            peaks[job, mb] = peak_rss_mb([script["tokenize"], "--data", tmp_path / f"data-{data}{mb}", "--settings",
                                          json.dumps(settings), "--out", tmp_path / f"tok-{job}{mb}".replace(" ", "-"),
                                          "--workers", workers], tmp_path)
    jobs = sorted({job for job, _ in peaks})
    growth = {job: round(peaks[job, sizes[1]] - peaks[job, sizes[0]], 1) for job in jobs}
    print("peak RSS (MB):", {f"{job} {mb} MB": round(v) for (job, mb), v in peaks.items()}, "growth:", growth)
    assert len(jobs) == 5 and all(growth[job] < (sizes[1] - sizes[0]) / 3 for job in jobs), (peaks, growth)


def test_dedupe_remembers_16_bytes_a_record_and_finds_every_duplicate(monkeypatch):
    """The log-structured set of content digests (flushed every 7, arrays merged up to 40 digests
    here) against a plain set."""
    import hashlib

    from tuneflow.data import seen

    monkeypatch.setattr(seen, "FLUSH_AT", 7)
    monkeypatch.setattr(seen, "MERGE_UP_TO", 40)
    rng = random.Random(0)
    digests = [hashlib.blake2b(str(rng.randrange(300)).encode(), digest_size=16).digest() for _ in range(3000)]
    ours, plain, decisions = seen.SeenDigests(), set(), []
    for start in range(0, len(digests), 25):  # batches, as convert looks them up
        batch = digests[start:start + 25]
        for d, flushed in zip(batch, ours.in_levels(batch)):
            decisions.append((ours.add_if_new(d, flushed), d not in plain))
            plain.add(d)
        ours.flush_if_full()
    assert all(a == b for a, b in decisions) and len(ours) == len(plain) == 300
    assert len(ours.levels) > 1 and all(level.dtype.itemsize == 16 for level in ours.levels)
    assert max(len(level) for level in ours.levels) <= 40 < sum(len(level) for level in ours.levels)


# -- JSON arrays and lines, streamed: what the whole-file reading gave --------------------------------


def whole_file_records(text: str, plain_text: bool, json_array: bool):
    """Reference: the records and their positions as reading the whole text at once gives them."""
    text = text.removeprefix("\ufeff")
    if json_array:
        return [(v, None, i) for i, v in enumerate(json.loads(text))]
    lines = SPLIT.split(text)
    return [(line if plain_text else json.loads(line), n, None) for n, line in enumerate(lines, 1) if line.strip()]


def random_text(rng):
    return "".join(rng.choice(["a", "é", "中", "\n", "\\", '"', " ", "\u2028", "\r", "}", "]", ","])
                   for _ in range(rng.randint(0, 20)))


def streamed(path, plain_text=False, max_record_bytes=None):
    return [(r.value, r.line, r.index)
            for r in readers.iter_records(path, readers.SourceInfo(str(path)), plain_text, max_record_bytes)]


@pytest.mark.parametrize("seed", range(3))
def test_streamed_json_arrays_give_the_values_and_errors_of_json_loads(tmp_path, monkeypatch, seed):
    """Windows of 1 to 64 characters, so that elements, strings, escapes and numbers are cut
    everywhere; broken arrays name the line and column json.loads names."""
    rng = random.Random(seed)
    f = tmp_path / "a.json"
    for case in range(150):
        monkeypatch.setattr(readers, "CHUNK_CHARS", rng.choice([1, 2, 3, 7, 64]))
        records = [{"instruction": random_text(rng), "n": rng.choice([1, -2.5, 12345678901234, True, None]),
                    "list": [random_text(rng) for _ in range(rng.randint(0, 2))]} for _ in range(rng.randint(1, 5))]
        text = json.dumps(records, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
        if case % 2:  # break it somewhere after the "[" (without it, it is not an array but JSON lines)
            i = rng.randrange(1, len(text))
            text = text[:i] + rng.choice(["", "x", ",", "]", "{", '"', "\n"]) + text[i + 1:]
        f.write_text(text, encoding="utf-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            with pytest.raises(DataError) as got:
                streamed(f)
            assert str(got.value) == f"{f}, line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})", text
            continue
        assert streamed(f) == whole_file_records(text, False, True)


def test_streamed_lines_keep_line_numbers_across_every_line_end_and_buffer_boundary(tmp_path):
    """\\r\\n, \\r and \\n mixed, one of each at the edges of the reader's 8 KiB buffers, and lines
    of exactly data.max_record_bytes (the reader never holds more of a line than the limit)."""
    rng = random.Random(0)
    limit = 200  # every random line is shorter
    parts, size = [], 0
    while size < 100_000:
        line = json.dumps({"text": random_text(rng) or "x"}) if rng.random() < 0.9 else ""
        if rng.random() < 0.2:
            line = json.dumps({"text": "y" * (limit - 12)})  # exactly the limit
        end = rng.choice(["\n", "\r\n", "\r"])
        if 8190 <= (size + len(line)) % 8192 <= 8191:
            end = "\r\n"  # straddles a buffer boundary
        parts.append(line + end)
        size += len(line + end)
    text = "\ufeff" + "".join(parts)
    f = tmp_path / "a.jsonl"
    f.write_text(text, encoding="utf-8", newline="")
    t = tmp_path / "a.txt"
    t.write_text(text, encoding="utf-8", newline="")
    for path, plain in ((f, False), (t, True)):
        assert streamed(path, plain) == whole_file_records(text, plain, False)
        assert streamed(path, plain, max_record_bytes=limit) == whole_file_records(text, plain, False)


def test_an_oversized_array_element_is_refused_before_it_is_read_whole(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"instruction": "i", "output": "o"}, {"instruction": "x" * 3_000_000, "output": "o"}]))
    with pytest.raises(DataError, match=r"a.json, record 1: record is at least 1.\d MB, above the limit of 1.0 MB"):
        list(readers.iter_records(f, readers.SourceInfo(str(f)), max_record_bytes=1_000_000))


# -- the result does not depend on the number of workers ----------------------------------------------


def test_convert_output_is_the_same_with_one_or_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "BATCH_RECORDS", 7)  # many batches, so both workers take turns
    monkeypatch.setattr(convert_module, "BATCH_BYTES", 2000)
    for name, fmt in (("sft_alpaca.json", "alpaca"), ("dpo_pairs.jsonl", "preference"), ("pt_text.txt", "text"),
                      ("sft_promptcblue.jsonl", "promptcblue")):
        out = {}
        for workers in (1, 2):
            convert_dataset(spec(DEMO / name, fmt), tmp_path / f"{name}{workers}", workers=workers)
            out[workers] = [(tmp_path / f"{name}{workers}" / f).read_bytes()
                            for f in ("train.jsonl", "validation.jsonl", "manifest.json")]
        assert out[1] == out[2], name


def test_tokenize_output_is_the_same_with_one_or_two_workers_and_as_one_batch(tmp_path, monkeypatch, tiny_model):
    """Streamed in batches of 7 records over two worker processes, the rows equal those of the
    whole split tokenized at once (PT blocks cut across batches included), for every kind of rows."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from tuneflow import tokenize

    monkeypatch.setattr(tokenize, "BATCH_RECORDS", 7)
    monkeypatch.setattr(tokenize, "BATCH_BYTES", 2000)
    tok = AutoTokenizer.from_pretrained(tiny_model())
    covered = set()
    for name, fmt, kind in (("pt_text.txt", "text", "pt"), ("sft_alpaca.json", "alpaca", "sft"),
                            ("dpo_pairs.jsonl", "preference", "dpo"), ("dpo_pairs.jsonl", "preference", "kto"),
                            ("sft_alpaca.json", "alpaca", "prompt"), ("pt_text.txt", "text", "sft")):
        data = tmp_path / "data" / f"{kind}-{fmt}"
        convert_dataset(spec(DEMO / name, fmt), data)
        covered.add(tokenize.rows_kind(kind, data))
        settings = {"kind": kind, "max_length": 48, "mask_prompt": True}
        rows = {}
        for workers in (1, 2):
            out = tmp_path / f"tok-{kind}-{fmt}-{workers}"
            meta = tokenize.tokenize_dataset(data, tok, settings, out, workers=workers)
            rows[workers] = (meta, {s: load_from_disk(str(out / s)).to_dict() for s in ("train", "validation")})
        assert rows[1] == rows[2], kind
        for split in ("train", "validation"):
            whole, stats = tokenize.tokenize_split(read_jsonl(data / f"{split}.jsonl"), tok, settings, data.name)
            columns = list(tokenize.KINDS[kind].columns)
            assert rows[1][1][split] == {c: [r[c] for r in whole] for c in columns}, (kind, split)
            assert rows[1][0]["splits"][split] == {**stats, "rows": len(whole)}
    assert covered == set(tokenize.KINDS)


def test_tokenized_shards_load_as_save_to_disk_writes_them(tmp_path, monkeypatch):
    """Several shards (a tiny shard limit) load with load_from_disk, memory-mapped, with the
    dataset_info.json and state.json keys Dataset.save_to_disk writes."""
    import numpy as np
    from datasets import Dataset, Features, List, Value, load_from_disk

    from tuneflow import tokenize

    monkeypatch.setattr(tokenize, "MAX_SHARD_BYTES", 100)
    rows = [list(range(i, i + 1 + i % 5)) for i in range(40)]
    shards = tokenize.ArrowShards(tmp_path / "ours", {"input_ids": "int32", "labels": "int64"})
    for i in range(0, 40, 8):
        part = rows[i:i + 8]
        lengths = np.array([len(r) for r in part])
        values = np.array([x for r in part for x in r])
        shards.write({"input_ids": (lengths, values), "labels": (lengths, -values)})
    shards.finish()
    ours = load_from_disk(str(tmp_path / "ours"))
    assert len(ours.cache_files) == 5 and ours.to_dict() == {"input_ids": rows, "labels": [[-x for x in r] for r in rows]}
    features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int64"))})
    Dataset.from_dict({"input_ids": rows, "labels": rows}, features=features).save_to_disk(str(tmp_path / "theirs"))
    for name in ("dataset_info.json", "state.json"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("ours", "theirs"))
        assert a.keys() == b.keys()
        if name == "dataset_info.json":
            assert a == b
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "data-00000-of-00005.arrow", "data-00001-of-00005.arrow", "data-00002-of-00005.arrow",
        "data-00003-of-00005.arrow", "data-00004-of-00005.arrow", "dataset_info.json", "state.json"]


def test_rows_whose_types_widen_in_a_later_batch_load_as_from_dict_builds_them(tmp_path, monkeypatch):
    """RL prompt rows written batch by batch, where a later batch first has a message with
    tool_calls: the earlier shards are rewritten into the wider type, and the dataset equals
    Dataset.from_dict of all rows (types, values and dataset_info.json); no rows gives its empty dataset."""
    from datasets import Dataset, load_from_disk

    from tuneflow import tokenize

    monkeypatch.setattr(tokenize, "MAX_SHARD_BYTES", 200)
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}] + ([call] if i in (9, 23) else []),
             "reference": f"r{i}", "meta": json.dumps({"i": i})} for i in range(30)]
    columns = ["prompt", "reference", "meta"]
    for name, written in (("some", rows), ("none", [])):
        shards = tokenize.ArrowShards(tmp_path / name, dict.fromkeys(columns))
        for i in range(0, len(written), 4):
            shards.write_rows(written[i:i + 4])
        shards.finish()
        ours = load_from_disk(str(tmp_path / name))
        theirs = Dataset.from_dict({c: [r[c] for r in written] for c in columns})
        theirs.save_to_disk(str(tmp_path / f"{name}-theirs"))
        assert ours.features == theirs.features and ours.to_dict() == theirs.to_dict(), name
        assert (tmp_path / name / "dataset_info.json").read_text() == (tmp_path / f"{name}-theirs" / "dataset_info.json").read_text()
        assert len(ours.cache_files) > 1 if written else len(ours.cache_files) == 1  # shards before the widening


# -- progress lines ------------------------------------------------------------------------------------


PROGRESS = re.compile(r"^(convert|tokenize) \S+.*: [\d,]+ records, [\d,.]+ of [\d,.]+ MB \(\d+%\) in .*: "
                      r"[\d,]+ records/s, [\d,.]+ MB/s, (ETA \d.*|done)$", re.M)


def test_long_data_jobs_log_records_per_second_mb_per_second_and_eta(tmp_path, tiny_model):
    raw = tmp_path / "pt.txt"
    write_corpus(raw, 0.3, "text")
    every = ["--progress-every", "0"]  # a line per batch; the jobs' default is every 30 s
    proc = subprocess.run([sys.executable, REPO / "scripts" / "convert.py", "--settings", json.dumps(spec(raw, "text")),
                           "--out", tmp_path / "data", *every], capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 0, proc.stderr
    convert_lines = PROGRESS.findall(proc.stderr)
    settings = {"kind": "pt", "model": {"path": str(tiny_model()), "revision": None, "trust_remote_code": False},
                "max_length": 64}
    proc = subprocess.run([sys.executable, REPO / "scripts" / "tokenize_data.py", "--data", tmp_path / "data",
                           "--settings", json.dumps(settings), "--out", tmp_path / "tok", *every],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 0, proc.stderr
    tokenize_lines = PROGRESS.findall(proc.stderr)
    assert len(convert_lines) >= 2 and len(tokenize_lines) >= 2, proc.stderr
    assert "ETA" in "".join(m[1] for m in convert_lines + tokenize_lines)


# -- the workflow: data rules on data.resources; training re-maps nothing -------------------------------


def test_data_rules_take_their_cpus_memory_and_time_from_data_resources(workdir):
    (workdir / "overlay.yaml").write_text(yaml.safe_dump({"data": {"resources": {"cpus_per_task": 3, "mem_mb": 3000,
                                                                                 "runtime": 30}}}))
    out = snakemake(workdir, "-n", "-p", "-F", "--cores", "8", "--configfile", "config/config.yaml", "overlay.yaml",
                    "--until", "tokenize").stdout
    jobs = [block for block in out.split("\nrule ")[1:] if block.startswith(("convert:", "tokenize:"))]
    assert len(jobs) == 14  # 5 converts; 9 tokenizes: the rows of PT, SFT (4 datasets), DPO and RM (shared), KTO, RL (2)
    for block in jobs:
        resources = dict(re.findall(r"(\w+)=([^,\s]*)", re.search(r"resources: (.*)", block).group(1)))
        assert "threads: 3" in block and "--workers 3" in block, block
        assert (resources["cpus_per_task"], resources["mem_mb"], resources["runtime"], resources["nodes"]) == \
            ("3", "3000", "30", "1") and "gres" not in resources, block


@pytest.mark.slow
def test_more_data_workers_rerun_no_data_job(demo_run, tmp_path):
    from pipeline import copy_project, planned_jobs

    project = copy_project(demo_run, tmp_path / "project")
    (project / "more.yaml").write_text(yaml.safe_dump({"data": {"resources": {"cpus_per_task": 8, "mem_mb": 9000}}}))
    assert planned_jobs(project, configs=[project / "more.yaml"]) == {("report", "results/report/index.html")}


@pytest.mark.slow
def test_training_writes_nothing_into_the_tokenized_data(demo_run):
    """The tokenize rule's outputs hold what it wrote, after every stage trained on them."""
    written_by_tokenize = re.compile(r"meta\.json|files\.json|example\.json|\.snakemake_timestamp|(train|validation)/(data-\d{5}-of-\d{5}\.arrow|state\.json|dataset_info\.json)")
    for directory in (demo_run / "results" / "tokenized").glob("*/*"):
        extra = [f for f in files_under(directory) if not written_by_tokenize.fullmatch(f)]
        assert extra == [], directory


@pytest.mark.parametrize("kind", ["pt", "sft"])
def test_the_trainer_sees_the_batches_of_trl_s_own_preparation_without_it(tmp_path, tiny_model, kind):
    """TRL's SFTTrainer maps the whole dataset at start (labels, truncation, filter, then a shuffle),
    writing copies next to the data. tuneflow skips that (the rows are trainer-ready) and keeps the
    shuffle: the same batches, in the same order, and no file written."""
    import shutil

    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneflow.tokenize import tokenize_dataset
    from tuneflow.train import setup

    model_dir = tiny_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    name, fmt = ("pt_text.txt", "text") if kind == "pt" else ("sft_alpaca.json", "alpaca")
    convert_dataset(spec(DEMO / name, fmt), tmp_path / "data")
    tokenize_dataset(tmp_path / "data", tok, {"kind": kind, "max_length": 64, "mask_prompt": True}, tmp_path / "tok")
    batches, written = [], []
    for ours in (False, True):
        tokenized = tmp_path / f"tok-{ours}"
        shutil.copytree(tmp_path / "tok", tokenized)
        before = files_under(tokenized)

        class Run:
            train_dataset = load_from_disk(str(tokenized / "train"))
            eval_dataset = load_from_disk(str(tokenized / "validation"))

        extra = setup.pretokenized_sft_data(Run, 42, packing=False) if ours else {}
        if ours:  # the rows stay memory-mapped from the tokenize rule's files; only the shuffle's index is in memory
            assert {Path(c["filename"]).parent.parent for c in Run.train_dataset.cache_files} == {tokenized}
        args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=64, packing=False, shuffle_dataset=True, seed=42,
                         use_cpu=True, report_to=[], completion_only_loss=False if kind == "pt" else None, **extra)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, processing_class=tok,
                             train_dataset=Run.train_dataset, eval_dataset=Run.eval_dataset)
        collate = trainer.data_collator
        batches.append([{k: v.tolist() for k, v in collate([row]).items()}
                        for data in (trainer.train_dataset, trainer.eval_dataset) for row in data])
        written.append(sorted(set(files_under(tokenized)) - set(before)))
    assert batches[0] == batches[1]
    assert written[0] and written[1] == []  # TRL's preparation wrote cache files; ours nothing
