"""docs/ARCHITECTURE.md's layers, checked for every module of the product.

Every project module has a floor (its layer); it may import only modules on its own floor or below.  Every
`import` / `from ... import` counts, also those inside functions (lazy imports are still dependencies), and
relative imports are resolved.  A module that no layer claims fails the test, so a new file must be placed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("sftbench", "ifeval", "analysis", "conversation_func", "loss_functions", "train_hw_parallel")

# (prefix, floor); the longest matching prefix wins.  Lower floors never import higher ones.
LAYERS = [
    ("sftbench.core", 0),        # errors io cli device capabilities memory fingerprint stats rundir gpus nltk_data
    ("sftbench.model", 1),       # llama maths, the chat-template parser, offline SmolLM2, tiny model
    ("sftbench.loss", 2),
    ("sftbench.engine", 3),      # training forward + the decode engine
    ("sftbench.tasks", 4),       # prompt sets + scorers
    ("sftbench.data", 5),        # records .. packing, augment, contamination
    ("sftbench.config", 6),      # the composite TrainConfig
    ("sftbench.presets", 6),     # the presets' flag lists (no imports)
    ("sftbench.plan", 7),
    ("sftbench.train", 8),
    ("sftbench.eval", 9),
    ("sftbench.analysis", 10),
    ("sftbench.search", 11),
    ("sftbench.augment", 12), ("sftbench.contamination", 12), ("sftbench.__main__", 12), ("sftbench", 12),
    ("ifeval", 12), ("analysis", 12), ("train_hw_parallel", 12), ("conversation_func", 12), ("loss_functions", 12),
]
# layers that must import without torch (a report, the results schema, the planner)
TORCH_FREE = ["sftbench.eval.results", "sftbench.eval.config", "sftbench.engine.memory_budget", "sftbench.plan.fast",
              "sftbench.analysis.verdict", "sftbench.analysis.report", "sftbench.config.train"]


def product_modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(ROOT.glob("sftbench/**/*.py")) + sorted(ROOT.glob("ifeval/**/*.py")) + sorted(
            ROOT.glob("analysis/**/*.py")) + [ROOT / f"{m}.py" for m in PROJECT[3:]]:
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def floor(mod: str) -> int | None:
    best = None
    for prefix, fl in LAYERS:
        if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, fl)
    return None if best is None else best[1]


def imports_of(mod: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    known = product_modules()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)  # `from pkg import module` imports pkg.module
    return {m for m in out if m.split(".")[0] in PROJECT}


def violations(modules: dict[str, Path]) -> list[str]:
    bad = []
    for mod, path in modules.items():
        own = floor(mod)
        if own is None:
            bad.append(f"{mod}: no layer claims it (add it to LAYERS and docs/ARCHITECTURE.md)")
            continue
        for dep in sorted(imports_of(mod, path)):
            fl = floor(dep)
            if fl is None or fl > own:
                bad.append(f"{mod} (floor {own}) imports {dep} (floor {fl})")
    return bad


def test_every_module_imports_only_its_floor_or_below():
    mods = product_modules()
    assert len(mods) > 60, sorted(mods)
    bad = violations(mods)
    assert not bad, "\n".join(bad)


def test_a_planted_upward_import_fails(tmp_path):
    planted = tmp_path / "errors.py"
    planted.write_text("def f():\n    from sftbench.train import loop  # lazy, still a dependency\n")
    bad = violations({"sftbench.core.errors": planted})
    assert bad == ["sftbench.core.errors (floor 0) imports sftbench.train.loop (floor 8)"]
    rel = tmp_path / "masking.py"
    rel.write_text("from ..eval import results\n")
    assert violations({"sftbench.data.masking": rel}) == [
        "sftbench.data.masking (floor 5) imports sftbench.eval.results (floor 9)"]


def test_an_unplaced_module_fails(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("")
    assert violations({"newtop": f}) == ["newtop: no layer claims it (add it to LAYERS and docs/ARCHITECTURE.md)"]


@pytest.mark.parametrize("mod", TORCH_FREE)
def test_schema_planner_and_report_import_without_torch(mod):
    code = f"import sys; sys.modules['torch'] = None\nimport {mod}\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
