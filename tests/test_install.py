"""`pip install` without the repository: the wheel's console command runs the pipeline from any directory.

The wheel is built from a copy of the sources (offline: --no-build-isolation, setuptools from this venv) and
installed with --no-deps into a fresh venv; a .pth file lends it this venv's third-party packages (torch,
transformers, ...), but not this venv's editable sftbench (.pth files of a directory a .pth file adds are not
processed), so the checkout cannot be imported.  From a directory whose path has spaces, on the tiny model:
`sftbench train` (default --data_path: the demo data shipped in the wheel) -> `sftbench eval` -> `sftbench sweep`
-> `sftbench report`.  Also: the presets give the same trainer argv from bash and from `sftbench train --preset`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "sftbench", "train_hw_parallel.py", "conversation_func.py", "loss_functions.py"]


def _venv_exe(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / (name + (".exe" if os.name == "nt" else ""))


def _run(cmd, cwd, env, timeout=600):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, its site-packages): the wheel installed into a fresh venv."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        s = ROOT / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(s, src / name)
    # without PYTHONPATH: a checkout on it (scripts/_env.sh puts one there) shows pip its sftbench.egg-info, and pip
    # would then skip installing the wheel as "already satisfied"
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp / "wheels", src], tmp, env)
    wheels = sorted((tmp / "wheels").glob("sftbench-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    py = _venv_exe(venv, "python")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheels[0]], tmp, env)
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_sftbench_test_deps.pth").write_text("".join(p + "\n" for p in sorted(ours)))
    return venv, site


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               SFTBENCH_CACHE=str(tmp / "cache dir"), MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="")
    return env


@pytest.mark.slow
def test_wheel_console_commands_end_to_end(installed, tiny_model_dir, tmp_path):
    venv, site = installed
    work = tmp_path / "a dir with spaces"
    work.mkdir()
    env = _env(tmp_path)
    py, sftbench = _venv_exe(venv, "python"), _venv_exe(venv, "sftbench")

    # the installed package, not the checkout; the default --data_path is the shipped demo set
    where = _run([py, "-c", "import sftbench, train_hw_parallel; from sftbench.config.train import TrainConfig; "
                  "print(sftbench.__file__); print(train_hw_parallel.__file__); print(TrainConfig().data_path)"],
                 work, env).stdout.splitlines()
    for f in where:
        assert Path(f).resolve().is_relative_to(site.resolve()), where
    assert where[2].endswith(os.path.join("sftbench", "data", "demo_chat.jsonl")) and Path(where[2]).is_file()

    usage = _run([sftbench, "--help"], work, env).stdout
    for cmd in ("train", "eval", "sweep", "report", "plan", "augment", "search", "demo", "contamination"):
        assert f"\n  {cmd} " in usage, usage

    _run([sftbench, "train", "--model_name_or_path", tiny_model_dir, "--output_dir", "run one", "--max_steps", "2",
          "--save_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
          "--model_max_length", "128", "--device", "cpu", "--progress", "False", "--data_cache_dir", "none"], work, env)
    run = work / "run one"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (run / "checkpoint-2" / "config.json").is_file()
    saved = json.loads((run / "sft_config.json").read_text())
    assert Path(saved["data_path"]).resolve().is_relative_to(site.resolve()), saved["data_path"]

    small = ["--limit", "2", "--max_new_tokens", "4", "--device", "cpu"]
    _run([sftbench, "eval", run / "checkpoint-2", "one eval", *small], work, env)
    summary = json.loads((work / "one eval" / "summary.json").read_text())
    assert summary["counts"]["prompts"] == 2, summary
    # the prompts shipped in the wheel
    assert Path(summary["settings"]["data_path"]).resolve().is_relative_to(site.resolve()), summary["settings"]

    _run([sftbench, "sweep", "run one", "results one", "--include_base", *small], work, env)
    res = work / "results one"
    rows = (res / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"], rows
    assert all((res / f"checkpoint-{s}" / "summary.json").is_file() for s in (0, 1, 2))

    _run([sftbench, "report", "results one"], work, env)
    report = (res / "report.md").read_text()
    assert "smoke test" in report and "Did training help?" in report, report[:3000]


def _bash_argv(script: str, args: list[str], env: dict, tmp: Path) -> list[str]:
    """The argv scripts/<script> hands to python (a stand-in PYTHON prints it; `-m sftbench.presets` runs for real)."""
    fake = tmp / "fakepy"
    fake.write_text('#!/usr/bin/env bash\nif [ "$1" = -m ] && [ "$2" = sftbench.presets ]; then exec "$REAL_PY" "$@"; fi\n'
                    '"$REAL_PY" -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"\n')
    fake.chmod(0o755)
    p = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env={**env, "PYTHON": str(fake), "REAL_PY": sys.executable},
                       cwd=tmp, text=True, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", ["4060_8gb", "4060_aggressive", "min_vram"])
def test_presets_give_the_same_argv_from_bash_and_console(name, tmp_path, monkeypatch):
    import train_hw_parallel
    from sftbench import __main__ as cli
    from sftbench.presets import PRESETS, preset_argv

    args = ["MODEL dir", "data.jsonl", "out dir", "--max_steps", "3", "--learning_rate", "1e-5"]
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "DATA", "OUT", "NPROC")}
    bash = _bash_argv(f"sft_{name}.sh", args, env, tmp_path)
    assert bash[0] == str(ROOT / "train_hw_parallel.py")
    seen = []
    monkeypatch.setattr(train_hw_parallel, "main", lambda argv: seen.append(argv) or 0)
    for k in ("MODEL", "DATA", "OUT"):
        monkeypatch.delenv(k, raising=False)
    assert cli.main(["train", "--preset", name, *args]) == 0
    assert seen == [bash[1:]]
    assert bash[1:] == (["--output_dir", "out dir", "--model_name_or_path", "MODEL dir", "--data_path", "data.jsonl",
                         "--precision", "auto"] + PRESETS[name] + ["--max_steps", "3", "--learning_rate", "1e-5"])
    # env vars MODEL/DATA/OUT, as the bash launcher reads them
    assert _bash_argv(f"sft_{name}.sh", ["--seed", "1"], {**env, "MODEL": "m", "OUT": "o"}, tmp_path)[1:] == \
        preset_argv(name, ["--seed", "1"], {"MODEL": "m", "OUT": "o"})


def test_preset_errors(capsys):
    from sftbench import __main__ as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--preset", "8gb"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("sftbench train: error: no preset named '8gb'; the presets are: 4060_8gb, "
                                       "4060_aggressive, min_vram\n")
    assert cli.main(["nope"]) == 2
    assert "sftbench: error: unknown command 'nope'" in capsys.readouterr().err


def test_every_preset_flag_is_a_trainer_flag():
    from sftbench.config.train import parse_train_config
    from sftbench.presets import PRESETS, preset_flags

    for name in PRESETS:
        cfg = parse_train_config(preset_flags(name))  # unknown flags exit 2
        assert cfg.precision == "auto" and cfg.gradient_checkpointing is True, name


def test_shipped_grid_by_name_and_old_path(tmp_path, monkeypatch):
    from sftbench.__main__ import GRIDS, shipped_grid

    monkeypatch.chdir(tmp_path)
    assert shipped_grid("default") == str(GRIDS / "default.json")
    assert shipped_grid("scripts/grids/default.json") == str(GRIDS / "default.json")
    assert shipped_grid("other.json") == "other.json"
    (tmp_path / "default").write_text("{}")
    assert shipped_grid("default") == "default"  # a file of that name here wins


def test_demo_data_is_the_generator_output():
    from sftbench.data.demo import DEMO_DATA, make_conversations

    lines = DEMO_DATA.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == make_conversations(300, 0)


def test_demo_runs_the_demo_scripts_steps():
    from sftbench.__main__ import DEMO_TRAIN, DemoConfig, demo_argvs

    train, sweep, report = demo_argvs(DemoConfig(out="r x", results="res x"), "STAMP")
    assert train == ["--model_name_or_path", "smollm2-135m-instruct-offline", "--output_dir", "r x"] + DEMO_TRAIN
    assert sweep == ["r x", "res x", "--include_base", "--limit", "8", "--max_new_tokens", "64", "--batch_size", "8"]
    assert report == ["res x"]
    train, sweep, report = demo_argvs(DemoConfig(limit=2, data="d.jsonl"), "STAMP")
    assert train[:6] == ["--model_name_or_path", "smollm2-135m-instruct-offline", "--data_path", "d.jsonl",
                         "--output_dir", "runs/demo-STAMP"]
    assert sweep[:2] == ["runs/demo-STAMP", "results/demo-STAMP"] and sweep[4] == "2" and report == ["results/demo-STAMP"]
    # scripts/demo.sh hands over to `sftbench demo` after its set-up
    assert '-m sftbench demo "${args[@]}"' in (ROOT / "scripts" / "demo.sh").read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_launchers_find_a_windows_venv(tmp_path):
    """scripts/_env.sh's venv_python: POSIX .venv/bin/python, Windows .venv/Scripts/python.exe (Git Bash), else nothing."""
    for layout in ("bin/python", "Scripts/python.exe"):
        exe = tmp_path / layout.split("/")[0] / ".venv" / layout
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        out = subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/_env.sh"; venv_python "$1"', "_", str(exe.parent.parent)],
                             text=True, capture_output=True, check=True).stdout
        assert out == f"{exe}\n"
    out = subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/_env.sh"; venv_python "$1"', "_", str(tmp_path / "none")],
                         text=True, capture_output=True, check=True).stdout
    assert out == ""
    for script in ("setup.sh", "demo.sh", "test.sh"):
        text = (ROOT / "scripts" / script).read_text()
        code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        assert ". .venv/bin/activate" not in code and "${PYTHON:-python3}" not in code and ("venv_python .venv" in code or 'venv_python "$PWD/.venv"' in code), script
