#!/usr/bin/env python
"""CPU benchmark of the data path: convert + tokenize the full Stanford Alpaca file (target: under
60 s on 2 cores), and plan a config with 100 variants with `snakemake -n` (target: under 10 s).

    python scripts/bench_data.py            # both
    python scripts/bench_data.py --only convert
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["convert", "plan"])
    p.add_argument("--data", default=str(ALPACA))
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--variants", type=int, default=100)
    a = p.parse_args()
    if a.only in (None, "convert"):
        if not Path(a.data).exists():
            print(f"convert: skipped, {a.data} not found (the Stanford Alpaca file of ../shared/data)")
        else:
            bench_convert_tokenize(a.data, a.vocab)
    if a.only in (None, "plan"):
        bench_plan(a.variants)


if __name__ == "__main__":
    main()
