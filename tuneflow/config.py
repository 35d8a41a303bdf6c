"""Config loading and validation against workflow/schemas/config.schema.yaml.

The schema is the single description of every key. This module adds what a JSON-schema validator
does not give a researcher: unknown keys named with the closest valid spelling, defaults filled in
nested objects, errors that name the dotted key, the variants merged over the defaults, the
checks that span several keys (a stage enabled without data, quantization without qlora, ...),
and the checks of the config files themselves that YAML readers skip (duplicate keys, alias
expansion, `3e-3` read as a string).
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
from pathlib import Path

import jsonschema
import yaml

from tuneflow import DEFAULT_VARIANT, deepspeed_config
from tuneflow.cluster import processes_per_node
from tuneflow.errors import ConfigError
from tuneflow.stages import SEQUENCE_CLASSIFICATION, STAGE_NAMES, STAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"
RESULTS = "results"
TINY_MODEL_DIR = "results/models/tiny"  # the embedded base model, built by the workflow
MAX_YAML_VALUES = 100_000  # a config file whose aliases expand to more values is refused (an alias bomb)


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _deref(node: dict) -> dict:
    """Follow local $ref pointers ("#/$defs/x")."""
    while isinstance(node, dict) and "$ref" in node:
        target = schema()
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


def _suggest(key, valid, path):
    key = str(key)
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if not close:  # "rank" for "r", "lr" for "learning_rate": a prefix is a good guess too
        close = [v for v in valid if key.startswith(v) or v.startswith(key)][:1]
    return f"; did you mean '{_join(path, close[0])}'?" if close else f"; valid keys here: {', '.join(sorted(valid))}"


def _walk_keys(instance, node, path, unknown):
    """Visit every key of `instance` against its schema `node`; call unknown(path, key, props) for
    a key the schema does not define there."""
    node = _deref(node)
    if isinstance(instance, list) and isinstance(node, dict) and isinstance(node.get("items"), dict):
        for i, item in enumerate(instance):
            _walk_keys(item, node["items"], f"{path}[{i}]", unknown)
        return
    if not isinstance(instance, dict) or not isinstance(node, dict):
        return
    props = node.get("properties", {})
    extra = node.get("additionalProperties", True)
    for key, value in instance.items():
        if key in props:
            _walk_keys(value, props[key], _join(path, key), unknown)
        elif isinstance(extra, dict):
            _walk_keys(value, extra, _join(path, key), unknown)
        elif extra is False:
            unknown(path, key, props)


def check_unknown_keys(instance, node=None, path=""):
    """Refuse keys the schema does not define, suggesting the closest valid one."""
    def refuse(where, key, valid):
        raise ConfigError(_join(where, key), f"unknown key{_suggest(key, valid, where)}")

    _walk_keys(instance, schema() if node is None else node, path, refuse)


def fill_defaults(instance, node=None):
    """Fill schema defaults in place, creating nested objects so their own defaults apply."""
    node = _deref(schema() if node is None else node)
    if isinstance(instance, list) and isinstance(node, dict) and isinstance(node.get("items"), dict):
        for item in instance:  # e.g. the weight of each RL reward term
            fill_defaults(item, node["items"])
        return instance
    if not isinstance(instance, dict) or not isinstance(node, dict):
        return instance
    for key, sub in node.get("properties", {}).items():
        sub = _deref(sub)
        if key not in instance:
            if "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and "properties" in sub:
                instance[key] = {}
            else:
                continue
        fill_defaults(instance[key], sub)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in node.get("properties", {}):
                fill_defaults(value, extra)
    return instance


NUMBER_TEXT = re.compile(r"^[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml11_number_hint(value, expected) -> str | None:
    """Why a number came through as a string: YAML 1.1 (PyYAML, hence Snakemake) reads `3e-3` or
    `1e5` as text; it wants a dot in the mantissa and a sign in the exponent (`3.0e-3`, `1.0e+5`)."""
    if not isinstance(value, str) or not NUMBER_TEXT.match(value.strip()):
        return None
    number = float(value.replace("_", ""))
    types = expected if isinstance(expected, list) else [expected]
    if "integer" in types and "number" not in types and number.is_integer():
        fix = str(int(number))
    else:
        mantissa, _, exponent = value.strip().lower().partition("e")
        mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
        fix = f"{mantissa}e{exponent if exponent[:1] in '+-' else '+' + exponent}" if exponent else mantissa
    return (f"{value!r} is read as a string, not a number: YAML 1.1 (which Snakemake's config reader follows) "
            f"takes exponent notation only with a dot and a signed exponent; write {fix}")


def _validate_schema(cfg):
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        key = ".".join(str(p) for p in err.absolute_path)
        hint = _yaml11_number_hint(err.instance, err.validator_value) if err.validator == "type" else None
        raise ConfigError(key, hint or err.message)


NAME_RE = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_name(name, key):
    """Dataset and variant names become path components: no separators, no '..'."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(key, f"name {name!r} cannot be used in result paths: use letters, digits, '_', '-' and '.', "
                               "without '/', '\\' or '..'")


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge `override` into a copy of `base` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_yaml_node(node, key, path, sizes) -> int:
    """Refuse duplicate keys (YAML keeps the last one silently) and count the values the node
    expands to with its aliases followed (each node counted once: linear in the file's size)."""
    if id(node) in sizes:
        return sizes[id(node)]
    size = 1
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            if name is not None and name != "<<":
                if name in seen:
                    raise ConfigError(_join(key, name), f"{path}, line {k.start_mark.line + 1}: duplicate key '{name}' "
                                                        f"(first at line {seen[name]}); YAML would keep only the last one "
                                                        "silently: remove one of them")
                seen[name] = k.start_mark.line + 1
            size += 1 + _check_yaml_node(v, _join(key, name if name is not None else "?"), path, sizes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _check_yaml_node(item, f"{key}[{i}]", path, sizes)
    sizes[id(node)] = size
    if size > MAX_YAML_VALUES:
        raise ConfigError(key, f"{path}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?); "
                               "a tuneflow config is far smaller: write the values out")
    return size


def _refuse_duplicate_json_keys(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise ConfigError(k, "duplicate key in a JSON config file; JSON readers keep only the last one: remove one")
        seen.add(k)
    return dict(pairs)


def check_config_file(path):
    """What Snakemake does not check when it reads a config file (JSON first, else YAML):
    duplicate keys, and YAML aliases expanding past MAX_YAML_VALUES values. Raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read config file {path}: {e}") from None
    try:
        json.loads(text, object_pairs_hook=_refuse_duplicate_json_keys)
        return
    except ConfigError as e:
        raise ConfigError(e.key, f"{path}: {e.problem}") from None
    except (ValueError, RecursionError):
        pass  # not JSON: YAML
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError("", f"{path}: YAML nested too deeply") from None
    if node is not None:
        _check_yaml_node(node, "", path, {})


def load_yaml(path) -> dict:
    check_config_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _check_variant_override(name, override):
    """A variant may only override keys that exist in the default config's schema."""
    def refuse(where, key, valid):
        raise ConfigError(_join(where, key), f"variant overrides a key that does not exist{_suggest(key, valid, where)}")

    _walk_keys(override, schema(), f"variants.{name}", refuse)


def _check_base_model_path(cfg, prefix, variant):
    """A workflow output as the base model would be built from the base model itself (a cycle):
    only the embedded model may come from results/ (and a variant may start from the default's
    outputs, which do not depend on it)."""
    path = os.path.normpath(cfg["base_model"]["path"])
    own = RESULTS if variant is None else f"{RESULTS}/variants/{variant}"
    if path != TINY_MODEL_DIR and (path == own or path.startswith(own + "/")):
        raise ConfigError(f"{prefix}base_model.path", f"'{cfg['base_model']['path']}' is an output of this workflow, built "
                          "from the base model itself, so the plan would be a cycle; to start from a model an earlier run "
                          f"produced, copy it out of {RESULTS}/ (e.g. cp -r {path} models/) and point "
                          f"{prefix}base_model.path there, or start from it in a variant")


def _resolve_datasets(cfg):
    """LLaMA-Factory registry entries (format: llamafactory) become ordinary datasets; a folder
    holding a registry given as another format is refused (it is not a data file)."""
    from tuneflow.data import llamafactory

    for name, ds in cfg["datasets"].items():
        key = f"datasets.{name}"
        if ds["format"] == "llamafactory":
            text_only = all(STAGES[s].formats == {"text"} for s in ds["stages"] if s in STAGES)
            cfg["datasets"][name] = llamafactory.resolve(ds, key, text_only_stages=text_only)
        elif Path(ds["path"]).is_dir() and llamafactory.registry_in(ds["path"]):
            raise ConfigError(f"{key}.path", f"'{ds['path']}' holds LLaMA-Factory's {llamafactory.REGISTRY}: set "
                                             f"{key}.format: llamafactory and {key}.dataset to the entry to read")
        elif ds["dataset"]:
            raise ConfigError(f"{key}.dataset", "only format llamafactory reads a registry entry")


def _semantic_checks(cfg, where=""):
    prefix = f"{where}." if where else ""
    _check_base_model_path(cfg, prefix, where.split(".", 1)[1] if where else None)
    datasets = cfg["datasets"]
    for name, ds in datasets.items():
        for i, stage in enumerate(ds["stages"]):
            if stage not in STAGES:
                raise ConfigError(f"datasets.{name}.stages[{i}]", f"unknown stage '{stage}'{_suggest(stage, STAGES, '')}")
            if ds["format"] not in STAGES[stage].formats:
                raise ConfigError(
                    f"datasets.{name}.stages",
                    f"format '{ds['format']}'" + (f" (LLaMA-Factory entry '{ds['llamafactory']['dataset']}')"
                                                  if ds.get("llamafactory") else "")
                    + f" cannot feed stage '{stage}' (it takes: {', '.join(sorted(STAGES[stage].formats))})",
                )
        if not ds["stages"] and not ds["held_out"]:
            raise ConfigError(f"datasets.{name}.stages", "a dataset that is not held_out must feed at least one stage")
        if ds["keep_linebreaks"] and ds["format"] != "text":
            raise ConfigError(f"datasets.{name}.keep_linebreaks", f"only text datasets have line breaks to keep, "
                              f"not format '{ds['format']}'")
    for stage in STAGE_NAMES:
        st = cfg["stages"][stage]
        key = f"{prefix}stages.{stage}"
        if st["enabled"] and not training_datasets(cfg, stage):
            only_held_out = " (only held_out ones, which are validation data)" if stage_datasets(cfg, stage) else ""
            raise ConfigError(f"{key}.enabled", f"stage '{stage}' is enabled but no dataset lists '{stage}' in its "
                                                f"stages{only_held_out}")
        if st["finetuning"] != "qlora" and "quantization" in cfg.get("_explicit", {}).get(stage, ()):
            raise ConfigError(
                f"{key}.quantization",
                f"quantization is only used with finetuning 'qlora', not '{st['finetuning']}' "
                "(full fine-tuning cannot train quantized weights)",
            )
        ds = st["deepspeed"]
        if ds and ds not in deepspeed_config.PRESETS and not Path(ds).is_file():
            raise ConfigError(f"{key}.deepspeed", f"'{ds}' is neither a preset ({', '.join(deepspeed_config.PRESETS)}) nor an existing JSON file")
        if ds and st["enabled"]:
            world = st["resources"]["nodes"] * processes_per_node(st["resources"])
            deepspeed_config.check_deepspeed_config(ds, f"{key}.deepspeed", st["training"], world)
        if st["lora"]["use_dora"] and st["finetuning"] == "qlora" and st["quantization"]["bits"] == 8:
            raise ConfigError(f"{key}.lora.use_dora", "DoRA is not supported on 8-bit quantized weights")
        trunc = st.get("truncation")
        if trunc and trunc["strategy"] == "turn":
            for k in ("max_source_length", "max_target_length"):
                if trunc[k] is None:
                    raise ConfigError(f"{key}.truncation.{k}", "the 'turn' strategy needs max_source_length and "
                                                               "max_target_length")
    for i, model in enumerate(cfg["evaluation"]["models"] or []):
        if model != "base" and not (model in STAGES and cfg["stages"][model]["enabled"]):
            enabled = ["base", *(s for s in STAGE_NAMES if cfg["stages"][s]["enabled"])]
            raise ConfigError(f"{prefix}evaluation.models[{i}]", f"'{model}' is neither 'base' nor an enabled stage "
                              f"(models here: {', '.join(enabled)})")
    for stage in STAGE_NAMES:
        if STAGES[stage].rewards_key and cfg["stages"][stage]["enabled"]:
            _check_rewards(cfg, stage, f"{prefix}stages.{stage}")
        if "num_generations" in STAGES[stage].settings_keys and cfg["stages"][stage]["enabled"]:
            _check_generation_groups(cfg["stages"][stage], f"{prefix}stages.{stage}")
    eval_ds = cfg["evaluation"]["datasets"]
    if eval_ds == [] and cfg["evaluation"]["enabled"]:
        raise ConfigError(f"{prefix}evaluation.datasets", "is empty: list the datasets to evaluate, leave the key out to "
                                                          "evaluate every dataset, or set evaluation.enabled: false")
    for i, name in enumerate(eval_ds or []):
        if name not in datasets:
            close = difflib.get_close_matches(name, list(datasets), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{prefix}evaluation.datasets[{i}]", f"unknown dataset '{name}'{hint}")
        ds = datasets[name]
        trained = [s for s in ds["stages"] if cfg["stages"][s]["enabled"]]
        if trained and not ds["held_out"] and not ds["train_and_evaluate"]:
            raise ConfigError(f"{prefix}evaluation.datasets[{i}]",
                              f"dataset '{name}' is evaluated but also trains stage '{trained[0]}' (its records outside "
                              "the validation split are trained on): evaluation data stays out of training. Give the "
                              f"evaluation file as its own dataset with held_out: true, or set "
                              f"datasets.{name}.train_and_evaluate: true to train on the rest deliberately")
    _check_overlaps(datasets)


def _check_overlaps(datasets):
    """A held_out dataset must not read a file a training dataset reads, unless overlaps_training says so."""
    from tuneflow.data.readers import resolve_paths
    from tuneflow.errors import DataError

    def files(ds):
        try:
            return {os.path.realpath(p) for p in resolve_paths(ds["path"])}
        except DataError:  # missing files are reported by the convert job, naming the key
            return set()

    training = {n: ds for n, ds in datasets.items() if not ds["held_out"]}
    for name, ds in datasets.items():
        if not ds["held_out"] or ds["overlaps_training"]:
            continue
        mine = files(ds)
        for other, tds in training.items():
            shared = mine & files(tds) if mine else set()
            if shared:
                raise ConfigError(f"datasets.{name}.path", f"the held_out dataset '{name}' reads {sorted(shared)[0]}, "
                                  f"which dataset '{other}' trains on: validation data stays out of training; set "
                                  f"datasets.{name}.overlaps_training: true if that is deliberate")


def planning_notes(resolved: dict) -> list[str]:
    """What the plan does that a user may not expect, said when Snakemake plans (not an error): a
    stage scored against a reference (DPO) whose usual starting stage (SFT) is disabled."""
    notes = []
    for variant, cfg in resolved["_variants"].items():
        prefix = "" if variant == DEFAULT_VARIANT else f"variants.{variant}."
        stages = enabled_stages(cfg)
        for stage in stages:
            usual = STAGES[stage].starts_from[:1]
            if STAGES[stage].scored_against_reference and usual and usual[0] not in stages:
                start = next((s for s in STAGES[stage].starts_from if s in stages), None)
                model = f"the merged {STAGES[start].label} model" if start else f"the base model ({cfg['base_model']['path']})"
                notes.append(f"{prefix}stages.{usual[0]}.enabled is false, so {STAGES[stage].label} starts from "
                             f"{model} and is scored against it as its reference")
    return notes


REWARD_SOURCES = ("reward_model", "verifiable", "function")


def reward_stage(name) -> str | None:
    """The stage a `reward_model` value names (its merged model is the reward model), or None for a path."""
    return name if name in STAGES else None


def function_module_file(dotted: str) -> str:
    """The file of a `function` reward (module.function, relative to the project directory)."""
    module = dotted.rsplit(".", 1)[0].replace(".", "/")
    return f"{module}/__init__.py" if Path(module).is_dir() else f"{module}.py"


def _check_rewards(cfg, stage, key):
    """An RL stage's reward list: at least one term, each of exactly one kind, each usable here."""
    st = cfg["stages"][stage]
    rewards = st[STAGES[stage].rewards_key]
    if not rewards:
        raise ConfigError(f"{key}.rewards", f"stage '{stage}' is enabled but has no reward: add at least one of "
                          "reward_model (rm, or a local directory), verifiable (promptcblue, exact_match) or function")
    formats = {cfg["datasets"][d]["format"] for d in stage_datasets(cfg, stage)}
    for i, term in enumerate(rewards):
        where = f"{key}.rewards[{i}]"
        kinds = [k for k in REWARD_SOURCES if k in term]
        if len(kinds) != 1:
            raise ConfigError(where, f"a reward term needs exactly one of {', '.join(REWARD_SOURCES)} (and a weight), "
                              f"got {', '.join(kinds) or 'none'}")
        if "reward_model" in term and (named := reward_stage(term["reward_model"])):
            if STAGES[named].model_task != SEQUENCE_CLASSIFICATION:
                raise ConfigError(f"{where}.reward_model", f"stage '{named}' is not a reward model (its merged model "
                                  "has no score head); name the rm stage or a local reward model directory")
            if not cfg["stages"][named]["enabled"]:
                raise ConfigError(f"{where}.reward_model", f"names the '{named}' stage, which is not enabled; set "
                                  f"stages.{named}.enabled: true (it trains the reward model) or give a local directory")
        for j, name in enumerate(term.get("datasets") or []):
            if name not in stage_datasets(cfg, stage):
                raise ConfigError(f"{where}.datasets[{j}]", f"'{name}' does not feed stage '{stage}' (its datasets: "
                                  f"{', '.join(stage_datasets(cfg, stage))})")
        if term.get("verifiable") == "promptcblue" and "promptcblue" not in formats:
            raise ConfigError(f"{where}.verifiable", f"promptcblue scores PromptCBLUE records, but no dataset with "
                              f"format promptcblue feeds '{stage}' (its datasets: {', '.join(stage_datasets(cfg, stage))})")
        if "function" in term:
            if not st["trust_reward_code"]:
                raise ConfigError(f"{where}.function", f"'{term['function']}' would run your Python code in the "
                                  f"training job; set {key}.trust_reward_code: true if you trust it")
            if not Path(function_module_file(term["function"])).is_file():
                raise ConfigError(f"{where}.function", f"module file {function_module_file(term['function'])} of "
                                  f"'{term['function']}' does not exist (module paths are relative to the project directory)")


def _check_generation_groups(st, key):
    """Online RL samples num_generations completions per prompt and needs whole groups in every
    generation batch (ranks x per-device batch x gradient accumulation)."""
    t, res = st["training"], st["resources"]
    ranks = res["nodes"] * processes_per_node(res)
    batch = ranks * t["per_device_batch_size"] * t["gradient_accumulation_steps"]
    if batch % st["num_generations"]:
        divisors = [d for d in range(2, batch + 1) if batch % d == 0]
        raise ConfigError(f"{key}.num_generations", f"{st['num_generations']} does not divide the global batch of "
                          f"{batch} completions ({ranks} ranks x per_device_batch_size {t['per_device_batch_size']} x "
                          f"gradient_accumulation_steps {t['gradient_accumulation_steps']}); use one of "
                          f"{', '.join(map(str, divisors)) or '(none: raise the batch to at least 2)'} or change the batch")


def _explicit_quantization(raw: dict) -> dict:
    """Remember which stages set `quantization` explicitly (defaults are filled for every stage)."""
    out = {}
    for stage, st in (raw.get("stages") or {}).items():
        if isinstance(st, dict) and "quantization" in st:
            out[stage] = ("quantization",)
    return out


def resolve(raw: dict) -> dict:
    """Validate a raw config (as loaded by Snakemake) and return it with defaults filled.

    Variants are checked and resolved too: `cfg["_variants"][name]` holds each variant's full
    effective config (the default one under "default").
    """
    raw = copy.deepcopy(raw)
    variant_keys = _deref(schema()["properties"]["variants"]["additionalProperties"])["properties"]
    for name, override in (raw.get("variants") or {}).items():
        for key in override or {}:
            if key not in variant_keys:
                raise ConfigError(f"variants.{name}.{key}", f"variant overrides a key that does not exist or cannot "
                                  f"vary between variants{_suggest(key, variant_keys, f'variants.{name}')} (variants "
                                  f"may override {', '.join(variant_keys)}; datasets are shared by all variants)")
    check_unknown_keys(raw)
    for section in ("datasets", "variants"):
        for name in raw.get(section) or {}:
            check_name(name, f"{section}.{name}")
    variants_raw = raw.get("variants") or {}
    for name, override in variants_raw.items():
        if name == DEFAULT_VARIANT:
            raise ConfigError(f"variants.{name}", f"'{DEFAULT_VARIANT}' is reserved for the settings without overrides")
        _check_variant_override(name, override)
    cfg = fill_defaults(copy.deepcopy(raw))
    _validate_schema(cfg)
    _resolve_datasets(cfg)
    cfg["_explicit"] = _explicit_quantization(raw)
    _semantic_checks(cfg)
    # Each variant's effective config, without the variants table itself.
    resolved = {DEFAULT_VARIANT: _strip_private(cfg, drop=("variants",))}
    base_raw = {k: v for k, v in raw.items() if k != "variants"}
    for name, override in variants_raw.items():
        vraw = deep_merge(base_raw, override)
        vcfg = fill_defaults(copy.deepcopy(vraw))
        try:
            _validate_schema(vcfg)
        except ConfigError as e:
            raise ConfigError(f"variants.{name}.{e.key}" if e.key else f"variants.{name}", e.problem) from None
        _resolve_datasets(vcfg)
        vcfg["_explicit"] = _explicit_quantization(vraw)
        _semantic_checks(vcfg, where=f"variants.{name}")
        resolved[name] = _strip_private(vcfg, drop=("variants",))
    out = _strip_private(cfg)
    out["_variants"] = resolved
    return out


def _strip_private(cfg, drop=()):
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in drop}


def load(path=DEFAULT_CONFIG, overrides: dict | None = None) -> dict:
    """Load and resolve a config file (for scripts and tests; Snakemake passes its own `config`)."""
    raw = load_yaml(path)
    if overrides:
        raw = deep_merge(raw, overrides)
    return resolve(raw)


def stage_datasets(cfg, stage) -> list[str]:
    """Datasets that feed `stage` (its training data, and held_out datasets: its validation data), in config order."""
    return [name for name, ds in cfg["datasets"].items() if stage in ds["stages"]]


def training_datasets(cfg, stage) -> list[str]:
    """Datasets whose train split `stage` trains on."""
    return [name for name in stage_datasets(cfg, stage) if not cfg["datasets"][name]["held_out"]]


def enabled_stages(cfg) -> list[str]:
    return [s for s in STAGE_NAMES if cfg["stages"][s]["enabled"]]


