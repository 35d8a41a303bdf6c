#!/usr/bin/env python
"""Training throughput benchmark: the seed-style path vs tuneflow's SFT path, same GPU, same model,
same data, one run.

  (a) seed-style: transformers Trainer + peft LoRA, gradient checkpointing, every micro-batch padded
      to its longest sample, SDPA (what Chinese-LLaMA-Alpaca-2 / MedicalGPT / peft examples do);
  (b) tuneflow: the SFT recipe's trainer (TRL SFTTrainer) with tuneflow's default training settings
      (workflow/schemas/config.schema.yaml), plus --packing / --micro-batch when given.

Data: the real Stanford Alpaca length mix (../shared/data), tokenized with a byte-level BPE trained
on it (vocab 32k by default), prompts masked as in tuneflow's SFT. Model: Llama-architecture shape
(7b default, 1b, or tiny for a CPU smoke run), random init, no hub. Prints per path: effective
(non-padding) tokens/s, padding fraction, peak GPU memory, hardware FLOP utilisation and b/a.

    python scripts/bench_train.py --shape 7b --steps 30              # on an H100
    python scripts/bench_train.py --shape tiny --steps 2 --records 64  # CPU smoke (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "7b": (4096, 11008, 32, 32, 32),
    "1b": (2048, 5632, 22, 32, 4),
    "tiny": (64, 160, 2, 4, 2),
}
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tokenizer(texts, vocab_size, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tuneflow.templates import CHATML

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>")
    tok.chat_template = CHATML
    tok.save_pretrained(out_dir)
    return tok


def load_records(path, limit):
    from tuneflow.data.convert import convert_dataset, read_jsonl

    out = Path(tempfile.mkdtemp()) / "alpaca"
    convert_dataset({"name": "alpaca", "path": str(path), "format": "alpaca", "validation_fraction": 0.0,
                     "split_seed": 0, "on_bad_record": "skip"}, out)
    records = read_jsonl(out / "train.jsonl")
    return records[:limit] if limit else records


def make_model(shape, vocab, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, n, a, kv = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                      num_key_value_heads=kv, max_position_embeddings=4096, attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model


def flops_per_token(model, seq_len):
    """Forward+backward FLOPs per trained token: 6 x parameters in matmuls (LoRA: the frozen base
    still needs forward and input-gradient passes, i.e. ~4x, plus adapter terms) + attention."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    return 6 * n + attn


class StepTimer:
    def __init__(self, warmup, device):
        self.warmup, self.device, self.times, self.tokens, self.computed = warmup, device, [], 0, 0
        self._t = None

    def sync(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.sync()
                timer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.sync()
                if state.global_step > timer.warmup:
                    timer.times.append(time.perf_counter() - timer._t)
        return _CB()


def counting_collator(collate, timer, pad_id):
    def wrapped(features):
        batch = collate(features)
        ids = batch["input_ids"]
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int((ids != pad_id).sum())
        timer.tokens += real
        timer.computed += ids.numel()
        return batch
    return wrapped


def run_path(name, trainer_factory, timer, device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = trainer_factory()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    steps = len(timer.times)
    # tokens of the timed steps only: every step sees the same expected mix, so scale by steps
    total_steps = trainer.state.global_step
    tokens_timed = timer.tokens * steps / max(total_steps, 1)
    seconds = sum(timer.times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    result = {"path": name, "steps_timed": steps, "seconds": seconds, "tokens_per_s": tokens_timed / seconds if seconds else None,
              "padding_fraction": 1 - timer.tokens / max(timer.computed, 1), "peak_gib": peak, "wall_s": wall,
              "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None)}
    del trainer
    gc.collect()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "stanford_alpaca" / "alpaca_data.json.gz"))
    p.add_argument("--records", type=int, default=0, help="use the first N records (0 = all)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="steps not timed")
    p.add_argument("--baseline-micro-batch", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=None, help="tuneflow path; default: the schema's per_device_batch_size")
    p.add_argument("--packing", choices=["default", "on", "off"], default="default")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="measured bf16 matmul peak of the GPU (H100: ~790)")
    p.add_argument("--paths", default="baseline,tuneflow")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from tuneflow import config as tfconfig
    from tuneflow.tokenization import tokenize_sft
    from tuneflow.train import common

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if not Path(a.data).exists():
        sys.exit(f"bench_train: {a.data} not found (the Stanford Alpaca file of ../shared/data)")
    records = load_records(a.data, a.records)
    tmp = Path(tempfile.mkdtemp())
    texts = [m["content"] for r in records for m in r["messages"]]
    tok = build_tokenizer(texts, a.vocab, tmp / "tok")
    rows, stats = tokenize_sft(records, tok, a.max_length)
    mean_len = stats["tokens"] / max(len(rows), 1)
    print(f"data: {len(rows)} samples, mean {mean_len:.1f} tokens, vocab {len(tok)}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""), flush=True)
    ds = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})
    defaults = tfconfig.fill_defaults({"base_model": {"path": "x"}, "datasets": {}})["stages"]["sft"]["training"]
    packing = defaults["packing"] if a.packing == "default" else a.packing == "on"
    micro = a.micro_batch or defaults["per_device_batch_size"]
    lora = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, target_modules=PROJ, task_type="CAUSAL_LM")
    results = []

    if "baseline" in a.paths:
        timer = StepTimer(a.warmup, device)

        def baseline():
            model = get_peft_model(make_model(a.shape, len(tok), device, dtype), lora)
            model.enable_input_require_grads()
            targs = TrainingArguments(output_dir=str(tmp / "a"), per_device_train_batch_size=a.baseline_micro_batch,
                                      max_steps=a.steps + a.warmup, learning_rate=1e-4, gradient_checkpointing=True,
                                      bf16=device == "cuda", use_cpu=device == "cpu", report_to=[], save_strategy="no",
                                      logging_steps=1, disable_tqdm=True, remove_unused_columns=False, seed=0)
            collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
            t = Trainer(model=model, args=targs, train_dataset=ds, data_collator=counting_collator(collate, timer, tok.pad_token_id),
                        callbacks=[timer.callback()])
            timer.flops = flops_per_token(model.get_base_model(), mean_len)
            return t
        res = run_path(f"seed-style (HF Trainer + peft, pad-to-longest, micro-batch {a.baseline_micro_batch}, grad ckpt)",
                       baseline, timer, device)
        res["hfu"] = res["tokens_per_s"] * timer.flops / (a.peak_tflops * 1e12) if device == "cuda" and res["tokens_per_s"] else None
        results.append(res)

    if "tuneflow" in a.paths:
        timer = StepTimer(a.warmup, device)

        def tuneflow():
            settings = {"seed": 0, "finetuning": "lora", "deepspeed": None,
                        "training": {**defaults, "max_steps": a.steps + a.warmup, "per_device_batch_size": micro,
                                     "logging_steps": 1, "save_steps": 10**9, "packing": packing}}
            kw = common.trainer_kwargs(settings, tmp / "b", has_eval=False)
            kw.update(report_to=[], save_strategy="no")
            sargs = SFTConfig(**kw, max_length=a.max_length, packing=packing, packing_strategy="bfd")
            model = make_model(a.shape, len(tok), device, dtype)
            t = SFTTrainer(model=model, args=sargs, train_dataset=ds, processing_class=tok, peft_config=lora,
                           callbacks=[timer.callback()])
            t.data_collator = counting_collator(t.data_collator, timer, tok.pad_token_id)
            timer.flops = flops_per_token(t.model.get_base_model(), a.max_length if packing else mean_len)
            return t
        res = run_path(f"tuneflow SFT (defaults: packing={packing}, micro-batch {micro}, "
                       f"grad ckpt={defaults['gradient_checkpointing']})", tuneflow, timer, device)
        res["hfu"] = res["tokens_per_s"] * timer.flops / (a.peak_tflops * 1e12) if device == "cuda" and res["tokens_per_s"] else None
        results.append(res)

    print(f"\nshape {a.shape}, LoRA r{a.lora_r} on {', '.join(PROJ)}, {a.steps} timed steps after {a.warmup} warm-up")
    for r in results:
        mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a (CPU)"
        hfu = f"{100 * r['hfu']:.1f}%" if r.get("hfu") is not None else "n/a"
        print(f"  {r['path']}\n    effective tokens/s {r['tokens_per_s']:.1f}  padding {100 * r['padding_fraction']:.1f}%  "
              f"peak memory {mem}  HFU {hfu}  final loss {r['final_loss']}")
    if len(results) == 2 and results[0]["tokens_per_s"]:
        print(f"  ratio tuneflow / seed-style: {results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
