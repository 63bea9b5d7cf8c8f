"""The Colab and Kaggle quickstarts execute headless on CPU with the tiny model.

GPU and mount cells skip themselves (no CUDA, no google.colab, no /kaggle); the environment points the
install cell at this checkout, training at a tiny model WITHOUT a chat template (as base SmolLM2-135M, the
notebooks' default) with two CPU steps (+1 resumed), and the persistent storage at a temp dir.  The sweep cell
runs too (2 prompts, 8 new tokens): the starting model is evaluated with the run's own template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["colab_quickstart.ipynb", "kaggle_quickstart.ipynb"]


def _run(nb_path: Path, env: dict, cwd: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(nb_path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") or json.dumps(o.get("data", {})))
    return "\n".join(out)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_covers_the_workflow(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    src = "\n".join(c.source for c in nb.cells)
    for must in ("train --preset 4060_8gb", "--resume_from_checkpoint latest", "{SFTBENCH} sweep", "--include_base",
                 "{SFTBENCH} report", "pip install", "{SFTBENCH} plan", "--save_total_limit 1", "for line in p.stdout"):
        assert must in src, f"{name} lacks {must}"
    if name.startswith("colab"):
        assert "drive.mount" in src
    else:
        assert "/kaggle/working" in src and "accelerate launch --num_processes 2" in src and "NPROC" in src
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    assert "YOUR_ACCOUNT" not in src and "SKIP_SWEEP" not in src


@pytest.fixture(scope="module")
def templateless_model_dir(tmp_path_factory):
    from sftbench.model.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("base") / "model", chat_template=False)


@pytest.mark.parametrize("name", NOTEBOOKS)
@pytest.mark.slow
def test_notebook_executes_on_cpu(name, templateless_model_dir, tmp_path):
    persist = tmp_path / "persist"
    env = {"SFTBENCH_LOCAL_REPO": str(ROOT), "SFTBENCH_PERSIST": str(persist), "SFTBENCH_NOTEBOOK_SMOKE": "1",
           "SFTBENCH_NOTEBOOK_MODEL": str(templateless_model_dir), "SFTBENCH_NOTEBOOK_DATA": str(ROOT / "sftbench" / "data" / "demo_chat.jsonl"),
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SFTBENCH_CACHE": str(tmp_path / "cache")}
    nb = _run(ROOT / "notebooks" / name, env, tmp_path)
    text = _text(nb)
    assert "Peak VRAM" in text  # the plan ran
    run = persist / "runs" / "smollm2-135m-strategyA"
    ckpts = sorted(p.name for p in run.glob("checkpoint-*"))
    # 2 steps, then resumed to 3: the resume cell continued the same run on the "persistent" storage
    assert ckpts == ["checkpoint-1", "checkpoint-2", "checkpoint-3"], ckpts
    assert (run / "checkpoint-3" / "config.json").is_file()
    assert "[train] " in text and "GB in" in text  # the trainer's log reached the cell; the run's size printed
    # the sweep: the start (step 0, prompted with the run's template) and the 3 checkpoints, then the report
    res = persist / "results" / "smollm2-135m-strategyA"
    rows = (res / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"], rows
    base = json.loads((res / "checkpoint-0" / "summary.json").read_text())
    assert base["settings"]["chat_template"] != "model", base["settings"]
    assert (res / "report.md").is_file() and "smoke test" in (res / "report.md").read_text()
