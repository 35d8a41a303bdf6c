"""Seed parity: each config/recipes preset tokenizes real records of ../shared/data with the real
tokenizer exactly as the recipe it replaces does, and states every hyperparameter of that recipe.

Tokenization only (no model): for every sampled record, tuneflow's row (tuneflow.tokenize, with the
preset's resolved settings) is compared with the row of an independent re-implementation of the
seed's own preprocessing (tests/seed_recipes.py). Each difference a preset's header lists is one
named function below that changes the seed's rows accordingly; after those, every row must be
equal, and the number of rows equal *before* them is printed (the closing note of issue 12 gives
the counts). The hyperparameter test reads each preset's header table.
"""

from __future__ import annotations

import functools
import re

import pytest
import yaml

import seed_recipes as seed
from conftest import REPO, SHARED, skip_or_fail
from tuneflow import config, models
from tuneflow.data.formats import CONVERTERS, Options, RecordError, with_default_system
from tuneflow.data.readers import SourceInfo, iter_records, resolve_paths
from tuneflow.plan import Plan
from tuneflow.tokenize import tokenize_split

RECIPES = REPO / "config" / "recipes"


def needs_shared():
    if not SHARED.exists():
        skip_or_fail(f"the presets read their data from ../shared/data, not found at {SHARED}")


@functools.lru_cache(maxsize=None)
def preset(name):
    return config.load(RECIPES / f"{name}.yaml")


def settings_of(name, stage):
    return Plan(preset(name)).tokenize_settings("default", stage)


def tokenizer_for(name, real_tokenizer, family):
    cfg = preset(name)
    return models.load_tokenizer(real_tokenizer(family), cfg["base_model"], cfg["chat_template"])


def raw_and_converted(name, dataset, every=1):
    """(raw record, canonical record or None when tuneflow's converter refuses it), every n-th
    record of the preset's dataset, raw as the seed reads it (the preset's column mapping applied)."""
    cs = Plan(preset(name)).convert_settings(dataset)
    convert = CONVERTERS[cs["format"]]
    opts = Options(cs["columns"], cs.get("tags") or {}, keep_linebreaks=cs["keep_linebreaks"])
    out = []
    for path in resolve_paths(str(REPO / cs["path"])):
        for raw in iter_records(path, SourceInfo(str(path)), plain_text=cs["format"] == "text",
                                keep_linebreaks=cs["keep_linebreaks"]):
            out.append(raw.value)
    pairs = []
    for i, raw in enumerate(out[::every]):
        try:
            rec = {"id": i, **with_default_system(convert(raw, opts), cs["system"])}
        except RecordError:
            rec = None
        if isinstance(raw, dict):
            raw = {k: raw.get(v, raw.get(k)) for k, v in cs["columns"].items()} | {k: v for k, v in raw.items() if k not in cs["columns"].values()}
        pairs.append((raw, rec))
    return pairs


def tuneflow_rows(records, tokenizer, settings):
    rows, stats = tokenize_split([r for r in records if r is not None], tokenizer, settings)
    return {r["id"]: r for r in rows}, stats


def compare(name, seed_rows, ours, adjust=()):
    """seed_rows: id -> row (None: the seed drops the record); ours: id -> row. Returns (raw matches,
    total); asserts every row equal once the preset's listed differences (`adjust`) are applied."""
    raw_equal = sum(1 for i, s in seed_rows.items() if s == ours.get(i))
    adjusted = dict(seed_rows)
    for fix in adjust:
        adjusted = {i: fix(i, s) for i, s in adjusted.items()}
    bad = [i for i, s in adjusted.items() if s != ours.get(i)]
    print(f"\n[parity] {name}: {raw_equal} of {len(seed_rows)} records identical to the seed; "
          f"{len(seed_rows) - len(bad)} after the listed differences")
    assert not bad, f"{name}: {len(bad)} records differ from the seed beyond the listed differences, e.g. ids {bad[:5]}"
    return raw_equal, len(seed_rows)


def sft_pair(row):
    return None if row is None else {"input_ids": list(row[0]), "labels": list(row[1])}


def ours_sft(rows):
    return {i: {"input_ids": r["input_ids"], "labels": r["labels"]} for i, r in rows.items()}


# -- listed differences (each preset's header says why) -------------------------------------------

def drop_rows_without_labels(_, row):
    """tuneflow drops a row with no trained token left; the seed keeps it."""
    return None if row is not None and all(x == -100 for x in row["labels"]) else row


def whitespace_input_not_appended(pairs, rebuild):
    """tuneflow's alpaca converter ignores an input that is only whitespace; the seed appends it."""
    ws = {rec["id"]: raw for raw, rec in pairs if rec is not None and isinstance(raw.get("input"), str)
          and raw["input"] and not raw["input"].strip()}
    return lambda i, row: rebuild({**ws[i], "input": ""}) if i in ws else row


def not_converted(pairs):
    """Records tuneflow's converter refuses (empty output, ...; counted in the manifest)."""
    refused = {i for i, (_, rec) in enumerate(pairs) if rec is None}
    return lambda i, row: None if i in refused else row


# -- the five presets -------------------------------------------------------------------------------

@pytest.mark.parametrize("every", [128])
def test_chinese_llama_alpaca2_tokenizes_as_build_dataset_py(real_tokenizer, every):
    needs_shared()
    name = "chinese_llama_alpaca2_sft"
    tok = tokenizer_for(name, real_tokenizer, "llama2")
    settings = settings_of(name, "sft")
    pairs = raw_and_converted(name, "chinese_alpaca", every)

    def build(raw):
        return sft_pair(seed.cla2_sft(raw, tok, settings["max_length"]))

    seed_rows = {i: build(raw) for i, (raw, _) in enumerate(pairs)}
    ours, _ = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    compare(name, seed_rows, ours_sft(ours),
            [not_converted(pairs), whitespace_input_not_appended(pairs, build), drop_rows_without_labels])


def test_llama_factory_tokenizes_as_its_2023_default_template(real_tokenizer):
    needs_shared()
    name = "llama_factory_sft"
    tok = tokenizer_for(name, real_tokenizer, "llama2")
    settings = settings_of(name, "sft")
    t = settings["truncation"]
    pairs = raw_and_converted(name, "alpaca_en_demo")

    def build(raw):
        return sft_pair(seed.llama_factory_sft(raw, tok, settings["chat_template"], t["max_source_length"],
                                               t["max_target_length"]))

    seed_rows = {i: build(raw) for i, (raw, _) in enumerate(pairs)}
    ours, _ = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    compare(name, seed_rows, ours_sft(ours), [not_converted(pairs), whitespace_input_not_appended(pairs, build)])


def test_llms_train_tokenizes_as_chatglm_tokenize(real_tokenizer):
    needs_shared()
    name = "llms_train_promptcblue"
    tok = tokenizer_for(name, real_tokenizer, "llama2")
    settings = settings_of(name, "sft")
    t = settings["truncation"]
    pairs = raw_and_converted(name, "promptcblue_train", 24)
    seed_rows = {i: sft_pair(seed.llms_train_sft(raw, tok, t["max_source_length"], t["max_target_length"]))
                 for i, (raw, _) in enumerate(pairs)}

    def no_padding(_, row):
        """The seed pads to max_source + max_target with pad id 0 and trains on it; tuneflow does not."""
        if row is None:
            return row
        n = len(row["input_ids"])
        while n and row["input_ids"][n - 1] == seed.LLMS_TRAIN_LLAMA_IDS["pad_id"]:
            n -= 1
        return {"input_ids": row["input_ids"][:n], "labels": row["labels"][:n]}

    ours, _ = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    compare(name, seed_rows, ours_sft(ours), [not_converted(pairs), no_padding])


def test_peft_sft_tokenizes_as_its_chatml_packing(real_tokenizer):
    needs_shared()
    name = "peft_sft_qlora_zero3"
    tok = tokenizer_for(name, real_tokenizer, "llama2")
    seed_tok = seed.peft_tokenizer(real_tokenizer("llama2"))
    assert {t: tok.convert_tokens_to_ids(t) for t in seed.PEFT_SPECIAL_TOKENS["additional_special_tokens"]} == \
           {t: seed_tok.convert_tokens_to_ids(t) for t in seed.PEFT_SPECIAL_TOKENS["additional_special_tokens"]}
    assert (tok.eos_token, tok.pad_token, len(tok)) == (seed_tok.eos_token, seed_tok.pad_token, len(seed_tok))
    settings = settings_of(name, "sft")
    pairs = raw_and_converted(name, "sharegpt")
    seed_rows = {i: sft_pair(seed.peft_sft(rec["messages"], seed_tok)) if rec else None for i, (_, rec) in enumerate(pairs)}
    max_length = settings["max_length"]

    def whole_conversations_cut_at_max_length(_, row):
        """The seed runs a long conversation on into the next packed row; tuneflow cuts it."""
        return row if row is None else {k: v[:max_length] for k, v in row.items()}

    ours, stats = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    compare(name, seed_rows, ours_sft(ours), [whole_conversations_cut_at_max_length])
    longer = sum(1 for r in seed_rows.values() if r and len(r["input_ids"]) > max_length)
    assert stats["truncated"] == longer  # counted, not silent


def test_medicalgpt_pretraining_blocks_keep_linebreaks(real_tokenizer):
    needs_shared()
    name = "medicalgpt_chain"
    tok = tokenizer_for(name, real_tokenizer, "qwen3")
    settings = settings_of(name, "pt")
    path = REPO / preset(name)["datasets"]["medical_pt"]["path"]
    seed_blocks = seed.medicalgpt_pt(seed.medicalgpt_pt_lines(path.read_text(encoding="utf-8")), tok,
                                     settings["max_length"])
    pairs = raw_and_converted(name, "medical_pt")
    rows, _ = tokenize_split([rec for _, rec in pairs], tok, settings)
    compare(f"{name} (pt blocks)", dict(enumerate(seed_blocks)), {i: r["input_ids"] for i, r in enumerate(rows)})


def test_medicalgpt_sft_tokenizes_as_supervised_finetuning_py(real_tokenizer):
    needs_shared()
    name = "medicalgpt_chain"
    tok = tokenizer_for(name, real_tokenizer, "qwen3")
    settings = settings_of(name, "sft")
    pairs = raw_and_converted(name, "medical_sft")
    seed_rows = {i: sft_pair(seed.medicalgpt_sft(raw, tok, settings["chat_template"], settings["max_length"]))
                 for i, (raw, _) in enumerate(pairs)}
    ours, _ = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    compare(f"{name} (sft)", seed_rows, ours_sft(ours), [not_converted(pairs)])


def test_medicalgpt_sft_truncation_shares_the_length_as_the_seed_does(real_tokenizer):
    """The same records at a length that cuts most of them (the preset's 4096 cuts none)."""
    needs_shared()
    name = "medicalgpt_chain"
    tok = tokenizer_for(name, real_tokenizer, "qwen3")
    settings = {**settings_of(name, "sft"), "max_length": 96}
    pairs = raw_and_converted(name, "medical_sft", 4)
    seed_rows = {i: sft_pair(seed.medicalgpt_sft(raw, tok, settings["chat_template"], 96)) for i, (raw, _) in enumerate(pairs)}
    ours, stats = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    assert stats["truncated"] > len(pairs) // 2
    compare(f"{name} (sft at 96 tokens)", seed_rows, ours_sft(ours), [not_converted(pairs)])


def test_medicalgpt_dpo_pairs_as_dpo_training_py(real_tokenizer):
    needs_shared()
    name = "medicalgpt_chain"
    tok = tokenizer_for(name, real_tokenizer, "qwen3")
    settings = settings_of(name, "dpo")
    pairs = raw_and_converted(name, "medical_dpo")

    def build(raw, wrap_system=False):
        if wrap_system:
            raw = {**raw, "conversations": [{"from": "system", "value": "<|im_start|>system\n" + t["value"] + "<|im_end|>\n"}
                                            if t["from"] == "system" else t for t in raw["conversations"]]}
        out = seed.medicalgpt_dpo(raw, tok, settings["chat_template"], 1024, settings["max_length"] - 1024)
        return out and {"prompt_ids": out[0], "chosen_ids": out[1], "rejected_ids": out[2]}

    seed_rows = {i: build(raw) for i, (raw, _) in enumerate(pairs)}
    ours, _ = tuneflow_rows([rec for _, rec in pairs], tok, settings)
    ours = {i: {k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i, r in ours.items()}

    def no_eos_as_bos(_, row):
        """(1) the seed's prompt starts with EOS as BOS (TRL + MedicalGPT's Qwen fix)."""
        return row and {**row, "prompt_ids": row["prompt_ids"][1:]}

    with_system = {i for i, (raw, _) in enumerate(pairs) if any(t["from"] == "system" for t in raw["conversations"])}

    def system_wrapped(i, row):
        """(2) a dataset's system prompt in the <|im_start|>system ... block, as the default is."""
        return no_eos_as_bos(i, build(pairs[i][0], wrap_system=True)) if i in with_system and row else row

    char_filtered = {i for i, row in seed_rows.items() if row is None and pairs[i][1] is not None}

    def length_filter_in_tokens(i, row):
        """(3) the seed drops pairs over 1,536 characters; tuneflow keeps them (counted when cut)."""
        return ours.get(i) if i in char_filtered else row

    compare(f"{name} (dpo)", seed_rows, ours, [no_eos_as_bos, system_wrapped, length_filter_in_tokens])
    print(f"[parity] {name} (dpo): {len(with_system)} pairs with a system prompt, {len(char_filtered)} dropped by the "
          "seed's character filter")
    assert 0 < len(with_system) < len(pairs)


# -- hyperparameters ------------------------------------------------------------------------------

ROW = re.compile(r"^#\s*\|(.+)\|\s*$")
# What every preset's table must state for each enabled stage (the list).
REQUIRED = ("training.learning_rate", "training.lr_scheduler", "training.warmup_steps", "training.weight_decay",
            "training.per_device_batch_size", "training.gradient_accumulation_steps", "resources.gpus_per_node",
            "resources.nodes", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.modules_to_save",
            "training.max_length", "training.precision", "deepspeed", "finetuning", "training.gradient_checkpointing",
            "training.logging_steps", "training.save_steps", "training.save_total_limit", "training.eval_steps",
            "training.max_grad_norm", "training.optim", "training.max_steps")


def header_table(path):
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if not m:
            continue
        cells = [c.strip() for c in m.group(1).split("|")]
        if cells[0] in ("key", "---"):
            continue
        assert len(cells) == 4, f"{path.name}: a table row needs key | seed | used | why: {line}"
        rows.append(cells)
    return rows


def cell(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def number_or(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def lookup(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def same(a, b):
    a, b = number_or(a), number_or(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) < 1e-12
    return a == b


def global_batch(cfg, stage):
    from tuneflow.cluster import processes_per_node

    st = cfg["stages"][stage]
    t, r = st["training"], st["resources"]
    return t["per_device_batch_size"] * t["gradient_accumulation_steps"] * r["nodes"] * processes_per_node(r)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_preset_header_lists_every_seed_hyperparameter_with_the_value_used(recipe):
    cfg = config.load(RECIPES / f"{recipe}.yaml")
    rows = header_table(RECIPES / f"{recipe}.yaml")
    assert rows, f"{recipe}: no hyperparameter table in the header"
    listed = set()
    for key, seed_value, used, why in rows:
        seed_v, used_v = cell(seed_value), cell(used)
        if key.startswith("global batch"):
            stage = key[key.index("(") + 1:key.index(")")]
            assert used_v == global_batch(cfg, stage), f"{recipe}: {key} is {global_batch(cfg, stage)}, the table says {used}"
            assert "GPU" in why or "process" in why, f"{recipe}: {key} must say the GPU count it assumes"
            listed.add(key)
        elif not key.startswith("-"):
            assert same(lookup(cfg, key), used_v), f"{recipe}: {key} is {lookup(cfg, key)!r}, the table says {used}"
            listed.add(key)
        if not same(seed_v, used_v):
            assert why, f"{recipe}: {key} differs from the seed ({seed_value} -> {used}) without a reason"
    for stage in Plan(cfg).stages():
        missing = [f"stages.{stage}.{k}" for k in REQUIRED if f"stages.{stage}.{k}" not in listed]
        if cfg["stages"][stage]["finetuning"] == "full":
            missing = [m for m in missing if ".lora." not in m]
        assert not missing, f"{recipe}: the table does not state {missing}"
        assert f"global batch ({stage})" in listed, f"{recipe}: the table does not state the global batch of {stage}"
        t = cfg["stages"][stage]["training"]
        conditional = {"training.num_epochs": t["max_steps"] <= 0, "training.warmup_ratio": t["warmup_steps"] is None}
        for key, needed in conditional.items():
            if needed:
                assert f"stages.{stage}.{key}" in listed, f"{recipe}: the table does not state stages.{stage}.{key}"
