"""The model families users fine-tune (Llama-2, Llama-3.1, Mistral, Qwen3, Mixtral), each a tiny
random-init model with its real tokenizer (tests/model_families.py), through what differs between
them: LoRA targets (output layer, MoE routers and experts), pad and document-end tokens, tied
embeddings, 128k/152k vocabularies; and the whole workflow (SFT, DPO, merge, evaluation) for each
in one Snakemake run (tests/config/families.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import make_workdir, snakemake
from model_families import FAMILIES, NAMES, read_config
from tuneflow.errors import ConfigError

FAMILIES_CONFIG = "tests/config/families.yaml"


def lora(**kw):
    return {"target_modules": "all-linear", "dropout": 0.0, "modules_to_save": [], **kw}


# -- the models ----------------------------------------------------------------------------------


def test_each_family_has_its_published_architecture_and_real_vocabulary(family_model):
    from transformers import AutoTokenizer

    cfg = {name: read_config(family_model(name)) for name in NAMES}
    assert {n: c["architectures"][0] for n, c in cfg.items()} == {
        "llama2": "LlamaForCausalLM", "llama3_1": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
        "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM"}
    assert {n: c["vocab_size"] for n, c in cfg.items()} == {
        "llama2": 32000, "llama3_1": 128256, "mistral": 32000, "qwen3": 151936, "mixtral": 32000}
    assert cfg["llama3_1"]["rope_parameters"]["rope_type"] == "llama3"
    assert cfg["qwen3"]["tie_word_embeddings"] and not cfg["llama3_1"]["tie_word_embeddings"]
    assert cfg["mistral"]["num_key_value_heads"] < cfg["mistral"]["num_attention_heads"]  # grouped-query attention
    assert cfg["mixtral"]["num_local_experts"] == 4
    for name in NAMES:
        assert len(AutoTokenizer.from_pretrained(family_model(name))) <= cfg[name]["vocab_size"]
        assert {f.name for f in family_model(name).iterdir()} >= {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}


# -- LoRA targets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_all_linear_adapts_every_linear_layer_but_the_output_layer_and_routers(family_model, name):
    from tuneflow import lora_targets

    inv = lora_targets.inventory_of_dir(str(family_model(name)))
    got = lora_targets.resolve(lora(), inv, name)
    attention = ["k_proj", "o_proj", "q_proj", "v_proj"]
    if FAMILIES[name].moe:
        assert got["target_modules"] == attention and got["target_parameters"] == []
        assert got["skipped"] == {"output layer": ["lm_head"], "MoE routers": ["gate"], "MoE experts": ["experts"]}
    else:
        assert got["target_modules"] == sorted(attention + ["down_proj", "gate_proj", "up_proj"])
        assert got["skipped"] == {"output layer": ["lm_head"]}


def test_a_router_that_is_a_linear_layer_is_not_adapted_where_peft_all_linear_would():
    """Qwen2-MoE's shared_expert_gate is an nn.Linear beside the experts: peft's own all-linear
    adapts it, ours does not (the model is built on the meta device: no weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    from tuneflow import lora_targets

    cfg = Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                         shared_expert_intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    with torch.device("meta"):
        model = Qwen2MoeForCausalLM(cfg)
    inv = lora_targets.inventory(model)
    ours = lora_targets.resolve(lora(), inv, "qwen2_moe")
    assert "shared_expert_gate" not in " ".join(ours["target_modules"]) and ours["skipped"]["MoE routers"] == ["gate", "shared_expert_gate"]
    peft_all_linear = get_peft_model(model, LoraConfig(target_modules="all-linear", r=2)).targeted_module_names
    assert any(n.endswith("shared_expert_gate") for n in peft_all_linear)


def test_experts_are_adapted_only_when_target_experts_is_set(family_model):
    from tuneflow import lora_targets

    inv = lora_targets.inventory_of_dir(str(family_model("mixtral")))
    got = lora_targets.resolve(lora(target_experts=True), inv, "mixtral")
    assert got["target_parameters"] == ["experts.down_proj", "experts.gate_up_proj"]
    assert got["skipped"] == {"output layer": ["lm_head"], "MoE routers": ["gate"]}
    with pytest.raises(ConfigError, match=r"'lora.target_experts': .*fused weights, which peft adapts without dropout"):
        lora_targets.resolve(lora(target_experts=True, dropout=0.05), inv, "mixtral")
    with pytest.raises(ConfigError, match=r"'lora.target_experts': the model at qwen3 has no mixture-of-experts"):
        lora_targets.resolve(lora(target_experts=True), lora_targets.inventory_of_dir(str(family_model("qwen3"))), "qwen3")


@pytest.mark.parametrize("names, key, message", [
    (["q_proj", "w1"], "target_modules[1]", "module 'w1' does not exist in mixtral (its linear module names: k_proj, lm_head, o_proj, q_proj, v_proj)"),
    (["gate"], "target_modules[0]", "module 'gate' in mixtral (MixtralTopKRouter) is an MoE router, which LoRA does not adapt"),
    (["experts"], "target_modules[0]", "(set lora.target_experts: true to adapt the experts)"),
])
def test_a_target_that_is_no_linear_layer_of_the_model_is_refused_naming_the_key(family_model, names, key, message):
    """`w1` is a tensor name of Mixtral's checkpoint but no module of the model transformers builds
    (its experts are fused): peft would adapt q_proj alone without a word."""
    from tuneflow import lora_targets

    inv = lora_targets.inventory_of_dir(str(family_model("mixtral")))
    with pytest.raises(ConfigError) as e:
        lora_targets.resolve(lora(target_modules=names), inv, "mixtral")
    assert e.value.key == f"lora.{key}" and message in str(e.value)


def test_planning_refuses_a_target_only_the_checkpoint_names(family_model, tmp_path):
    project = make_workdir(tmp_path / "project")
    paths = families_paths(family_model)
    paths["variants"]["mixtral"]["stages"] = {"sft": {"lora": {"target_experts": False, "target_modules": ["q_proj", "w1"]}}}
    (project / "paths.yaml").write_text(yaml.safe_dump(paths))
    proc = snakemake(project, "-n", "--configfile", FAMILIES_CONFIG, "paths.yaml", "--replace-workflow-config", check=False)
    assert proc.returncode != 0
    assert "config key 'variants.mixtral.stages.sft.lora.target_modules[1]': module 'w1' does not exist in" in proc.stderr + proc.stdout
    assert not (project / "results").exists()


def test_the_output_layer_of_a_tied_model_can_be_trained_in_full(family_model):
    """Qwen3's checkpoint has no lm_head tensor (tied to the embeddings); the module exists."""
    from tuneflow.models import check_stage_against_model

    path = family_model("qwen3")
    st = {"finetuning": "lora", "lora": lora(modules_to_save=["embed_tokens", "lm_head"]), "training": {"max_length": 64}}
    check_stage_against_model(st, "sft", path, read_config(path), "stages.sft")


# -- special tokens ------------------------------------------------------------------------------


def test_a_tokenizer_without_pad_gets_an_existing_token_and_keeps_its_vocabulary(real_tokenizer):
    from transformers import AutoTokenizer

    from tuneflow.models import load_tokenizer
    from tuneflow.special_tokens import pad_choice

    chosen = {}
    for name in ("llama2", "mistral", "llama3_1", "qwen3"):
        size = len(AutoTokenizer.from_pretrained(real_tokenizer(name)))
        tok = load_tokenizer(real_tokenizer(name), {})
        assert len(tok) == size and tok.pad_token_id != tok.eos_token_id
        chosen[name] = (pad_choice(tok)["token"], pad_choice(tok)["source"].split(":")[0])
    assert chosen == {"llama2": ("<unk>", "chosen by tuneflow"), "mistral": ("<unk>", "chosen by tuneflow"),
                      "llama3_1": ("<|reserved_special_token_0|>", "chosen by tuneflow"),
                      "qwen3": ("<|endoftext|>", "the tokenizer's own")}


def test_pt_ends_each_document_with_the_document_end_token_not_the_chat_eos(real_tokenizer):
    from tuneflow.models import load_tokenizer
    from tuneflow.tokenize import tokenize_pt

    for name, end in (("llama2", "</s>"), ("mistral", "</s>"), ("llama3_1", "<|end_of_text|>"), ("qwen3", "<|endoftext|>")):
        tok = load_tokenizer(real_tokenizer(name), {})
        rows, _ = tokenize_pt([{"text": "One document."}, {"text": "Another one."}], tok, {"max_length": 64})
        ids = rows[0]["input_ids"]
        assert tok.convert_ids_to_tokens(ids).count(end) == 2 and ids[-1] == tok.convert_tokens_to_ids(end), name
        assert name in ("llama2", "mistral") or tok.eos_token_id not in ids  # Llama-3.1's and Qwen3's EOS end a chat turn


# -- the workflow, every family ------------------------------------------------------------------


def families_paths(family_model) -> dict:
    """The overlay that points the default variant (Llama-2) and each family's variant at its model."""
    return {"base_model": {"path": str(family_model("llama2"))},
            "variants": {n: {"base_model": {"path": str(family_model(n))}} for n in NAMES if n != "llama2"}}


@pytest.fixture(scope="module")
def families_run(family_model, tmp_path_factory):
    project = make_workdir(tmp_path_factory.mktemp("families") / "project")
    (project / "paths.yaml").write_text(yaml.safe_dump(families_paths(family_model)))
    snakemake(project, "--profile", "local", "--configfile", FAMILIES_CONFIG, "paths.yaml", "--replace-workflow-config")
    return project


def result(project, family, kind, *parts) -> Path:
    prefix = project / "results" if family == "llama2" else project / "results" / "variants" / family
    return prefix.joinpath(kind, *parts)


def base_dir(project, family) -> Path:
    paths = yaml.safe_load((project / "paths.yaml").read_text())
    return Path((paths if family == "llama2" else paths["variants"][family])["base_model"]["path"])


def info(project, family, stage) -> dict:
    return json.loads(result(project, family, "adapters", stage, "train_info.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("family", NAMES)
def test_every_family_trains_sft_and_dpo_with_lora_and_qlora_merges_and_is_evaluated(families_run, family):
    stages = {s: info(families_run, family, s) for s in ("sft", "dpo")}
    assert sorted(i["finetuning"] for i in stages.values()) == ["lora", "qlora"]
    for stage, i in stages.items():
        assert i["steps"] == 3 and i["quantized"] == ("4bit" if i["finetuning"] == "qlora" else None)
        check = json.loads(result(families_run, family, "merged", stage, "merge_check.json").read_text())
        assert check["saved_max_abs_diff"] <= check["tolerance"] and check["max_abs_diff"] <= check["tolerance"]
    for dataset, metric in (("alpaca", "rougeL"), ("sharegpt", "rougeL"), ("pairs", "preference_accuracy")):
        scores = json.loads(result(families_run, family, "eval", "dpo", f"{dataset}.json").read_text())
        assert metric in scores["metrics"] and scores["n"] == 4, (dataset, scores["n"])


@pytest.mark.slow
@pytest.mark.parametrize("family", NAMES)
def test_the_merged_model_loads_with_plain_transformers_and_generates(families_run, family):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = result(families_run, family, "merged", "dpo")
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    assert type(model).__name__ == read_config(base_dir(families_run, family))["architectures"][0]
    enc = tok("Reverse the word: cat", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4


@pytest.mark.slow
def test_a_tied_model_whose_embeddings_are_trained_is_merged_and_saved_still_tied(families_run):
    from safetensors.torch import load_file

    sft = info(families_run, "qwen3", "sft")
    assert sft["lora_targets"]["tied_embeddings"] and sft["lora_targets"]["ensure_weight_tying"]
    merged = result(families_run, "qwen3", "merged", "sft")
    assert read_config(merged)["tie_word_embeddings"] is True
    check = json.loads((merged / "merge_check.json").read_text())
    assert check["tied_embeddings"] is True and check["saved_max_abs_diff"] <= check["tolerance"]
    weights = load_file(str(merged / "model.safetensors"))
    assert "lm_head.weight" not in weights  # one matrix, shared
    base = load_file(str(base_dir(families_run, "qwen3") / "model.safetensors"))
    assert (weights["model.embed_tokens.weight"] - base["model.embed_tokens.weight"]).abs().max() > 0  # it did train


@pytest.mark.slow
def test_moe_experts_are_adapted_and_merged_when_asked_and_routers_never(families_run):
    from safetensors.torch import load_file

    sft = info(families_run, "mixtral", "sft")
    assert sft["world_size"] == 2 and sft["steps"] == 3
    assert sft["lora_targets"]["target_parameters"] == ["experts.down_proj", "experts.gate_up_proj"]
    dpo = info(families_run, "mixtral", "dpo")  # the default: experts not adapted
    assert dpo["lora_targets"]["target_parameters"] == [] and dpo["lora_targets"]["skipped"]["MoE experts"] == ["experts"]
    base = load_file(str(base_dir(families_run, "mixtral") / "model.safetensors"))
    merged = load_file(str(result(families_run, "mixtral", "merged", "sft", "model.safetensors")))
    changed = {k for k in base if (base[k] - merged[k]).abs().max() > 0}
    assert any(".experts." in k for k in changed) and any("self_attn.q_proj" in k for k in changed)
    assert not any(k.endswith("gate.weight") and "experts" not in k for k in changed)  # routers untouched
    assert not any("lm_head" in k or "embed_tokens" in k for k in changed)


@pytest.mark.slow
def test_pad_choice_is_recorded_and_saved_with_the_tokenizer(families_run):
    from transformers import AutoTokenizer

    pad = info(families_run, "llama3_1", "sft")["special_tokens"]["pad"]
    assert pad["token"] == "<|reserved_special_token_0|>" and pad["source"].startswith("chosen by tuneflow")
    saved = AutoTokenizer.from_pretrained(result(families_run, "llama3_1", "merged", "sft"))
    assert saved.pad_token == "<|reserved_special_token_0|>" and len(saved) == 128256
    assert info(families_run, "llama3_1", "sft")["special_tokens"]["document_end"] == "<|end_of_text|>"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama3_1", "qwen3"])
def test_large_vocabulary_evaluation_and_dpo_stay_within_bounded_memory(families_run, family):
    """128k / 152k vocabularies: evaluation scores log-probs in chunks of bounded size
    (eval.evaluate.LOGIT_BUDGET). Peak RSS measured here (rank 0, tiny width, so mostly the Python
    stack and the embeddings): DPO 0.8 GB, evaluation 0.7 GB (docs/benchmarks.md)."""
    dpo = info(families_run, family, "dpo")
    evals = [json.loads(result(families_run, family, "eval", "dpo", f"{d}.json").read_text())
             for d in ("alpaca", "sharegpt", "pairs")]
    assert dpo["peak_rss_mb"] < 2000, dpo["peak_rss_mb"]
    assert max(e["peak_rss_mb"] for e in evals) < 1500, [e["peak_rss_mb"] for e in evals]


@pytest.mark.slow
def test_qwen3_trains_multi_turn_data_with_its_own_template(families_run):
    """Each reply and its <|im_end|> carry loss; the empty <think></think> block belongs to the last
    reply (tests/test_loss_masks.py has the exact tokens); evaluation scores answers without it."""
    sft = info(families_run, "qwen3", "sft")
    assert sft["settings"]["chat_template"] == "tokenizer"
    sharegpt = next(Path(d) for d in sft["tokenized"] if "/sharegpt/" in d)
    seq = json.loads((families_run / sharegpt / "example.json").read_text())["sequences"]["conversation"]
    replies = [text for text, trained in seq["pieces"] if trained]
    assert len(replies) >= 2 and all(r.endswith("<|im_end|>") for r in replies)
    assert "<think>" not in "".join(replies[:-1]) and replies[-1].startswith("<think>\n\n</think>\n\n")
    predictions = result(families_run, "qwen3", "eval", "dpo", "sharegpt.predictions.jsonl").read_text()
    assert "<think>" not in predictions
