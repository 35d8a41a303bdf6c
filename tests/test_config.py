"""Config schema, defaults, friendly errors, variants, and the plan of outputs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tuneflow import config
from tuneflow.errors import ConfigError
from tuneflow.plan import Plan

REPO = Path(__file__).resolve().parents[1]


def raw_default():
    return config.load_yaml(REPO / "config" / "config.yaml")


def resolve_with(**overrides):
    return config.resolve(config.deep_merge(raw_default(), overrides))


def test_default_config_resolves_with_defaults_filled():
    cfg = config.load()
    sft = cfg["stages"]["sft"]
    assert sft["training"]["gradient_accumulation_steps"] == 1  # schema default
    lr = raw_default()["stages"]["sft"]["training"]["learning_rate"]
    assert sft["training"]["learning_rate"] == lr != 0.0002  # config.yaml wins over the schema's default
    assert cfg["_variants"]["default"]["stages"]["dpo"]["beta"] == 0.1
    assert config.enabled_stages(cfg) == ["pt", "sft", "dpo", "rm", "rl", "kto"]
    assert cfg["stages"]["rl"]["rewards"][1] == {"verifiable": "promptcblue", "weight": 1.0, "datasets": None}


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"'stages\.sft\.training\.learnig_rate': unknown key; did you mean 'stages\.sft\.training\.learning_rate'\?"):
        resolve_with(stages={"sft": {"training": {"learnig_rate": 1e-4}}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"'stages\.sft\.lora\.r': 'eight' is not of type 'integer'"):
        resolve_with(stages={"sft": {"lora": {"r": "eight"}}})


def test_negative_learning_rate():
    with pytest.raises(ConfigError, match=r"'stages\.pt\.training\.learning_rate': -0\.001 is less than or equal to the minimum of 0"):
        resolve_with(stages={"pt": {"training": {"learning_rate": -0.001}}})


def test_quantization_with_full_finetuning():
    with pytest.raises(ConfigError, match=r"'stages\.sft\.quantization': quantization is only used with finetuning 'qlora', not 'full'"):
        resolve_with(stages={"sft": {"finetuning": "full", "quantization": {"bits": 4}}})


def test_stage_enabled_without_dataset():
    raw = raw_default()
    raw["datasets"].pop("demo_pairs")
    with pytest.raises(ConfigError, match=r"'stages\.dpo\.enabled': stage 'dpo' is enabled but no dataset lists 'dpo'"):
        config.resolve(raw)


def test_dataset_format_must_fit_stage():
    with pytest.raises(ConfigError, match=r"'datasets\.demo_text\.stages': format 'text' cannot feed stage 'dpo'"):
        resolve_with(datasets={"demo_text": {"stages": ["pt", "dpo"]}})
    with pytest.raises(ConfigError, match=r"'datasets\.demo_pairs\.stages': format 'preference' cannot feed stage 'rl'"):
        resolve_with(datasets={"demo_pairs": {"stages": ["rl"]}})


def test_variant_overriding_nonexistent_key():
    with pytest.raises(ConfigError, match=r"'variants\.r8\.stages\.sft\.lora\.rank': variant overrides a key that does not exist; did you mean 'variants\.r8\.stages\.sft\.lora\.r'\?"):
        resolve_with(variants={"r8": {"stages": {"sft": {"lora": {"rank": 8}}}}})


def test_variant_cannot_override_datasets():
    with pytest.raises(ConfigError, match=r"'variants\.more\.datasets': variant overrides a key that does not exist"):
        resolve_with(variants={"more": {"datasets": {}}})


def test_variant_values_are_validated():
    with pytest.raises(ConfigError, match=r"'variants\.bad\.stages\.dpo\.beta': 0 is less than or equal to the minimum of 0"):
        resolve_with(variants={"bad": {"stages": {"dpo": {"beta": 0}}}})


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "x..y", ".hidden"])
def test_names_used_in_paths_are_refused(name):
    with pytest.raises(ConfigError, match=re.escape(f"name {name!r} cannot be used in result paths")):
        resolve_with(variants={name: {}})
    raw = raw_default()
    raw["datasets"][name] = copy.deepcopy(raw["datasets"]["demo_text"])
    with pytest.raises(ConfigError, match="cannot be used in result paths"):
        config.resolve(raw)


def test_unknown_deepspeed_preset():
    with pytest.raises(ConfigError, match=r"'stages\.sft\.deepspeed': 'zero4' is neither a preset"):
        resolve_with(stages={"sft": {"deepspeed": "zero4"}})


def test_evaluation_dataset_must_exist():
    with pytest.raises(ConfigError, match=r"evaluation\.datasets\[0\]': unknown dataset 'demo_alpca'; did you mean 'demo_alpaca'"):
        resolve_with(evaluation={"datasets": ["demo_alpca"]})


# -- plan: which outputs a variant reuses --------------------------------------------------------


def plan_with(variants):
    return Plan(resolve_with(variants=variants))


def test_evaluation_models_chooses_which_models_are_evaluated():
    plan = Plan(resolve_with(evaluation={"models": ["dpo"]}, variants={"all": {"evaluation": {"models": None}}}))
    assert [j[1] for j in plan.eval_jobs() if j[0] == "default"] == ["dpo"] * 5
    assert {j[1] for j in plan.eval_jobs() if j[0] == "all"} == {"base", "pt", "sft", "dpo", "rm", "rl", "kto"}
    with pytest.raises(ConfigError, match=r"'evaluation\.models\[1\]': 'pt' is neither 'base' nor an enabled stage "
                                          r"\(models here: base, sft, dpo, rm, rl, kto\)"):
        resolve_with(evaluation={"models": ["base", "pt"]}, stages={"pt": {"enabled": False}})


def test_variant_changing_only_dpo_beta_reuses_pt_and_sft():
    plan = plan_with({"beta05": {"stages": {"dpo": {"beta": 0.5}}}})
    assert plan.adapter_dir("beta05", "pt") == "results/adapters/pt"
    assert plan.adapter_dir("beta05", "sft") == "results/adapters/sft"
    assert plan.adapter_dir("beta05", "dpo") == "results/variants/beta05/adapters/dpo"
    # DPO of the variant starts from (and is scored against) the default merged SFT model.
    assert plan.stage_base_spec("beta05", "dpo")["path"] == "results/merged/sft"
    assert plan.eval_dir("beta05", "sft") == "results/eval/sft"
    assert plan.eval_dir("beta05", "dpo") == "results/variants/beta05/eval/dpo"


def test_variant_changing_sft_reruns_sft_and_dpo_but_not_pt():
    plan = plan_with({"r8": {"stages": {"sft": {"training": {"learning_rate": 0.0005}}}}})
    assert {s: plan.adapter_dir("r8", s) for s in ("pt", "sft", "dpo")} == {
        "pt": "results/adapters/pt", "sft": "results/variants/r8/adapters/sft", "dpo": "results/variants/r8/adapters/dpo"}
    assert plan.stage_base_spec("r8", "dpo")["path"] == "results/variants/r8/merged/sft"
    assert {m: plan.eval_dir("r8", m) for m in ("base", "pt")} == {"base": "results/eval/base", "pt": "results/eval/pt"}


def test_variant_with_another_base_model_reuses_nothing():
    plan = plan_with({"other": {"base_model": {"path": "/models/other"}}})
    for stage in ("pt", "sft", "dpo"):
        assert plan.adapter_dir("other", stage).startswith("results/variants/other/")
    assert plan.eval_dir("other", "base") == "results/variants/other/eval/base"
    keys = {plan.tokenize_key("default", s) for s in ("pt", "sft", "dpo")}
    assert not keys & {plan.tokenize_key("other", s) for s in ("pt", "sft", "dpo")}


def test_tokenization_key_ignores_learning_rate_but_not_max_length():
    base = Plan(resolve_with())
    lr = Plan(resolve_with(stages={"sft": {"training": {"learning_rate": 0.1}}}))
    length = Plan(resolve_with(stages={"sft": {"training": {"max_length": 128}}}))
    assert base.tokenize_key("default", "sft") == lr.tokenize_key("default", "sft")
    assert base.tokenize_key("default", "sft") != length.tokenize_key("default", "sft")


def test_stage_settings_hold_only_what_the_stage_uses():
    plan = Plan(resolve_with())
    sft = plan.stage_settings("default", "sft")
    assert "quantization" not in sft  # lora: unused quantization settings must not trigger reruns
    assert "resources" not in sft and "enabled" not in sft
    assert sft["base_model"]["path"] == "results/merged/pt"
    pt = plan.stage_settings("default", "pt")
    assert "lora" not in pt  # full fine-tuning
    assert pt["base_model"]["path"] == "results/models/tiny"


def test_eval_settings_isolate_generation_and_dpo_only_keys():
    plan = Plan(resolve_with())
    assert "beta" not in plan.eval_settings("default", "sft")
    assert plan.eval_settings("default", "dpo")["reference"]["path"] == "results/merged/sft"
    changed = Plan(resolve_with(stages={"dpo": {"beta": 0.3}}))
    assert changed.eval_settings("default", "sft") == plan.eval_settings("default", "sft")


# -- the RLHF branches -----------------------------------------------------------------------------


def test_rl_rewards_read_the_reward_model_stage_and_follow_its_variant():
    plan = plan_with({"rm_lr": {"stages": {"rm": {"training": {"learning_rate": 0.0001}}}},
                      "kl": {"stages": {"rl": {"kl_coef": 0.5}}}})
    rewards = plan.stage_settings("default", "rl")["rewards"]
    assert rewards[0] == {"reward_model": "results/merged/rm", "stage": "rm", "weight": 1.0, "datasets": ["demo_alpaca"]}
    assert plan.reward_inputs("default", "rl") == ["results/merged/rm"]
    # a variant that retrains the reward model retrains RL with it; one that changes RL only reuses the RM
    assert plan.stage_settings("rm_lr", "rl")["rewards"][0]["reward_model"] == "results/variants/rm_lr/merged/rm"
    assert plan.adapter_dir("rm_lr", "rl") == "results/variants/rm_lr/adapters/rl"
    assert plan.adapter_dir("rm_lr", "kto") == "results/adapters/kto"
    assert plan.adapter_dir("kl", "rl") == "results/variants/kl/adapters/rl" and plan.adapter_dir("kl", "rm") == "results/adapters/rm"


def test_the_reward_model_is_evaluated_on_pairs_and_the_rl_reward_scores_rl_and_its_siblings():
    plan = Plan(resolve_with())
    rm = plan.eval_settings("default", "rm")
    assert rm["model_task"] == "sequence_classification" and rm["datasets"] == {"demo_pairs": "preference"}
    assert "max_new_tokens" not in rm and [j for j in plan.eval_jobs() if j[1] == "rm"] == \
        [("default", "rm", "demo_pairs", "results/eval/rm/demo_pairs.json")]
    scored = {m for m in plan.eval_models("default") if "rewards" in plan.eval_settings("default", m)}
    assert scored == {"sft", "dpo", "rl", "kto"}
    assert plan.eval_settings("default", "rl")["rewards"]["datasets"] == ["demo_alpaca", "demo_promptcblue"]
    assert plan.merge_settings("default", "rm")["task"] == "sequence_classification"
    assert "task" not in plan.merge_settings("default", "sft")  # unchanged for the causal stages: nothing reruns


@pytest.mark.parametrize("rewards, key, message", [
    ([{"reward_model": "rm", "verifiable": "exact_match"}], "stages.rl.rewards[0]", "exactly one of"),
    ([{"weight": 2.0}], "stages.rl.rewards[0]", "exactly one of"),
    ([{"reward_model": "sft"}], "stages.rl.rewards[0].reward_model", "stage 'sft' is not a reward model"),
    ([{"verifiable": "exact_match", "datasets": ["demo_pairs"]}], "stages.rl.rewards[0].datasets[0]",
     "'demo_pairs' does not feed stage 'rl'"),
    ([{"function": "no_such_module.fn"}], "stages.rl.rewards[0].function", "module file no_such_module.py"),
], ids=["two-kinds", "no-kind", "not-a-reward-model", "dataset-not-fed", "missing-module"])
def test_reward_terms_are_checked_naming_the_key(rewards, key, message):
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}': ") + ".*" + re.escape(message)):
        resolve_with(stages={"rl": {"rewards": rewards, "trust_reward_code": True}})


def test_promptcblue_reward_needs_promptcblue_prompts():
    with pytest.raises(ConfigError, match=re.escape("'stages.rl.rewards[1].verifiable': promptcblue scores PromptCBLUE "
                                                    "records, but no dataset with format promptcblue feeds 'rl'")):
        resolve_with(datasets={"demo_promptcblue": {"stages": ["sft"]}})


def test_schema_file_is_valid_yaml_and_snakemake_compatible():
    import jsonschema

    with open(REPO / "workflow" / "schemas" / "config.schema.yaml") as f:
        schema = yaml.safe_load(f)
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_zero_keys_tuneflow_accepts_are_those_deepspeed_accepts():
    """Planning refuses a zero_optimization key DeepSpeed does not know (it forbids extra keys): the
    list planning uses, without importing DeepSpeed, is DeepSpeed's own (fields and aliases)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from tuneflow.deepspeed_config import ZERO_KEYS

    fields = DeepSpeedZeroConfig.model_fields
    assert DeepSpeedZeroConfig.model_config["extra"] == "forbid"
    assert ZERO_KEYS == set(fields) | {f.alias for f in fields.values() if f.alias}


def test_the_deepspeed_presets_pass_the_planning_checks():
    from tuneflow.deepspeed_config import PRESETS, check_deepspeed_config

    training = {"per_device_batch_size": 4, "gradient_accumulation_steps": 2}
    for preset in PRESETS:
        check_deepspeed_config(preset, "stages.sft.deepspeed", training, world_size=8)


def test_every_builtin_template_is_a_choice_of_the_schema():
    from tuneflow.templates import NAMES

    assert config.schema()["properties"]["chat_template"]["enum"] == list(NAMES)


def _eval_dev(**dev):
    raw = raw_default()
    raw["datasets"]["dev"] = {"path": "resources/demo/sft_alpaca.json", "format": "alpaca", "stages": ["sft"], **dev}
    raw["evaluation"] = {**raw.get("evaluation", {}), "datasets": ["dev"]}
    return raw


def test_a_dataset_named_for_evaluation_cannot_also_train_unless_said_so(tmp_path):
    with pytest.raises(ConfigError, match=r"'evaluation\.datasets\[0\]': dataset 'dev' is evaluated but also trains "
                                          r"stage 'sft'.*held_out: true.*train_and_evaluate: true"):
        config.resolve(_eval_dev())
    assert config.resolve(_eval_dev(train_and_evaluate=True))
    dev = tmp_path / "dev.json"
    dev.write_text('[{"instruction": "q", "output": "a"}]')
    assert config.resolve(_eval_dev(held_out=True, path=str(dev)))


def test_a_held_out_dataset_may_not_read_training_files_unless_said_so(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"'datasets\.dev\.path': the held_out dataset 'dev' reads .*sft_alpaca\.json, "
                                          r"which dataset 'demo_alpaca' trains on.*overlaps_training: true"):
        config.resolve(_eval_dev(held_out=True))
    assert config.resolve(_eval_dev(held_out=True, overlaps_training=True))


def test_held_out_datasets_alone_do_not_feed_a_stage():
    raw = raw_default()
    raw["datasets"]["demo_pairs"]["held_out"] = True
    with pytest.raises(ConfigError, match=r"stage 'dpo' is enabled but no dataset lists 'dpo' in its stages \(only held_out"):
        config.resolve(raw)


def test_turn_truncation_needs_both_limits_and_keep_linebreaks_only_text():
    with pytest.raises(ConfigError, match=r"'stages\.sft\.truncation\.max_target_length': the 'turn' strategy needs"):
        resolve_with(stages={"sft": {"truncation": {"strategy": "turn", "max_source_length": 512}}})
    with pytest.raises(ConfigError, match=r"'datasets\.demo_alpaca\.keep_linebreaks': only text datasets"):
        resolve_with(datasets={"demo_alpaca": {"keep_linebreaks": True}})


def test_template_settings_and_truncation_are_part_of_the_tokenized_data_key():
    base = Plan(config.load())
    key = base.tokenize_key("default", "sft")
    assert Plan(resolve_with(template={"system": "Be brief."})).tokenize_key("default", "sft") != key
    assert Plan(resolve_with(stages={"sft": {"truncation": {"strategy": "proportional"}}})).tokenize_key("default", "sft") != key
    assert Plan(resolve_with(stages={"pt": {"eos_per_document": False}})).tokenize_key("default", "pt") != \
        base.tokenize_key("default", "pt")
    assert Plan(resolve_with(stages={"sft": {"training": {"learning_rate": 0.1}}})).tokenize_key("default", "sft") == key
