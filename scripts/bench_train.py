#!/usr/bin/env python
"""Training throughput benchmark: the seed-style path vs tuneflow's SFT path, same GPU, same model,
same data, one run.

  (a) seed-style: transformers Trainer + peft LoRA, gradient checkpointing, every micro-batch padded
      to its longest sample, SDPA (what Chinese-LLaMA-Alpaca-2 / MedicalGPT / peft examples do);
  (b) tuneflow: the SFT recipe's trainer (TRL SFTTrainer) with tuneflow's default training settings
      (workflow/schemas/config.schema.yaml), plus --packing / --micro-batch when given.

  (c) with `--paths ...,qlora`: path (b) with the base loaded 4-bit (nf4, double quant) as the
      qlora recipe loads it; reported for its peak memory.

Data: the real Stanford Alpaca length mix (../shared/data), tokenized with a byte-level BPE trained
on it (vocab 32k by default), prompts masked as in tuneflow's SFT; or `--data-kind dense`: random
token rows of exactly --max-length, every token trained. Model: Llama-architecture shape (7b
default, 1b, or tiny for a CPU smoke run), random init, no hub; saved once as safetensors so paths
(b) and (c) load it through the recipe's own loader (attention implementation, liger, quantization).
Prints per path: effective (non-padding) tokens/s, padding fraction, peak GPU memory, hardware FLOP
utilisation, the held-out loss after training (same samples for every path: a speed-up that broke
training shows there) and the ratio to (a).

    python scripts/bench_train.py --shape 7b --steps 30                          # on an H100
    python scripts/bench_train.py --shape 7b --steps 30 --data-kind dense --paths baseline,tuneflow
    python scripts/bench_train.py --shape 7b --steps 10 --paths qlora             # QLoRA peak memory
    python scripts/bench_train.py --shape tiny --steps 2 --records 64             # CPU smoke (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
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

    from tuneflow.tiny_model import CHATML_JINJA

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>")
    tok.chat_template = CHATML_JINJA
    tok.save_pretrained(out_dir)
    return tok


def load_records(path, limit):
    from tuneflow.data.convert import convert_dataset
    from tuneflow.io import read_jsonl

    out = Path(tempfile.mkdtemp()) / "alpaca"
    convert_dataset({"name": "alpaca", "path": str(path), "format": "alpaca", "validation_fraction": 0.0,
                     "split_seed": 0, "on_bad_record": "skip"}, out)
    records = read_jsonl(out / "train.jsonl")
    return records[:limit] if limit else records


def save_random_model(shape, vocab, device, dtype, out_dir):
    """Random-init Llama of the given shape, saved as safetensors so every path loads the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, n, a, kv = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                      num_key_value_heads=kv, max_position_embeddings=4096, use_cache=False, dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(out_dir)
    del model
    gc.collect()


def dense_rows(n, length, vocab, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g).tolist()
    return [{"input_ids": r, "labels": r} for r in ids]


def held_out_loss(model, rows, device):
    """Mean loss per trained token on fixed samples, one at a time (no padding, no packing).

    The model stays in train mode (no dropout is configured, so the numbers are the same):
    bitsandbytes repacks 4-bit weights for CPU inference in eval mode and fails on small shapes."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]], device=device)
            labels = torch.tensor([r["labels"]], device=device)
            n = int((labels[:, 1:] != -100).sum())
            if n:
                total += model(input_ids=ids, labels=labels).loss.float().item() * n
                count += n
    return total / max(count, 1)


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


def run_path(name, trainer_factory, timer, device, eval_rows):
    import torch

    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = trainer_factory()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    steps = len(timer.times)
    # tokens of the timed steps only: every step sees the same expected mix, so scale by steps
    total_steps = trainer.state.global_step
    tokens_timed = timer.tokens * steps / max(total_steps, 1)
    seconds = sum(timer.times)
    result = {"path": name, "steps_timed": steps, "seconds": seconds, "tokens_per_s": tokens_timed / seconds if seconds else None,
              "padding_fraction": 1 - timer.tokens / max(timer.computed, 1), "peak_gib": peak, "wall_s": wall,
              "tokens_trained": timer.tokens,
              "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
              "held_out_loss": held_out_loss(trainer.model, eval_rows, device)}
    del trainer
    gc.collect()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "stanford_alpaca" / "alpaca_data.json.gz"))
    p.add_argument("--data-kind", choices=["alpaca", "dense"], default="alpaca",
                   help="alpaca: the real length mix; dense: random rows of exactly --max-length tokens")
    p.add_argument("--records", type=int, default=0, help="use the first N records (0 = all)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="steps not timed")
    p.add_argument("--baseline-micro-batch", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=None, help="tuneflow path; default: the schema's per_device_batch_size")
    p.add_argument("--packing", choices=["default", "on", "off"], default="default")
    p.add_argument("--gradient-checkpointing", choices=["default", "on", "off"], default="default", help="tuneflow path")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=32, help="held-out samples for the loss after training")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="measured bf16 matmul peak of the GPU (H100: ~790)")
    p.add_argument("--paths", default="baseline,tuneflow", help="comma-separated: baseline, tuneflow, qlora")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    paths = set(a.paths.split(","))
    if paths - {"baseline", "tuneflow", "qlora"}:
        p.error(f"--paths: unknown {sorted(paths - {'baseline', 'tuneflow', 'qlora'})}")

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from tuneflow import config as tfconfig
    from tuneflow import models
    from tuneflow.tokenize import tokenize_sft
    from tuneflow.train import setup

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if not Path(a.data).exists():
        sys.exit(f"bench_train: {a.data} not found (the Stanford Alpaca file of ../shared/data)")
    records = load_records(a.data, a.records)
    tmp = Path(tempfile.mkdtemp())
    texts = [m["content"] for r in records for m in r["messages"]]
    tok = build_tokenizer(texts, a.vocab, tmp / "model")
    if a.data_kind == "dense":
        needed = (a.steps + a.warmup) * max(a.baseline_micro_batch, a.micro_batch or 1) * 4 + a.eval_samples
        rows = dense_rows(needed, a.max_length, len(tok))
    else:
        rows, _ = tokenize_sft(records, tok, {"max_length": a.max_length, "mask_prompt": True})
    eval_rows, rows = rows[:a.eval_samples], rows[a.eval_samples:]
    mean_len = sum(len(r["input_ids"]) for r in rows) / max(len(rows), 1)
    print(f"data: {a.data_kind}, {len(rows)} samples, mean {mean_len:.1f} tokens, vocab {len(tok)}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""), flush=True)
    ds = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})
    save_random_model(a.shape, len(tok), device, dtype, tmp / "model")
    model_dir = str(tmp / "model")
    spec = {"path": model_dir, "torch_dtype": "auto"}
    model_cfg = models.read_model_config(model_dir)
    defaults = tfconfig.fill_defaults({"base_model": {"path": "x"}, "datasets": {}})["stages"]["sft"]
    training = defaults["training"]
    packing = training["packing"] if a.packing == "default" else a.packing == "on"
    checkpointing = training["gradient_checkpointing"] if a.gradient_checkpointing == "default" else a.gradient_checkpointing == "on"
    micro = a.micro_batch or training["per_device_batch_size"]
    lora = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, target_modules=PROJ, task_type="CAUSAL_LM")
    results = []

    def report(res, timer):
        res["hfu"] = res["tokens_per_s"] * timer.flops / (a.peak_tflops * 1e12) if device == "cuda" and res["tokens_per_s"] else None
        results.append(res)

    if "baseline" in paths:
        timer = StepTimer(a.warmup, device)

        def baseline():
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)
            model = get_peft_model(base, lora)
            model.enable_input_require_grads()
            targs = TrainingArguments(output_dir=str(tmp / "a"), per_device_train_batch_size=a.baseline_micro_batch,
                                      max_steps=a.steps + a.warmup, learning_rate=1e-4, activation_checkpointing=True,
                                      bf16=device == "cuda", use_cpu=device == "cpu", report_to=[], save_strategy="no",
                                      logging_steps=1, disable_tqdm=True, remove_unused_columns=False, seed=0)
            collate = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
            t = Trainer(model=model, args=targs, train_dataset=ds, data_collator=counting_collator(collate, timer, tok.pad_token_id),
                        callbacks=[timer.callback()])
            timer.flops = flops_per_token(model.get_base_model(), mean_len)
            return t
        report(run_path(f"seed-style (HF Trainer + peft, pad-to-longest, micro-batch {a.baseline_micro_batch}, grad ckpt, sdpa)",
                        baseline, timer, device, eval_rows), timer)

    def tuneflow_path(finetuning):
        """The SFT recipe's trainer, model loaded by the recipe's loader, tuneflow's default settings."""
        timer = StepTimer(a.warmup, device)
        settings = {"seed": 0, "base_model": spec, "finetuning": finetuning, "deepspeed": None,
                    "quantization": defaults["quantization"], "chat_template": "tokenizer",
                    "training": {**training, "max_steps": a.steps + a.warmup, "per_device_batch_size": micro,
                                 "gradient_checkpointing": checkpointing, "logging_steps": 1, "save_steps": 10**9,
                                 "packing": packing}}
        run = setup.StageRun("sft", argparse.Namespace(work_dir=tmp / "b", data=[], output=None, data_manifests=[]),
                             settings, model_dir, model_cfg, tok, ds, None, started=0.0)

        def factory():
            kw = setup.trainer_kwargs(run)
            kw.update(report_to=[], save_strategy="no")
            sargs = SFTConfig(**kw, max_length=a.max_length, packing=packing, packing_strategy="bfd")
            model = setup.load_model(run)
            t = SFTTrainer(model=model, args=sargs, train_dataset=ds, processing_class=tok, peft_config=lora,
                           callbacks=[timer.callback()])
            t.data_collator = counting_collator(t.data_collator, timer, tok.pad_token_id)
            timer.flops = flops_per_token(t.model.get_base_model(), a.max_length if packing else mean_len)
            timer.attn = t.model.config._attn_implementation
            return t
        res = run_path(f"tuneflow SFT {finetuning} (packing={packing}, micro-batch {micro}, grad ckpt={checkpointing}, "
                       f"attn={training['attn_implementation']}, liger={training['use_liger_kernel']})",
                       factory, timer, device, eval_rows)
        res["path"] += f" [attn ran: {timer.attn}]"
        report(res, timer)

    if "tuneflow" in paths:
        tuneflow_path("lora")
    if "qlora" in paths:
        tuneflow_path("qlora")

    print(f"\nshape {a.shape}, {a.data_kind} data, LoRA r{a.lora_r} on {', '.join(PROJ)}, "
          f"{a.steps} timed steps after {a.warmup} warm-up")
    for r in results:
        mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a (CPU)"
        hfu = f"{100 * r['hfu']:.1f}%" if r.get("hfu") is not None else "n/a"
        print(f"  {r['path']}\n    effective tokens/s {r['tokens_per_s']:.1f}  padding {100 * r['padding_fraction']:.1f}%  "
              f"peak memory {mem}  HFU {hfu}  final loss {r['final_loss']}  "
              f"held-out loss {r['held_out_loss']:.4f} after {r['tokens_trained']} tokens")
    if len(results) >= 2 and results[0]["path"].startswith("seed-style") and results[0]["tokens_per_s"]:
        for r in results[1:]:
            print(f"  ratio {r['path'].split(' (')[0]} / seed-style: {r['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
