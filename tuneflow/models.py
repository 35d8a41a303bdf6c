"""Finding, checking and loading base models and tokenizers, safely.

- `base_model.path` is a local directory or a hub name; a hub name is only fetched when the hub is
  reachable (checked with a short connection probe), so an offline machine gets a clear error
  instead of a hang. Tokens are read from the environment (HF_TOKEN) by huggingface_hub and
  never written anywhere by us.
- Weights are safetensors only unless `allow_unsafe_weights` opts in to pickle checkpoints.
- `trust_remote_code` is off unless the config sets it; a model that needs custom code is named.
- `load_causal_lm` is the one loader (training, merge, evaluation): the same weight-safety and
  dtype policy everywhere.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from tuneflow.errors import ConfigError, ModelError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
LOCAL_PREFIXES = ("/", "./", "../", "~", "results/", "resources/")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "tf_model.h5", "flax_model.msgpack")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
HUB_PROBE_TIMEOUT_S = 5


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable() -> tuple[bool, str]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True, ""
    except OSError as e:
        return False, f"{host}:{port}: {e.strerror or e}"


def resolve_model_path(path: str, revision: str | None = None, key: str = "base_model.path") -> str:
    """Return a local directory holding the model `path` names, downloading from the hub only when
    it is a hub name, not already cached, and the hub is reachable."""
    if os.path.isdir(path):
        return path
    if path.startswith(LOCAL_PREFIXES) or not HUB_ID.match(path):
        raise ModelError(f"config key '{key}': model directory '{path}' does not exist")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]
    try:
        return snapshot_download(path, revision=revision, local_files_only=True, allow_patterns=patterns)
    except Exception:  # not in the local cache: fall through to the network (or a clear refusal)
        pass
    if _offline():
        raise ModelError(f"config key '{key}': '{path}' is not a local directory and is not in the Hugging Face "
                         "cache, and the hub is offline (HF_HUB_OFFLINE=1); download it where there is network "
                         f"access (huggingface-cli download {path}) or point {key} at a local copy")
    ok, why = _hub_reachable()
    if not ok:
        raise ModelError(f"config key '{key}': '{path}' is not a local directory and the Hugging Face Hub cannot be "
                         f"reached ({why}); download the model where there is network access or point {key} at a "
                         "local copy")
    try:
        return snapshot_download(path, revision=revision, allow_patterns=patterns)
    except Exception as e:
        raise ModelError(f"config key '{key}': could not download '{path}' from the hub: {type(e).__name__}: {e}") from None


def read_model_config(model_dir) -> dict:
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{model_dir} has no config.json: not a transformers model directory")
    try:
        with open(cfg, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg}, line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg}: cannot read it: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{cfg}: a model config is a JSON object, not {type(data).__name__}")
    return data


def check_safetensors(path) -> None:
    """A safetensors file whose header is readable and whose size is what the header says (a
    truncated download or copy otherwise fails only when the weights are loaded)."""
    path = Path(path)
    size = path.stat().st_size
    damaged = f"{path}: damaged safetensors file (truncated download or copy?)"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{damaged}: {size} bytes, too short for a header")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ModelError(f"{damaged}: its header claims {n} bytes, the file holds {size}")
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ModelError(f"{damaged}: unreadable header ({e})") from None
    if 8 + n + end != size:
        raise ModelError(f"{damaged}: {size} bytes, its header describes {8 + n + end}")


def check_model_dir(model_dir, spec: dict, key: str = "base_model", weights_expected=True) -> dict:
    """Security and sanity checks before anything is loaded; returns the model's config.json."""
    d = Path(model_dir)
    cfg = read_model_config(d)
    if cfg.get("auto_map") and not spec.get("trust_remote_code"):
        raise ModelError(f"the model at {model_dir} needs its own Python code (auto_map in config.json) and "
                         f"'{key}.trust_remote_code' is false; set it to true only if you trust that code")
    if weights_expected:
        has_safe = any((d / n).exists() for n in SAFE_WEIGHTS) or any(d.glob("*.safetensors"))
        has_pickle = any((d / n).exists() for n in PICKLE_WEIGHTS) or any(d.glob("*.bin"))
        if not has_safe:
            if has_pickle and not spec.get("allow_unsafe_weights"):
                raise ModelError(f"the model at {model_dir} has only pickle weights (.bin/.pt), which can run "
                                 f"arbitrary code when loaded; convert them to safetensors or set "
                                 f"'{key}.allow_unsafe_weights: true'")
            if not has_pickle:
                raise ModelError(f"the model at {model_dir} has no weights (*.safetensors)")
        for f in sorted(d.glob("*.safetensors")):
            check_safetensors(f)
    return cfg


def auto_tokenizer(model_dir, trust_remote_code: bool):
    """transformers' AutoTokenizer, with a directory it cannot make a tokenizer of named."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        found = sorted(p.name for p in Path(model_dir).glob("*token*"))
        if not found:
            raise ModelError(f"the model at {model_dir} has no tokenizer files (tokenizer.json, or tokenizer.model, "
                             "with tokenizer_config.json): copy them from where the model came from") from None
        raise ModelError(f"the tokenizer at {model_dir} cannot be loaded from {', '.join(found)}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0]}") from None


def torch_dtype(name: str, model_cfg: dict | None = None):
    import torch

    if name == "auto":
        stored = (model_cfg or {}).get("dtype") or (model_cfg or {}).get("torch_dtype") or "float32"
        name = stored
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def load_tokenizer(model_dir, spec: dict, template: str | None = None, key="chat_template"):
    """The model's tokenizer, made ready for chat template `template` (tuneflow.templates: a
    built-in's special tokens added, counted in `tokenizer.tuneflow_added_tokens`)."""
    from tuneflow.special_tokens import ensure_pad_token
    from tuneflow.templates import prepare_tokenizer

    tok = auto_tokenizer(model_dir, bool(spec.get("trust_remote_code")))
    tok.tuneflow_added_tokens = 0
    if template is not None:
        prepare_tokenizer(tok, template, key)
    ensure_pad_token(tok)
    return tok


def check_tokenizer_fits(tokenizer, model_cfg: dict, model_dir):
    """The tokenizer as the model ships it must fit its embeddings (tokens a chat template adds are
    given rows by fit_embeddings)."""
    vocab = model_cfg.get("vocab_size") or (model_cfg.get("text_config") or {}).get("vocab_size")
    own = len(tokenizer) - getattr(tokenizer, "tuneflow_added_tokens", 0)
    if vocab is not None and own > vocab:
        raise ModelError(f"the tokenizer of {model_dir} has {own} tokens but the model's embeddings hold "
                         f"only {vocab} (config.json vocab_size); token ids past {vocab - 1} would index out of range")


# New embedding rows are drawn from this fixed seed, so that training, merging and evaluating
# build the very same rows (an adapter that does not train the embeddings does not carry them).
EMBEDDING_INIT_SEED = 0


def embedding_rows(model) -> int:
    """Rows of the input embeddings (under DeepSpeed ZeRO-3 a rank holds a partition: its full
    shape is ds_shape)."""
    weight = model.get_input_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def resize_embeddings(model, rows: int):
    """Resize the input (and output) embeddings to `rows`; new rows ~ N(0, initializer_range) from
    EMBEDDING_INIT_SEED (what transformers' resize did when the seed recipes were written, but
    reproducible). Under DeepSpeed ZeRO-3 the partitioned weights are gathered to do it."""
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    old = embedding_rows(model)
    if rows <= old:
        return
    model.resize_token_embeddings(rows, mean_resizing=False)
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
    weights = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    for w in weights:
        def fill(w=w):
            g = torch.Generator().manual_seed(EMBEDDING_INIT_SEED)
            new = torch.normal(0.0, std, (rows - old, w.shape[1]), generator=g)
            with torch.no_grad():
                w[old:rows] = new.to(w.dtype).to(w.device)

        if is_deepspeed_zero3_enabled():
            import deepspeed

            with deepspeed.zero.GatheredParameters([w], modifier_rank=0):
                fill()
        else:
            fill()


def fit_embeddings(model, tokenizer, template: str | None):
    """Give the tokens a chat template added to the tokenizer their embedding rows (a no-op when
    the model already has them, e.g. a merged model of an earlier stage)."""
    if template is None:
        return
    from tuneflow.templates import embedding_rows as needed_rows

    resize_embeddings(model, needed_rows(tokenizer, template, embedding_rows(model)))


def max_positions(model_cfg: dict) -> int | None:
    for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if k in model_cfg:
            return int(model_cfg[k])
    return None


def check_max_length(max_length: int, model_cfg: dict, key: str, rope_scaling=None):
    limit = max_positions(model_cfg)
    if limit is None:
        return
    if rope_scaling:
        limit = int(limit * float(rope_scaling.get("factor", 1)))
    if max_length > limit:
        raise ModelError(f"config key '{key}': {max_length} is above the model's {limit} positions "
                         "(max_position_embeddings); lower it or set rope_scaling")


def load_model_config(model_dir, spec: dict, rope_scaling: dict | None = None):
    """The model's transformers config, with `training.rope_scaling` applied on top of its own RoPE
    parameters (transformers 5 keeps rope_theta in the same dict, so it is merged, not replaced)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=bool(spec.get("trust_remote_code")))
    if rope_scaling:
        extra = {k: v for k, v in rope_scaling.items() if k != "type"}
        cfg.rope_parameters = {**(cfg.rope_parameters or {}), "rope_type": rope_scaling["type"], **extra}
    return cfg


def quantization_config(quantization: dict):
    """bitsandbytes settings of `stages.<stage>.quantization` (QLoRA) for from_pretrained."""
    import torch
    from transformers import BitsAndBytesConfig

    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}
    q = quantization
    if q["bits"] == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"], bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=dt[q["compute_dtype"]], bnb_4bit_quant_storage=dt[q["storage_dtype"]])
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(spec: dict, model_dir=None, *, rope_scaling: dict | None = None, quantization: dict | None = None,
                   attn_implementation: str | None = None, task: str = "causal_lm"):
    """Load the causal LM `spec` (a base_model block) names, from `model_dir` when already resolved.
    `task` "sequence_classification": the same checkpoint (a causal LM or a reward model) with one
    scalar output head instead of the LM head (tuneflow.stages: a reward model).

    Weights in the dtype `spec.torch_dtype` says (auto = as stored; QLoRA: its compute dtype),
    safetensors only unless `allow_unsafe_weights`, the model's own code only with
    `trust_remote_code`; `rope_scaling` on top of the model's RoPE parameters; `quantization`
    (4/8-bit, bitsandbytes) for QLoRA; `attn_implementation` as resolved by tuneflow.hardware
    (None: transformers' default)."""
    model_dir = model_dir or resolve_model_path(spec["path"], spec.get("revision"))
    model_cfg = check_model_dir(model_dir, spec)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = load_model_config(model_dir, spec, rope_scaling)
    if task == "sequence_classification":
        config.num_labels = 1  # one scalar: the reward
    kwargs = {
        "config": config,
        "dtype": torch_dtype(spec.get("torch_dtype", "auto"), model_cfg),
        "trust_remote_code": bool(spec.get("trust_remote_code")),
        "use_safetensors": not spec.get("allow_unsafe_weights"),
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization)
        if quantization["compute_dtype"] != "float32":
            kwargs["dtype"] = torch_dtype(quantization["compute_dtype"])
    auto = AutoModelForSequenceClassification if task == "sequence_classification" else AutoModelForCausalLM
    return auto.from_pretrained(model_dir, **kwargs)


def check_reward_model_config(model_cfg: dict, path, key: str):
    """A reward model is a sequence-classification model with one output (config.json only)."""
    archs = model_cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        what = f"a causal language model ({', '.join(archs)})" if any(a.endswith("ForCausalLM") for a in archs) \
            else f"not a sequence-classification model (architectures: {', '.join(archs) or 'none'})"
        raise ModelError(f"config key '{key}': the model at {path} is {what} without a score head; a reward model "
                         "must be a sequence-classification model with one output (train one with the rm stage and "
                         "set reward_model: rm)")
    labels = len(model_cfg.get("id2label") or {}) or model_cfg.get("num_labels", 2)
    if labels != 1:
        raise ModelError(f"config key '{key}': the model at {path} has {labels} outputs (id2label); a reward model "
                         "has one (the score)")


def check_stage_against_model(st: dict, stage: str, path, model_cfg: dict, key: str, modules=None):
    """A stage's settings against its base model (shared by planning and the training job).
    `modules`: the model's lora_targets.Inventory (default: its module tree built on the meta device)."""
    from tuneflow import lora_targets

    if st.get("deepspeed") in ("zero3", "zero3_offload") and model_cfg.get("quantization_config"):
        raise ConfigError(f"{key}.deepspeed", f"the base model at {path} is already quantized; ZeRO-3 cannot "
                          "partition quantized checkpoints: use zero2, or an unquantized base with finetuning: qlora")
    if st["finetuning"] == "full" and model_cfg.get("quantization_config"):
        raise ConfigError(f"{key}.finetuning", f"the base model at {path} is quantized; full fine-tuning needs unquantized weights")
    if st["finetuning"] != "full":
        # A model with its own code (auto_map) got here only with trust_remote_code (check_model_dir).
        inv = modules if modules is not None else lora_targets.inventory_of_dir(str(path), bool(model_cfg.get("auto_map")))
        lora_targets.resolve(st["lora"], inv, str(path), f"{key}.lora")
    check_max_length(st["training"]["max_length"], model_cfg, f"{key}.training.max_length",
                     st["training"].get("rope_scaling"))
