"""Where every output of every variant lives, and exactly which settings each job depends on.

Pure Python over the resolved config, used by the Snakemake rules (workflow/rules/*.smk):
- `stage_settings(v, s)` is what the train rule passes as params: the stage's own block plus the
  seed, base model spec and chat template, and nothing else, so Snakemake's params trigger reruns
  a stage exactly when something it depends on changed.
- A variant reuses every upstream output its overrides do not touch: a stage's directory is the
  default one when the stage's whole lineage (its settings and those of the stages before it)
  equals the default variant's, and results/variants/<name>/... otherwise.
- Tokenized data is cached per (dataset, kind of rows, tokenizer, template, max length, masking)
  under results/tokenized/<dataset>/<kind>-<hash>, shared by every stage and variant that agrees.
- Which stages exist, what each trains on and starts from: tuneflow.stages.
"""

from __future__ import annotations

import copy
import hashlib
import json

from tuneflow.cluster import processes_per_node
from tuneflow import DEFAULT_VARIANT
from tuneflow.config import RESULTS, TINY_MODEL_DIR, enabled_stages, function_module_file, reward_stage, stage_datasets
from tuneflow.stages import CAUSAL_LM, INSTRUCTION_FORMATS, SEQUENCE_CLASSIFICATION, STAGES


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def short_hash(obj, n=10) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


class Plan:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.variants: dict = cfg["_variants"]

    # -- variants -------------------------------------------------------------------------------

    def variant_names(self):
        return list(self.variants)

    def vcfg(self, variant):
        return self.variants[variant]

    @staticmethod
    def variant_of_prefix(vprefix: str) -> str:
        return DEFAULT_VARIANT if not vprefix else vprefix.split("/")[1]

    def stages(self, variant=DEFAULT_VARIANT):
        return enabled_stages(self.vcfg(variant))

    # -- per-stage settings and lineage ---------------------------------------------------------

    def model_spec(self, variant):
        spec = dict(self.vcfg(variant)["base_model"])
        return spec

    def base_stage(self, variant, stage):
        """The stage whose merged model `stage` starts from (None: the base model)."""
        enabled = self.stages(variant)
        return next((s for s in STAGES[stage].starts_from if s in enabled), None)

    def stage_own_settings(self, variant, stage):
        st = self.vcfg(variant)["stages"][stage]
        own = {k: copy.deepcopy(st[k]) for k in STAGES[stage].settings_keys if k in st}
        if own["finetuning"] != "qlora":
            own.pop("quantization", None)  # not used, so not a reason to rerun
        if own["finetuning"] == "full":
            own.pop("lora", None)
        # The number of ranks sets the global batch, so it is part of what the result depends on;
        # the rest of the resources block (partition, memory, time) is not.
        own["world_size"] = st["resources"]["nodes"] * processes_per_node(st["resources"])
        return own

    def lineage(self, variant, stage) -> dict:
        """Everything the stage's result depends on, including every stage before it."""
        v = self.vcfg(variant)
        prev = self.base_stage(variant, stage)
        return {
            "stage": stage,
            "own": self.stage_own_settings(variant, stage),
            "datasets": {d: v["datasets"][d] for d in stage_datasets(v, stage)},
            "data": v["data"],
            "seed": v["seed"],
            "chat_template": v["chat_template"] if STAGES[stage].uses_chat_template else None,
            "template": v["template"] if STAGES[stage].uses_chat_template else None,
            "upstream": self.lineage(variant, prev) if prev else {"base_model": self.model_spec(variant),
                                                                  "tiny_model": self._tiny_if_used(variant)},
            **({"reward_models": {s: self.lineage(variant, s) for s in self.reward_stages(variant, stage)}}
               if self.reward_stages(variant, stage) else {}),
        }

    def _tiny_if_used(self, variant):
        v = self.vcfg(variant)
        return v["tiny_model"] if v["base_model"]["path"] == TINY_MODEL_DIR else None

    def prefix(self, variant, stage) -> str:
        if variant == DEFAULT_VARIANT:
            return ""
        default = self.variants[DEFAULT_VARIANT]
        if stage in enabled_stages(default) and canonical(self.lineage(variant, stage)) == canonical(self.lineage(DEFAULT_VARIANT, stage)):
            return ""
        return f"variants/{variant}/"

    def adapter_dir(self, variant, stage):
        return f"{RESULTS}/{self.prefix(variant, stage)}adapters/{stage}"

    def merged_dir(self, variant, stage):
        return f"{RESULTS}/{self.prefix(variant, stage)}merged/{stage}"

    def work_dir(self, variant, stage):
        return f"{RESULTS}/work/{self.prefix(variant, stage)}{stage}"

    def stage_base_spec(self, variant, stage) -> dict:
        """The model a stage starts from: the previous enabled stage's merged model, else the base."""
        spec = self.model_spec(variant)
        prev = self.base_stage(variant, stage)
        if prev:
            # Our merged checkpoints are safetensors without custom code of their own.
            spec = {**spec, "path": self.merged_dir(variant, prev), "revision": None, "allow_unsafe_weights": False}
        return spec

    def stage_settings(self, variant, stage) -> dict:
        v = self.vcfg(variant)
        settings = {
            "stage": stage,
            "starts_from": self.base_stage(variant, stage),  # None: the base model
            "seed": v["seed"],
            "base_model": self.stage_base_spec(variant, stage),
            "chat_template": v["chat_template"],
            **self.stage_own_settings(variant, stage),
        }
        if STAGES[stage].rewards_key:
            settings[STAGES[stage].rewards_key] = self.rewards(variant, stage)
        return settings

    def merge_settings(self, variant, stage) -> dict:
        """What merging a stage's adapter into its base depends on (the merge rule's params)."""
        st = self.vcfg(variant)["stages"][stage]
        s = {"base_model": self.stage_base_spec(variant, stage), "finetuning": st["finetuning"],
             "rope_scaling": st["training"]["rope_scaling"]}
        if STAGES[stage].model_task != CAUSAL_LM:
            s["task"] = STAGES[stage].model_task  # a reward model: merged with its score head
        return s

    # -- rewards (online RL) --------------------------------------------------------------------

    def _reward_terms(self, variant, stage) -> list:
        key = STAGES[stage].rewards_key
        return self.vcfg(variant)["stages"][stage][key] if key else []

    def reward_stages(self, variant, stage) -> list[str]:
        """Stages whose merged model is a reward model of `stage`."""
        return [t["reward_model"] for t in self._reward_terms(variant, stage)
                if reward_stage(t.get("reward_model")) and t["reward_model"] in self.stages(variant)]

    def rewards(self, variant, stage) -> list[dict]:
        """`stage`'s reward terms as its job reads them: a reward model named by its stage becomes
        that stage's merged directory (so a retrained reward model reruns what it scores); a
        function reward carries the module file it is read from."""
        out = []
        for term in self._reward_terms(variant, stage):
            term = dict(term)
            if "reward_model" in term and reward_stage(term["reward_model"]):
                term = {**term, "reward_model": self.merged_dir(variant, term["reward_model"]), "stage": term["reward_model"]}
            elif "function" in term:
                term["file"] = function_module_file(term["function"])
            out.append(term)
        return out

    def reward_inputs(self, variant, stage) -> list[str]:
        """Files and directories the rewards read: reward models, the modules of function rewards."""
        return [t.get("reward_model") or t["file"] for t in self.rewards(variant, stage) if "verifiable" not in t]

    def rl_stage(self, variant) -> str | None:
        return next((s for s in self.stages(variant) if STAGES[s].rewards_key), None)

    def stage_resources(self, variant, stage) -> dict:
        return self.vcfg(variant)["stages"][stage]["resources"]

    # -- data -----------------------------------------------------------------------------------

    def convert_settings(self, dataset) -> dict:
        """Datasets cannot be overridden by variants, so the default config defines them."""
        cfg = self.variants[DEFAULT_VARIANT]
        ds, data = cfg["datasets"][dataset], cfg["data"]
        s = {
            "name": dataset, "path": ds["path"], "format": ds["format"], "columns": ds["columns"], "system": ds["system"],
            "validation_fraction": ds["validation_fraction"] if ds["validation_fraction"] is not None else data["validation_fraction"],
            "split_seed": data["split_seed"] if data["split_seed"] is not None else cfg["seed"],
            "on_bad_record": data["on_bad_record"], "duplicate_ids": ds["duplicate_ids"], "max_records": ds["max_records"] or data["max_records"],
            "max_record_bytes": data["max_record_bytes"], "held_out": ds["held_out"], "keep_linebreaks": ds["keep_linebreaks"],
            "dedupe": ds["dedupe"],
        }
        # Only when set, so that the demo's settings (and so its outputs) stay as they were.
        s.update({k: v for k, v in (("tags", ds["tags"]), ("group_by", ds["group_by"]), ("on_bad_turn", data["on_bad_turn"]),
                                    ("llamafactory", ds.get("llamafactory"))) if v})
        return s

    def tokenize_settings(self, variant, stage) -> dict:
        """Exactly what the token ids depend on (so a RoPE or learning-rate change re-tokenizes
        nothing): the kind of rows, the tokenizer, max length, template and its settings, masking,
        truncation, PT's document boundaries, and what to do about cut records."""
        v = self.vcfg(variant)
        st = v["stages"][stage]
        spec = self.model_spec(variant)
        s = {"kind": STAGES[stage].tokenized, "model": {k: spec[k] for k in ("path", "revision", "trust_remote_code")},
             "max_length": st["training"]["max_length"],
             "on_truncation": v["data"]["on_truncation"], "truncation_warn_fraction": v["data"]["truncation_warn_fraction"]}
        if STAGES[stage].uses_chat_template:
            s["chat_template"] = v["chat_template"]
            s["template"] = v["template"]
        for key in ("mask_prompt", "truncation", "bos_per_document", "eos_per_document"):
            if key in STAGES[stage].settings_keys:
                s[key] = st[key]
        return s

    def tokenize_key(self, variant, stage) -> str:
        s = self.tokenize_settings(variant, stage)
        return f"{s['kind']}-{short_hash(s)}"

    def tokenized_dirs(self, variant, stage):
        key = self.tokenize_key(variant, stage)
        return [f"{RESULTS}/tokenized/{d}/{key}" for d in stage_datasets(self.vcfg(variant), stage)]

    def converted_dirs(self, variant, stage):
        return [f"{RESULTS}/data/{d}" for d in stage_datasets(self.vcfg(variant), stage)]

    def tokenize_registry(self) -> dict:
        """key -> tokenize settings, for every key some variant needs."""
        reg = {}
        for variant in self.variants:
            for stage in self.stages(variant):
                reg[self.tokenize_key(variant, stage)] = self.tokenize_settings(variant, stage)
        return reg

    # -- evaluation -----------------------------------------------------------------------------

    def eval_models(self, variant):
        chosen = self.vcfg(variant)["evaluation"]["models"]
        return [m for m in ["base"] + [s for s in self.stages(variant) if self.model_eval_datasets(variant, s)]
                if chosen is None or m in chosen]

    def eval_datasets(self, variant):
        v = self.vcfg(variant)
        names = v["evaluation"]["datasets"]
        return list(v["datasets"]) if names is None else list(names)

    def model_task(self, model) -> str:
        return STAGES[model].model_task if model in STAGES else CAUSAL_LM

    def model_eval_datasets(self, variant, model) -> list[str]:
        """A reward model is evaluated on preference pairs only (it scores, it does not generate)."""
        names = self.eval_datasets(variant)
        if self.model_task(model) == SEQUENCE_CLASSIFICATION:
            return [d for d in names if self.vcfg(variant)["datasets"][d]["format"] == "preference"]
        return names

    def reward_scored(self, variant, model) -> str | None:
        """The RL stage whose rewards also score `model`'s answers on the RL prompts' held-out
        records: the RL model itself, the model it starts from and that model's other branches
        (DPO, KTO), so that the report compares their mean reward side by side."""
        rl = self.rl_stage(variant)
        if rl is None or self.model_task(model) != CAUSAL_LM:
            return None
        start = self.base_stage(variant, rl) or "base"
        branch_of = (self.base_stage(variant, model) or "base") if model in STAGES else None
        return rl if model in (rl, start) or branch_of == start else None

    def model_dir_spec(self, variant, model) -> dict:
        if model == "base":
            return self.model_spec(variant)
        return {**self.model_spec(variant), "path": self.merged_dir(variant, model), "revision": None,
                "allow_unsafe_weights": False}

    def eval_reference_spec(self, variant, model):
        """A preference stage (DPO) is scored against the model it started from (its reference);
        others need none."""
        scored = model in STAGES and STAGES[model].scored_against_reference
        return self.stage_base_spec(variant, model) if scored else None

    def eval_settings(self, variant, model) -> dict:
        """What evaluating `model` uses, and nothing else: the evaluated datasets and their formats,
        generation settings when instruction data is evaluated, and for a preference stage (DPO)
        its reference model and beta (implicit rewards)."""
        v = self.vcfg(variant)
        e = v["evaluation"]
        datasets = {d: v["datasets"][d]["format"] for d in self.model_eval_datasets(variant, model)}
        s = {"model": self.model_dir_spec(variant, model), "datasets": datasets, "chat_template": v["chat_template"],
             "template": v["template"], "max_samples": e["max_samples"], "batch_size": e["batch_size"], "seed": v["seed"]}
        if self.model_task(model) != CAUSAL_LM:
            s["model_task"] = self.model_task(model)
        if any(f in INSTRUCTION_FORMATS for f in datasets.values()):
            s.update({k: e[k] for k in ("max_new_tokens", "do_sample", "temperature")})
        reference = self.eval_reference_spec(variant, model)
        if reference and "preference" in datasets.values():
            s["reference"] = reference
            s["beta"] = v["stages"][model]["beta"]
        rl = self.reward_scored(variant, model)
        scored = [d for d in stage_datasets(v, rl) if d in datasets] if rl else []
        if scored:
            s["rewards"] = {"terms": self.rewards(variant, rl), "datasets": scored}
        return s

    def eval_lineage(self, variant, model):
        up = self.lineage(variant, model) if model != "base" else {"base_model": self.model_spec(variant),
                                                                   "tiny_model": self._tiny_if_used(variant)}
        s = {k: v for k, v in self.eval_settings(variant, model).items() if k not in ("model", "reference")}
        return {"model": up, "eval": s}

    def eval_prefix(self, variant, model) -> str:
        d = DEFAULT_VARIANT
        if variant == d:
            return ""
        if model in self.eval_models(d) and self.vcfg(d)["evaluation"]["enabled"] and \
                canonical(self.eval_lineage(variant, model)) == canonical(self.eval_lineage(d, model)):
            return ""
        return f"variants/{variant}/"

    def eval_dir(self, variant, model):
        """results/<prefix>eval/<model>/ holds <dataset>.json and <dataset>.predictions.jsonl."""
        return f"{RESULTS}/{self.eval_prefix(variant, model)}eval/{model}"

    def eval_jobs(self):
        """(variant, model, dataset, scores path) for every number the summary and report show."""
        jobs = []
        for variant in self.variants:
            if not self.vcfg(variant)["evaluation"]["enabled"]:
                continue
            for model in self.eval_models(variant):
                for dataset in self.model_eval_datasets(variant, model):
                    jobs.append((variant, model, dataset, f"{self.eval_dir(variant, model)}/{dataset}.json"))
        return jobs

    def eval_dirs(self):
        return sorted({self.eval_dir(v, m) for v in self.variants if self.vcfg(v)["evaluation"]["enabled"]
                       for m in self.eval_models(v)})

    def tokenized_data(self):
        """(stage label, dataset, tokenized dir) of the data every trained stage read, for the
        report's table of kept / truncated / dropped records."""
        seen, out = set(), []
        for variant, stage, _ in self.trained_stages():
            label = STAGES[stage].label if variant == DEFAULT_VARIANT else f"{variant}/{STAGES[stage].label}"
            for dataset, path in zip(stage_datasets(self.vcfg(variant), stage), self.tokenized_dirs(variant, stage)):
                if (stage, path) not in seen:
                    seen.add((stage, path))
                    out.append((label, dataset, path))
        return out

    def trained_stages(self):
        """(variant, stage, adapter_dir) of every stage trained, for the report's loss curves; a
        stage a variant reuses from the default is listed once, under the default."""
        return [(v, s, self.adapter_dir(v, s)) for v in self.variants for s in self.stages(v)
                if v == DEFAULT_VARIANT or self.prefix(v, s)]
