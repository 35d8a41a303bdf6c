"""Padding-free packing (training.packing: true) keeps packed samples from attending to each
other: TRL packs them into one row with position ids that restart per sample, and transformers
turns those into a block-diagonal mask for SDPA (flash-attn varlen on a GPU). Checked on the real
SFTTrainer batch against each sample run alone."""

from __future__ import annotations

import torch


def test_packed_samples_do_not_attend_to_each_other(tmp_path):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    from trl import SFTConfig, SFTTrainer

    vocab = {f"t{i}": i for i in range(64)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), eos_token="t1", pad_token="t2")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"))
    samples = [list(range(3, 3 + n)) for n in (9, 6, 12)]
    ds = Dataset.from_dict({"input_ids": samples, "labels": samples})
    args = SFTConfig(output_dir=str(tmp_path), packing=True, packing_strategy="bfd", max_length=64,
                     per_device_train_batch_size=3, use_cpu=True, report_to=[], shuffle_dataset=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one packed row, no padding
    m = trainer.model.eval()
    assert m.config.use_cache is False  # the Trainer turns the KV cache off, which enables the packed mask
    with torch.no_grad():
        packed = m(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        for a, b in zip(starts, starts[1:]):
            alone = m(input_ids=batch["input_ids"][:, a:b]).logits[0]
            assert (packed[a:b] - alone).abs().max().item() < 1e-5
    assert len(starts) - 1 == 3


def test_without_the_position_ids_samples_would_leak(tmp_path):
    """The control: the same packed row without position ids mixes samples (so the test above can fail)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa", use_cache=False)).eval()
    a, b = torch.arange(3, 12).unsqueeze(0), torch.arange(20, 26).unsqueeze(0)
    with torch.no_grad():
        row = m(input_ids=torch.cat([a, b], 1)).logits[0]
        assert (row[9:] - m(input_ids=b).logits[0]).abs().max().item() > 1e-3
