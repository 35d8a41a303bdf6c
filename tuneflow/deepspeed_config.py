"""DeepSpeed JSON files a stage may name: a preset of config/deepspeed/ or a path of the user's,
and the checks run on it when Snakemake plans (what DeepSpeed or the trainer would otherwise
refuse only once the job runs, with a traceback naming neither the file nor the key)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneflow.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "config" / "deepspeed"
PRESETS = ("zero2", "zero3", "zero3_offload")

# The keys of DeepSpeed's `zero_optimization` block (DeepSpeedZeroConfig of deepspeed 0.19.8, with
# their aliases; it forbids any other). tests/test_config.py compares this list with DeepSpeed's.
ZERO_KEYS = frozenset({
    "allgather_bucket_size", "allgather_partitions", "allgather_sequential", "compute_grad_norm",
    "contiguous_gradients", "cpu_offload", "cpu_offload_param", "cpu_offload_use_pin_memory", "elastic_checkpoint",
    "enable_sanity_checks", "gather_16bit_weights_on_model_save", "ignore_unused_parameters", "leaf_module",
    "legacy_stage1", "load_from_fp32_weights", "log_trace_cache_warnings", "max_live_parameters",
    "max_reuse_distance", "memory_efficient_linear", "model_persistence_threshold", "module_granularity_threshold",
    "offload_optimizer", "offload_param", "overlap_comm", "override_module_apply", "param_persistence_threshold",
    "parameter_alignment", "pipeline_loading_checkpoint", "prefetch_bucket_size", "reduce_bucket_size",
    "reduce_scatter", "round_robin_gradients", "save_muon_momentum_buffer_in_memory", "stage",
    "stage3_allgather_sequential", "stage3_gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save", "stage3_max_live_parameters", "stage3_max_reuse_distance",
    "stage3_model_persistence_threshold", "stage3_module_granularity_threshold", "stage3_param_persistence_threshold",
    "stage3_prefetch_bucket_size", "stage3_use_all_reduce_for_fetch_params", "sub_group_size",
    "use_all_reduce_for_fetch_params", "use_multi_rank_bucket_allreduce", "zenflow", "zero_hpz_partition_size",
    "zero_quantized_gradients", "zero_quantized_nontrainable_weights", "zero_quantized_weights",
})
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def deepspeed_config_path(value):
    """The JSON file `stages.<stage>.deepspeed` names (None when the stage runs without DeepSpeed)."""
    if not value:
        return None
    if value in PRESETS:
        return str(PRESETS_DIR / f"{value}.json")
    return os.path.abspath(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_deepspeed_config(value, key: str, training: dict, world_size: int):
    """Refuse a DeepSpeed JSON that DeepSpeed or the trainer would refuse in the job: invalid JSON
    (file, line, column), no object, a ZeRO stage other than 0-3, a key DeepSpeed does not know in
    `zero_optimization`, an unknown offload device, nvme offload without nvme_path, parameter
    offload below stage 3, fp16 and bf16 both on, and batch sizes that disagree with the stage's
    `training` block (which the trainer fills in where the file says "auto")."""
    path = deepspeed_config_path(value)
    where = f"{path}" if value in PRESETS else f"'{value}'"
    try:
        with open(path, encoding="utf-8") as f:
            ds = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(key, f"{where}, line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(key, f"{where}: cannot read it: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(key, f"{where}: a DeepSpeed config is a JSON object, not {type(ds).__name__}")
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(key, f"{where}: 'zero_optimization' must be an object, not {type(zero).__name__}")
    stage = zero.get("stage", 0)
    if not _is_int(stage) or not 0 <= stage <= 3:
        raise ConfigError(key, f"{where}: zero_optimization.stage is {stage!r}; DeepSpeed's ZeRO stages are 0, 1, 2 and 3")
    unknown = sorted(set(zero) - ZERO_KEYS)
    if unknown:
        raise ConfigError(key, f"{where}: zero_optimization.{unknown[0]} is not a DeepSpeed ZeRO setting (DeepSpeed refuses "
                               "unknown keys there)")
    for block in ("offload_optimizer", "offload_param"):
        offload = zero.get(block)
        if offload is None:
            continue
        if not isinstance(offload, dict):
            raise ConfigError(key, f"{where}: zero_optimization.{block} must be an object")
        device = offload.get("device", "none")
        if device not in OFFLOAD_DEVICES:
            raise ConfigError(key, f"{where}: zero_optimization.{block}.device is {device!r}; DeepSpeed offloads to "
                                   f"{', '.join(OFFLOAD_DEVICES)}")
        if device == "nvme" and not offload.get("nvme_path"):
            raise ConfigError(key, f"{where}: zero_optimization.{block} offloads to nvme without an nvme_path")
        if block == "offload_param" and device != "none" and stage != 3:
            raise ConfigError(key, f"{where}: zero_optimization.offload_param needs ZeRO stage 3 (stage is {stage})")
    enabled = [p for p in ("fp16", "bf16") if isinstance(ds.get(p), dict) and ds[p].get("enabled") is True]
    if len(enabled) == 2:
        raise ConfigError(key, f"{where}: fp16.enabled and bf16.enabled are both true; DeepSpeed runs one of them")
    micro, accum = training["per_device_batch_size"], training["gradient_accumulation_steps"]
    expected = {"train_micro_batch_size_per_gpu": (micro, "training.per_device_batch_size"),
                "gradient_accumulation_steps": (accum, "training.gradient_accumulation_steps"),
                "train_batch_size": (micro * accum * world_size,
                                     "training.per_device_batch_size x gradient_accumulation_steps x ranks")}
    for name, (want, source) in expected.items():
        got = ds.get(name, "auto")
        if got != "auto" and got != want:
            raise ConfigError(key, f"{where}: {name} is {got!r} but the stage trains with {want} ({source}); "
                                   f"set it to \"auto\" (the trainer fills it in) or to {want}")
