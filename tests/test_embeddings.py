"""Embedding rows for the tokens a chat template adds (tuneflow.models.fit_embeddings): existing
rows untouched, new ones drawn the same way in every process (training, merge, evaluation), and
nothing resized when the model already has the rows (a merged model, or a ZeRO-3 partition, whose
local weight is empty: the real run is tests/test_pipeline.py::test_zero3_chain)."""

from __future__ import annotations

import torch

from tuneflow import models


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_new_tokens_get_the_same_rows_everywhere_and_old_rows_are_kept(tiny_model):
    path = tiny_model()
    tok = models.load_tokenizer(path, {}, "chatml_peft")
    a, b = _load(path), _load(path)
    before = a.get_input_embeddings().weight.detach().clone()
    old = before.shape[0]
    models.fit_embeddings(a, tok, "chatml_peft")
    torch.manual_seed(1234)  # whatever the global RNG says
    models.fit_embeddings(b, tok, "chatml_peft")
    wa, wb = a.get_input_embeddings().weight, b.get_input_embeddings().weight
    assert wa.shape[0] == -(-len(tok) // 8) * 8 > old and a.config.vocab_size == wa.shape[0]
    assert torch.equal(wa[:old], before) and torch.equal(wa, wb)
    assert torch.equal(a.get_output_embeddings().weight, b.get_output_embeddings().weight)
    models.fit_embeddings(a, tok, "chatml_peft")  # already has them: nothing changes
    assert torch.equal(a.get_input_embeddings().weight, wb)


def test_a_partitioned_embedding_is_measured_by_its_full_shape():
    """Under ZeRO-3 a rank's weight is empty and DeepSpeed keeps the real shape in ds_shape."""
    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(0))
            self.weight.ds_shape = torch.Size([800, 64])

    class Model(torch.nn.Module):
        def get_input_embeddings(self):
            return Embedding()

    assert models.embedding_rows(Model()) == 800
