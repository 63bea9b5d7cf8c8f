"""docs/ARCHITECTURE.md's import rules, checked: each stage imports only what the map allows.

Every `import` / `from ... import` in a module counts, also those inside functions (lazy imports are still
dependencies).  A rule is a list of allowed prefixes of project modules; third-party imports are free,
except where a module must stay importable without torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("sftbench", "ifeval", "analysis", "conversation_func", "loss_functions", "train_hw_parallel")
LIBRARY = ("sftbench.cli", "sftbench.errors", "sftbench.io", "sftbench.stats", "sftbench.rundir",
           "sftbench.fingerprint")

# stage (glob of files) -> project modules it may import (prefixes); its own package is always allowed
RULES = {
    "sftbench/loss.py": (),
    "sftbench/llama.py": (),
    "sftbench/data/*.py": LIBRARY + ("sftbench.data", "sftbench.loss", "sftbench.chat_template", "sftbench.models",
                                     "sftbench.tiny", "sftbench.train.config", "sftbench.augment",
                                     "sftbench.contamination", "ifeval.scoring", "ifeval.data", "ifeval.prompts",
                                     "ifeval.generate"),
    "sftbench/train/*.py": LIBRARY + ("sftbench.train", "sftbench.data", "sftbench.loss", "sftbench.llama",
                                      "sftbench.device", "sftbench.memory", "sftbench.models", "sftbench.plan",
                                      "sftbench.chat_template", "sftbench.augment", "sftbench.contamination"),
    "sftbench/plan/*.py": LIBRARY + ("sftbench.plan", "sftbench.gpus", "sftbench.train.config",
                                     "sftbench.train.memory_budget", "sftbench.train.fast_model",
                                     "sftbench.data", "sftbench.models", "sftbench.device", "conversation_func"),
    "ifeval/*.py": LIBRARY + ("ifeval", "sftbench.chat_template", "sftbench.device", "sftbench.memory",
                              "sftbench.models", "sftbench.llama", "sftbench.nltk_data", "sftbench.tiny"),
    "analysis/*.py": LIBRARY + ("analysis", "ifeval.results", "ifeval.config"),
}
# analysis reads files through the results schema only: of ifeval, just these modules
ANALYSIS_IFEVAL = {"ifeval.results", "ifeval.config"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("ifeval", "sftbench", "analysis"):  # `from sftbench import stats` imports sftbench.stats
                out.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return {m for m in out if m.split(".")[0] in PROJECT}


def _allowed(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("pattern", sorted(RULES))
def test_stage_imports_follow_the_map(pattern):
    files = sorted(ROOT.glob(pattern))
    assert files, pattern
    bad = []
    for f in files:
        own = ".".join(f.relative_to(ROOT).with_suffix("").parts[:-1]) or f.stem
        for mod in _imports(f):
            if not (_allowed(mod, RULES[pattern]) or _allowed(mod, (own,))):
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_analysis_uses_only_the_results_schema_of_ifeval():
    bad = [f"{f.name}: {m}" for f in ROOT.glob("analysis/*.py") for m in _imports(f)
           if m.startswith("ifeval") and m not in ANALYSIS_IFEVAL]
    assert not bad, bad


def test_schema_planner_and_report_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import ifeval.results, ifeval.config, sftbench.train.memory_budget, sftbench.plan.fast, analysis.verdict\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
