#!/usr/bin/env python
"""CPU benchmark of the data path: convert + tokenize the full Stanford Alpaca file (target: under
60 s on 2 cores), plan a config with 100 variants with `snakemake -n` (target: under 10 s), and the
scaling table of issue 16: generated corpora of 0.25 to 2 GB (PT text, and an SFT JSONL of the same
sizes), convert and tokenize as the workflow runs them (scripts/convert.py, scripts/tokenize_data.py)
with 1 and 2 workers: wall time, MB/s and the peak memory of the whole job, its worker processes
included.

    python scripts/bench_data.py                  # Alpaca + plan
    python scripts/bench_data.py --only convert
    python scripts/bench_data.py --only scaling --sizes 0.25,0.5,1,2 --work /tmp/bench
Prints the numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ALPACA = REPO.parent / "shared" / "data" / "stanford_alpaca" / "alpaca_data.json.gz"
LLAMA2 = REPO.parent / "shared" / "tokenizers" / "llama2"


def bench_convert_tokenize(path, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tuneflow.data.convert import convert_dataset
    from tuneflow.io import read_jsonl
    from tuneflow.tiny_model import CHATML_JINJA
    from tuneflow.tokenize import tokenize_dataset

    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    manifest = convert_dataset({"name": "alpaca", "path": str(path), "format": "alpaca", "validation_fraction": 0.02,
                                "split_seed": 42, "on_bad_record": "skip"}, tmp / "data")
    t_convert = time.perf_counter() - t0
    # A 32k byte-level BPE trained on the data itself (not timed: it stands in for a model's tokenizer).
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = (m["content"] for r in read_jsonl(tmp / "data" / "train.jsonl") for m in r["messages"])
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                                       special_tokens=["<|im_start|>", "<|im_end|>", "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>")
    tok.chat_template = CHATML_JINJA
    t0 = time.perf_counter()
    meta = tokenize_dataset(tmp / "data", tok, {"kind": "sft", "max_length": 1024, "mask_prompt": True,
                                               "chat_template": "tokenizer"}, tmp / "tokenized")
    t_tokenize = time.perf_counter() - t0
    builtin = {}
    if LLAMA2.is_dir():  # the built-in templates tokenize piece by piece (tuneflow.templates): time two
        from tuneflow import models
        from tuneflow.tokenize import tokenize_sft

        records = read_jsonl(tmp / "data" / "train.jsonl")
        for name in ("llama2_zh", "alpaca"):
            llama = models.load_tokenizer(LLAMA2, {}, name)
            t0 = time.perf_counter()
            tokenize_sft(records, llama, {"max_length": 1024, "mask_prompt": True, "chat_template": name})
            builtin[name] = (len(records), time.perf_counter() - t0)
    shutil.rmtree(tmp)
    c = manifest["counts"]
    print(f"convert:  {c['read']} records read, {c['kept']} kept in {t_convert:.1f} s")
    print(f"tokenize: {meta['splits']['train']['records'] + meta['splits']['validation']['records']} samples "
          f"({meta['splits']['train']['tokens']:,} train tokens, prompts masked, chatml) in {t_tokenize:.1f} s")
    print(f"convert + tokenize: {t_convert + t_tokenize:.1f} s on {os.cpu_count()} cores (target < 60 s)")
    for name, (n, seconds) in builtin.items():
        print(f"tokenize with the built-in template {name} (Llama-2 tokenizer): {n} samples in {seconds:.1f} s")


def bench_plan(n_variants):
    import yaml

    tmp = Path(tempfile.mkdtemp())
    for name in ("Snakefile", "workflow", "config", "scripts", "tuneflow", "resources"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
    variants = {f"v{i:03d}": {"stages": {"sft": {"training": {"learning_rate": 1e-4 * (1 + i % 10)},
                                                 "lora": {"r": [8, 16, 32, 64][i % 4]}}}} for i in range(n_variants)}
    (tmp / "variants.yaml").write_text(yaml.safe_dump({"variants": variants}))
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--quiet", "rules", "--cores", "1",
           "--configfile", "variants.yaml"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    jobs = [line for line in proc.stdout.splitlines() if line.startswith("total")]
    print(f"plan: snakemake -n with {n_variants} variants: {jobs[0].split()[-1] if jobs else '?'} jobs "
          f"planned in {elapsed:.1f} s (target < 10 s)")
    shutil.rmtree(tmp)


# -- scaling: generated corpora, the real jobs, memory of the whole process tree -------------------------


def generate_corpus(path: Path, kind: str, size: int):
    """Unique records from the real Stanford Alpaca text (deterministic): PT lines of about 1.4 kB
    (the issue's 1 GB corpus had 702,460 lines), or SFT records {instruction, input, output}."""
    import gzip
    import json
    import random

    if path.exists() and path.stat().st_size >= size:
        return
    records = json.load(gzip.open(ALPACA, "rt", encoding="utf-8"))
    rng = random.Random(0)
    written, i = 0, 0
    tmp = path.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as f:
        texts = [(r["instruction"] + " " + r["output"]).replace("\n", " ").replace("\r", " ") for r in records]
        while written < size:
            if kind == "pt":
                parts, n = [], 0
                while n < 1400:
                    parts.append(rng.choice(texts))
                    n += len(parts[-1]) + 1
                line = f"{i}. " + " ".join(parts) + "\n"
            else:
                r = dict(rng.choice(records))
                r["instruction"] = f"{r['instruction']} (#{i})"
                line = json.dumps(r, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            i += 1
    tmp.rename(path)


def _process_tree(root: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; PSS shares pages among the processes that map them."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def run_measured(cmd, log) -> dict:
    """Run a job; wall time, and the peak over time of the RSS and PSS summed over the job's
    whole process tree (sampled every 0.2 s)."""
    import subprocess
    import threading

    peak = {"rss": 0, "pss": 0, "processes": 0}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                tree = _process_tree(proc.pid)
                mem = [_memory_kb(p) for p in tree]
                peak["rss"] = max(peak["rss"], sum(m[0] for m in mem))
                peak["pss"] = max(peak["pss"], sum(m[1] for m in mem))
                peak["processes"] = max(peak["processes"], len(tree))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        status = proc.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed; see {log}")
    return {"wall": wall, "rss_mb": peak["rss"] / 1024, "pss_mb": peak["pss"] / 1024, "processes": peak["processes"]}


def bench_scaling(sizes_gb, kinds, workers_list, work: Path, keep: bool):
    import json

    if not ALPACA.exists() or not (LLAMA2 / "tokenizer.json").exists():
        print(f"scaling: skipped, needs {ALPACA} and {LLAMA2} (../shared)")
        return
    work.mkdir(parents=True, exist_ok=True)
    # The Llama-2 tokenizer (32,000 pieces) as a model directory the tokenize job accepts.
    model = work / "llama2-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (model / name).exists():
            os.symlink(LLAMA2 / name, model / name)
    py = sys.executable
    print(f"# scaling: {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}; "
          "memory = peak over the job of the sum over its processes (sampled every 0.2 s)", flush=True)
    print("| corpus | size | job | workers | wall | MB/s | peak RSS, all processes | peak PSS, all processes "
          "| load avg |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for kind in kinds:
        for gb in sizes_gb:
            size = int(gb * 1e9)
            raw = work / f"{kind}-{gb}GB.{'txt' if kind == 'pt' else 'jsonl'}"
            generate_corpus(raw, kind, size)
            mb = raw.stat().st_size / 1e6
            for workers in workers_list:
                data, tokenized = work / f"data-{kind}-{gb}-{workers}", work / f"tok-{kind}-{gb}-{workers}"
                for d in (data, tokenized):
                    shutil.rmtree(d, ignore_errors=True)
                settings = {"name": raw.stem, "path": str(raw), "format": "text" if kind == "pt" else "alpaca",
                            "validation_fraction": 0.01, "split_seed": 42, "on_bad_record": "skip",
                            "max_record_bytes": 4_000_000}
                jobs = [("convert", [py, REPO / "scripts" / "convert.py", "--settings", json.dumps(settings),
                                     "--out", data, "--workers", str(workers)], mb)]
                tok_settings = {"kind": kind, "model": {"path": str(model), "revision": None, "trust_remote_code": False},
                                "max_length": 512}
                if kind == "sft":
                    tok_settings.update(chat_template="chatml", mask_prompt=True)
                jobs.append(("tokenize", [py, REPO / "scripts" / "tokenize_data.py", "--data", data, "--settings",
                                          json.dumps(tok_settings), "--out", tokenized, "--workers", str(workers)], None))
                for job, cmd, input_mb in jobs:
                    load = os.getloadavg()[0]
                    m = run_measured(cmd, work / f"{job}-{kind}-{gb}-{workers}.log")
                    if input_mb is None:  # tokenize reads the converted JSONL
                        input_mb = sum(f.stat().st_size for f in data.glob("*.jsonl")) / 1e6
                    print(f"| {'PT text' if kind == 'pt' else 'SFT JSONL'} | {gb:g} GB | {job} | {workers} | "
                          f"{m['wall']:,.0f} s | {input_mb / m['wall']:.1f} | {m['rss_mb']:,.0f} MB | {m['pss_mb']:,.0f} MB | "
                          f"{load:.1f} |", flush=True)
                if not keep:
                    for d in (data, tokenized):
                        shutil.rmtree(d, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["convert", "plan", "scaling"])
    p.add_argument("--data", default=str(ALPACA))
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--variants", type=int, default=100)
    p.add_argument("--sizes", default="0.25,0.5,1,2", help="scaling: corpus sizes in GB")
    p.add_argument("--kinds", default="pt,sft", help="scaling: pt (plain text), sft (Alpaca JSONL)")
    p.add_argument("--workers", default="1,2", help="scaling: worker counts of each job")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tuneflow-bench-data"),
                   help="scaling: where corpora (kept for the next run) and outputs go")
    p.add_argument("--keep", action="store_true", help="scaling: keep the converted and tokenized outputs")
    a = p.parse_args()
    if a.only in (None, "convert"):
        if not Path(a.data).exists():
            print(f"convert: skipped, {a.data} not found (the Stanford Alpaca file of ../shared/data)")
        else:
            bench_convert_tokenize(a.data, a.vocab)
    if a.only in (None, "plan"):
        bench_plan(a.variants)
    if a.only == "scaling":
        bench_scaling([float(x) for x in a.sizes.split(",")], a.kinds.split(","), [int(x) for x in a.workers.split(",")],
                      Path(a.work), a.keep)


if __name__ == "__main__":
    main()
