"""The code's layout: imports follow the data flow (raw -> converted -> tokenized -> adapter ->
merged -> eval -> report), never back; training does not import the planner; a stage is one
recipe file named by the stage registry. `python tests/test_layout.py` prints the import graph."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Runtime steps in data-flow order: a module may import its own step and earlier ones only.
FLOW = ("tuneflow.data", "tuneflow.tokenize", "tuneflow.train", "tuneflow.merge", "tuneflow.eval",
        "tuneflow.summarize", "tuneflow.report")
PLANNER = ("tuneflow.config", "tuneflow.plan", "tuneflow.checks", "tuneflow.cluster")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """module -> tuneflow modules it imports anywhere in its body (lazy imports included)."""
    graph = {}
    for path in sorted((REPO / "tuneflow").rglob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("tuneflow")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneflow"):
                # `from tuneflow.train import setup` imports the module tuneflow.train.setup
                found |= {f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                          for a in node.names}
        graph[module_name(path)] = found - {module_name(path)}
    return graph


def step(module: str):
    return next((i for i, prefix in enumerate(FLOW) if module == prefix or module.startswith(prefix + ".")), None)


def test_imports_follow_the_data_flow_never_back():
    backwards = [(m, i) for m, imports in import_graph().items() for i in imports
                 if step(m) is not None and step(i) is not None and step(i) > step(m)]
    assert backwards == []


def test_merge_evaluation_and_the_report_do_not_import_the_training_package():
    """What they share with training (model loading, ranks, provenance) lives outside tuneflow.train."""
    later = [m for m in import_graph() if step(m) is not None and step(m) > FLOW.index("tuneflow.train")]
    assert [(m, i) for m in later for i in import_graph()[m] if i.startswith("tuneflow.train")] == []


def test_training_evaluation_and_the_report_do_not_import_the_planner():
    runtime = [m for m in import_graph() if step(m) is not None]
    assert [(m, i) for m in runtime for i in import_graph()[m] if i in PLANNER] == []


def test_every_stage_of_the_registry_has_its_recipe_and_schema_block():
    import yaml

    from tuneflow.stages import STAGES

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["$defs"]["stages"]["properties"]) == set(STAGES)
    for name, stage in STAGES.items():
        assert (REPO / stage.recipe_file).is_file(), stage.recipe_file
        assert schema["$defs"]["stages"]["properties"][name] == {"$ref": f"#/$defs/{name}_stage"}


if __name__ == "__main__":
    for module, imports in import_graph().items():
        print(f"{module} -> {', '.join(sorted(imports)) or '-'}", file=sys.stdout)


def test_every_stage_s_training_rule_goes_to_the_gpu_partition_with_the_preemption_signal():
    """The Slurm profiles name rules one by one: a stage added to the registry without its line
    there would train on the CPU partition without the TERM-before-the-time-limit that checkpoints."""
    import yaml

    from tuneflow.stages import STAGE_NAMES

    for profile in ("slurm", "ci-slurm"):
        rules = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())["set-resources"]
        gpu = rules["merge"]["slurm_partition"]
        for stage in STAGE_NAMES:
            block = rules.get(f"train_{stage}") or {}
            assert block.get("slurm_partition") == gpu and "--signal=TERM@" in block.get("slurm_extra", ""), (profile, stage)
