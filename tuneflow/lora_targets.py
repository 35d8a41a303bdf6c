"""Which modules LoRA adapts, decided from the model's own module tree.

- `target_modules: all-linear` = every linear layer except the output layer (`lm_head`, tied to
  the input embeddings or not) and the routers of mixture-of-experts blocks (a router chooses the
  experts; adapting it changes the routing, not the computation). The experts themselves are
  adapted only when `lora.target_experts` is true (default false: in transformers 5 the experts
  of Mixtral / Qwen3-MoE are fused 3-D weights, which peft adapts through `target_parameters`,
  without dropout or DoRA, and every expert gets its own adapter).
- An explicit name must match a linear layer (or an embedding) of the model: a name that matches
  nothing, a router or a non-linear module is a ConfigError naming the key and listing the
  model's linear module names, instead of peft silently adapting the remaining names.
- The names are those of the model as transformers builds it, read at planning from an empty
  model on the meta device (`inventory_of_dir`: no weights read). A checkpoint's tensor names are
  not enough: a Mixtral checkpoint stores `experts.0.w1` while the loaded model has
  `experts.gate_up_proj`, and a tied `lm_head` has no tensor of its own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tuneflow.errors import ConfigError

LINEAR, EXPERT_LINEAR, OUTPUT, ROUTER, EXPERTS, EMBEDDING, OTHER = (
    "linear", "expert linear", "output layer", "MoE router", "fused MoE experts", "embedding", "other")
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")  # beside an `experts` module
ADAPTABLE = (LINEAR, EXPERT_LINEAR, OUTPUT, EMBEDDING)    # what an explicit name may adapt
NOT_ADAPTABLE = {ROUTER: "an MoE router", EXPERTS: "a block of fused MoE expert weights", OTHER: "not a linear layer"}


@dataclass(frozen=True)
class Module:
    path: str              # model.layers.0.self_attn.q_proj
    kind: str
    cls: str = ""
    params: tuple = ()     # fused experts: their own parameter names (gate_up_proj, down_proj)

    @property
    def leaf(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    def matches(self, name: str) -> bool:
        """peft's rule for a name in target_modules / modules_to_save: the path or a suffix of it."""
        return self.path == name or self.path.endswith("." + name)


@dataclass(frozen=True)
class Inventory:
    modules: tuple[Module, ...]
    tied_embeddings: bool = False

    def of_kind(self, *kinds) -> list[Module]:
        return [m for m in self.modules if m.kind in kinds]

    def linear_names(self) -> list[str]:
        """Leaf names of the layers LoRA can adapt, for error messages."""
        return sorted({m.leaf for m in self.of_kind(LINEAR, EXPERT_LINEAR, OUTPUT)})

    @classmethod
    def from_leaf_kinds(cls, kinds: dict, tied_embeddings=False) -> Inventory:
        """A planned model described by leaf name -> kind (the embedded tiny model)."""
        return cls(tuple(Module(f"model.{leaf}", kind) for leaf, kind in kinds.items()), tied_embeddings)

    def leaf_kinds(self) -> dict:
        """Leaf name -> kind of every module LoRA could touch (norms and containers left out)."""
        return {m.leaf: m.kind for m in self.modules if m.kind != OTHER}


def inventory(model) -> Inventory:
    """Classify every named module of a (possibly meta-device, quantized or peft-free) model."""
    import torch.nn as nn

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = nn.Linear
    named = dict(model.named_modules())
    output = model.get_output_embeddings()
    children = {}
    for path in named:
        if path:
            parent, _, leaf = path.rpartition(".")
            children.setdefault(parent, set()).add(leaf)
    modules = []
    for path, mod in named.items():
        if not path:
            continue
        parent, _, leaf = path.rpartition(".")
        cls = type(mod).__name__
        parts = path.split(".")
        if mod is output:
            kind = OUTPUT
        elif "Router" in cls or (leaf in ROUTER_NAMES and "experts" in children.get(parent, ())):
            kind = ROUTER
        # (ds_shape: the full shape of a parameter ZeRO-3 has partitioned)
        elif leaf == "experts" and any(len(getattr(p, "ds_shape", p.shape)) == 3 for p in mod.parameters(recurse=False)):
            kind = EXPERTS
        elif isinstance(mod, (nn.Linear, Conv1D)):
            kind = EXPERT_LINEAR if "experts" in parts[:-1] else LINEAR
        elif isinstance(mod, nn.Embedding):
            kind = EMBEDDING
        else:
            kind = OTHER
        params = tuple(n for n, _ in mod.named_parameters(recurse=False)) if kind == EXPERTS else ()
        modules.append(Module(path, kind, cls, params))
    return Inventory(tuple(modules), bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False)))


@functools.lru_cache(maxsize=16)
def inventory_of_dir(model_dir: str, trust_remote_code: bool = False) -> Inventory:
    """The module tree of the model in `model_dir`, built from its config.json on the meta device
    (no weights are read or allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    return inventory(model)


def _compact(selected: list[Module], inv: Inventory) -> list[str]:
    """Leaf names where every adaptable module of that name is selected, full paths otherwise (so
    that e.g. a dense `gate_proj` is adapted without the experts' `gate_proj`)."""
    chosen = {m.path for m in selected}
    out = set()
    for m in selected:
        same = [o for o in inv.modules if o.matches(m.leaf)]
        out.add(m.leaf if all(o.path in chosen for o in same) else m.path)
    return sorted(out)


def resolve(lora: dict, inv: Inventory, where: str, key: str = "lora") -> dict:
    """What peft adapts for the `lora` block on a model with inventory `inv`:
    {"target_modules": [...], "target_parameters": [...], "skipped": {...}}; `where` names the model
    (its path) in errors, `key` the config key of the lora block."""
    targets = lora["target_modules"]
    experts = lora.get("target_experts", False)
    linear_names = ", ".join(inv.linear_names())
    if targets == "all-linear":
        selected = inv.of_kind(LINEAR, EXPERT_LINEAR) if experts else inv.of_kind(LINEAR)
    else:
        selected = []
        for i, name in enumerate(targets):
            found = [m for m in inv.modules if m.matches(name)]
            if not found:
                raise ConfigError(f"{key}.target_modules[{i}]", f"module '{name}' does not exist in {where} (its "
                                  f"linear module names: {linear_names})")
            bad = next((m for m in found if m.kind not in ADAPTABLE), None)
            if bad is not None:
                hint = " (set lora.target_experts: true to adapt the experts)" if bad.kind == EXPERTS else ""
                raise ConfigError(f"{key}.target_modules[{i}]", f"module '{name}' in {where} ({bad.cls}) is "
                                  f"{NOT_ADAPTABLE[bad.kind]}, which LoRA does not adapt{hint}; its linear module "
                                  f"names: {linear_names}")
            selected.extend(found)
    fused = inv.of_kind(EXPERTS)
    params = []
    if experts:
        if not fused and not inv.of_kind(EXPERT_LINEAR):
            raise ConfigError(f"{key}.target_experts", f"the model at {where} has no mixture-of-experts layers")
        if fused and (lora["dropout"] or lora.get("use_dora")):
            raise ConfigError(f"{key}.target_experts", "the experts of this model are fused weights, which peft adapts "
                              "without dropout or DoRA: set lora.dropout: 0 and lora.use_dora: false")
        params = sorted({f"{m.leaf}.{p}" for m in fused for p in m.params})
    for i, name in enumerate(lora.get("modules_to_save") or []):
        if not any(m.matches(name) for m in inv.modules):
            raise ConfigError(f"{key}.modules_to_save[{i}]", f"module '{name}' does not exist in {where}")
    skipped = {"output layer": sorted({m.leaf for m in inv.of_kind(OUTPUT)} - {m.leaf for m in selected}),
               "MoE routers": sorted({m.leaf for m in inv.of_kind(ROUTER)}),
               "MoE experts": [] if experts else sorted({m.leaf for m in inv.of_kind(EXPERTS, EXPERT_LINEAR)})}
    return {"target_modules": _compact(selected, inv), "target_parameters": params,
            "skipped": {k: v for k, v in skipped.items() if v}}


def embeddings_adapted(lora: dict, resolved: dict, inv: Inventory) -> bool:
    """Whether the adapter trains the input or output embeddings (which tied models share)."""
    names = list(lora.get("modules_to_save") or []) + resolved["target_modules"]
    return any(m.matches(n) for n in names for m in inv.of_kind(EMBEDDING, OUTPUT))
