"""The speed path is decided once from what the machine has (sftbench.core.capabilities), on CPU by injecting each
missing capability through the probe functions: no Triton, Triton but a GPU too old for it, no flash varlen,
bf16 only emulated.  Each case asserts the chosen path and its exact log line."""

from __future__ import annotations

import hashlib
import json

import pytest

from sftbench.model.tiny import PLAIN_CHATML
import torch

import sftbench.core.capabilities as capm
from sftbench.core.capabilities import decide_train_path, probe
from sftbench.core.errors import UserError

CUDA = torch.device("cuda", 0)


def fake_gpu(monkeypatch, cap: tuple[int, int], name: str, *, triton: bool = True, varlen: bool = True,
             bf16: bool | None = None):
    """Make probe(CUDA) see a GPU of compute capability `cap` (no GPU needed)."""
    def no_triton():
        raise ImportError("No module named 'triton'")

    def no_varlen():
        raise ImportError("No module named 'torch.nn.attention.varlen'")

    monkeypatch.setattr(capm, "_cuda_capability", lambda dev: cap)
    monkeypatch.setattr(capm, "_gpu_name", lambda dev: name)
    monkeypatch.setattr(capm, "_import_triton", (lambda: None) if triton else no_triton)
    monkeypatch.setattr(capm, "_triton_usable", lambda: True)
    monkeypatch.setattr(capm, "_import_varlen", (lambda: None) if varlen else no_varlen)
    monkeypatch.setattr(capm, "_bf16_query", lambda dev, c: cap >= (8, 0) if bf16 is None else bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: name)


def auto_path(**kw):
    from sftbench.core.device import pick_precision

    prec = pick_precision(CUDA, precision=kw.pop("precision", "auto"))
    return decide_train_path(probe(CUDA), precision=prec.name, grad_scaler=prec.use_grad_scaler, **kw), prec


def test_no_triton_runs_eager_layers_and_keeps_varlen_bf16(monkeypatch):
    fake_gpu(monkeypatch, (8, 9), "NVIDIA GeForce RTX 4060 Laptop GPU", triton=False)
    path, _ = auto_path()
    assert (path.engine, path.compile, path.attention, path.precision, path.grad_scaler, path.cuda_graphs) == \
        ("fast", False, "varlen", "bf16", False, False)
    assert path.line() == ("path: fast engine, eager layers (no Triton: import failed), attention varlen (flash, sm89), "
                           "bf16 (native on sm89), CUDA graphs off (eager layers)")
    with pytest.raises(UserError) as e:
        auto_path(compile="on")
    assert str(e.value) == ("--compile on cannot run here (no Triton: import failed); use --compile auto or off "
                            "(PyTorch's Windows wheels ship without Triton; `pip install triton-windows` adds it).")


def test_env_switch_disables_triton_for_gpu_box_checks(monkeypatch):
    real_probe = capm._import_triton
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(capm, "_import_triton", real_probe)  # the module's own probe, with the switch set
    monkeypatch.setenv(capm.DISABLE_TRITON_ENV, "1")
    assert probe(CUDA).triton_missing == "disabled by SFTBENCH_DISABLE_TRITON=1"


def test_triton_but_gpu_too_old_p100(monkeypatch):
    fake_gpu(monkeypatch, (6, 0), "Tesla P100-PCIE-16GB")
    path, prec = auto_path()
    assert (path.compile, path.attention, path.precision, path.grad_scaler, path.cuda_graphs) == \
        (False, "buckets", "fp16", True, False)
    assert prec.autocast_dtype == torch.float16 and prec.use_grad_scaler
    assert path.line() == ("path: fast engine, eager layers (no Triton: Triton needs sm70+, this GPU is sm60), "
                           "attention buckets (no flash varlen: flash needs sm80+, this GPU is sm60), "
                           "fp16+scaler (bf16 not native on sm60), CUDA graphs off (eager layers)")
    assert path.to_dict()["capabilities"]["capability"] == "sm60"


def test_no_varlen_in_this_torch_uses_buckets(monkeypatch):
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3", varlen=False)
    path, _ = auto_path()
    assert (path.compile, path.attention, path.precision, path.cuda_graphs) == (True, "buckets", "bf16", False)
    assert path.line() == (f"path: fast engine, compiled layers (Triton), attention buckets (no flash varlen: torch "
                           f"{torch.__version__} has no torch.nn.attention.varlen), bf16 (native on sm90), "
                           f"CUDA graphs off (attention buckets)")
    with pytest.raises(UserError, match=r"^--attention varlen cannot run here \(torch .* has no torch.nn.attention"
                                        r".varlen\); use --attention auto.$"):
        auto_path(attention="varlen")


def test_emulated_only_bf16_t4_trains_fp16_with_scaler(monkeypatch):
    fake_gpu(monkeypatch, (7, 5), "Tesla T4", bf16=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    from sftbench.core.device import auto_precision, pick_precision

    assert auto_precision(CUDA) == "fp16"  # torch's default is_bf16_supported() would have said True (emulation)
    asked_bf16 = pick_precision(CUDA, precision="bf16")
    assert asked_bf16.name == "fp16" and asked_bf16.reason == ("Tesla T4 has no bf16: using fp16 autocast with a "
                                                               "gradient scaler instead")
    path, _ = auto_path()
    assert path.line() == ("path: fast engine, compiled layers (Triton), attention buckets (no flash varlen: flash "
                           "needs sm80+, this GPU is sm75), fp16+scaler (bf16 not native on sm75), CUDA graphs off "
                           "(attention buckets)")


def test_bf16_query_asks_for_native_bf16_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "device", lambda dev: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: calls.append(including_emulation) or including_emulation)
    assert capm._bf16_query(CUDA, (7, 5)) is False and calls == [False]


def test_all_features_present_h100_and_forced_choices(monkeypatch):
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    path, _ = auto_path()
    assert path.line() == ("path: fast engine, compiled layers (Triton), attention varlen (flash, sm90), bf16 (native "
                           "on sm90), CUDA graphs on (compiled varlen rows)")
    forced, _ = auto_path(compile="off", attention="buckets", precision="fp16", cuda_graphs=True)
    assert forced.line() == ("path: fast engine, eager layers (--compile off), attention buckets (--attention buckets), "
                             "fp16+scaler (--precision auto), CUDA graphs off (eager layers)")
    assert auto_path(cuda_graphs=False)[0].why["cuda_graphs"] == "--cuda_graphs False"
    ref = decide_train_path(probe(CUDA), engine="reference", precision="bf16")
    assert ref.line() == "path: reference engine, bf16 (native on sm90)"


def test_cpu_path():
    caps = probe("cpu")
    assert (caps.triton_missing, caps.varlen_missing, caps.bf16_native) == ("CPU", "not a CUDA device", False)
    path = decide_train_path(caps, precision="fp32")
    assert path.line() == ("path: fast engine, eager layers (CPU), attention sdpa (CPU), fp32 (CPU), "
                           "CUDA graphs off (CPU)")


def test_fast_engine_falls_back_to_eager_when_compile_fails_at_the_first_step(tiny_model_dir, monkeypatch, capsys):
    from transformers import LlamaForCausalLM

    from sftbench.core.device import Precision
    from sftbench.engine import fast_model as fm
    from sftbench.train.dist import Dist
    from sftbench.train.engines import FastEngine

    class TritonMissing(RuntimeError):
        pass

    m = fm.prepare_fast_model(LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), attention="sdpa",
                              compile=True)
    real, calls = fm.packed_loss_sum, []

    def flaky(model, batch):
        calls.append(model._sftbench_fast.compile)
        if model._sftbench_fast.compile:
            raise RuntimeError("backend failed") from TritonMissing("Cannot find a working triton installation.")
        return real(model, batch)

    monkeypatch.setattr(fm, "packed_loss_sum", flaky)
    cpu = torch.device("cpu")
    e = FastEngine(m, cpu, Dist(), Precision(cpu, None, False, "t"), torch.amp.GradScaler("cpu", enabled=False),
                   token_budget=64, pad_id=2)
    e.path = decide_train_path(probe(cpu), precision="fp32", compile="on")
    ex = [{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]}]
    s, real_tokens = e.window([ex], 3, seed=0)
    assert calls == [True, False] and m._sftbench_fast.compile is False and real_tokens == 4 and float(s) > 0
    out = capsys.readouterr().out
    assert ("[train] fast engine: torch.compile failed (TritonMissing: Triton missing or unusable on this GPU); "
            "running the layers eagerly from now on") in out
    assert e.path.line() in out and "eager layers (compile failed: TritonMissing" in e.path.line()


def test_cpu_run_records_its_path_in_sft_config(tiny_model_dir, tmp_path, capsys):
    from sftbench.config.train import parse_train_config
    from sftbench.data.demo import make_conversations
    from sftbench.train.loop import train

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(8, seed=1)))
    out = tmp_path / "run"
    train(parse_train_config(["--model_name_or_path", str(tiny_model_dir), "--data_path", str(data), "--output_dir",
                              str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
                              "--gradient_accumulation_steps", "1", "--model_max_length", "128", "--engine", "fast",
                              "--progress", "False", "--data_cache_dir", "none", "--save_steps", "1"]))
    cfg = json.loads((out / "sft_config.json").read_text())
    line = "path: fast engine, eager layers (CPU), attention sdpa (CPU), fp32 (CPU), CUDA graphs off (CPU)"
    assert cfg["resolved_path"]["line"] == line and cfg["precision"] == "fp32" and cfg["compile"] == "auto"
    assert (cfg["resolved_path"]["engine"], cfg["resolved_path"]["compile"], cfg["resolved_path"]["attention"]) == \
        ("fast", False, "sdpa")
    assert capsys.readouterr().out.count("[train] " + line) == 1


# ----------------------------------------------------------------------------- results say how they were produced

def test_summary_records_the_generation_path(tiny_model_dir, tmp_path, capsys):
    from sftbench.eval import run as runner
    from sftbench.tasks import data as ifdata

    s = runner.evaluate_checkpoint(str(tiny_model_dir), tmp_path / "ev", runner.EvalConfig(
        data=str(ifdata.TINY_PROMPTS), limit=1, max_new_tokens=2, device="cpu", batch_size=1))
    assert s["path"] == {"backend": "hf", "attention": "hf", "compile": False, "cuda_graphs": False, "dtype": "fp32",
                         "why": "transformers generate()",
                         "template_sha256": hashlib.sha256(PLAIN_CHATML.encode()).hexdigest()}
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["path"] == s["path"]
    logged = capsys.readouterr()
    assert ("generation path: hf backend, hf attention, eager, CUDA graphs off, fp32 (transformers generate())"
            in logged.out + logged.err)


def test_generation_path_follows_triton(monkeypatch):
    from sftbench.core.capabilities import generation_line, generation_path

    fake_gpu(monkeypatch, (8, 9), "RTX 4060", triton=False)
    p = generation_path(probe(CUDA), "fast", "bf16")
    assert generation_line(p) == ("generation path: fast backend, torch attention, eager, CUDA graphs on, bf16 "
                                  "(no Triton: import failed)")
    fake_gpu(monkeypatch, (8, 9), "RTX 4060")
    assert generation_line(generation_path(probe(CUDA), "fast", "bf16")) == (
        "generation path: fast backend, triton attention, compiled, CUDA graphs on, bf16 (Triton)")


def _with_path(results_dir, ck: str, path: dict):
    f = results_dir / ck / "summary.json"
    s = json.loads(f.read_text())
    s["path"] = path
    f.write_text(json.dumps(s))


FAST = {"backend": "fast", "attention": "triton", "compile": True, "cuda_graphs": True, "dtype": "bf16", "why": "Triton"}


def test_report_refuses_to_rank_runs_of_different_limits(tmp_path):
    from fixtures_results import make_fake_sweep

    from sftbench.analysis.report import main, write_report

    _, a = make_fake_sweep(tmp_path / "A", name="a", n=30)  # --limit 30
    _, b = make_fake_sweep(tmp_path / "B", name="b")  # --limit 60
    with pytest.raises(UserError) as e:
        write_report([a, b], tmp_path / "cmp")
    assert str(e.value).startswith("these runs were evaluated with different eval settings or generation paths "
                                   f"(limit: 30 ({a}), 60 ({b})), so one ranking would mix them")
    assert str(e.value).endswith("or pass --allow_mixed_settings to report them anyway (the report says so).")
    assert not (tmp_path / "cmp").exists()
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp"), "--allow_mixed_settings"]) == 0
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert f"**a: mixed eval settings (--allow_mixed_settings): across runs: limit: 30 ({a}), 60 ({b}).**" in md
    assert "a generated by: not recorded." in md


def test_report_refuses_a_curve_of_two_backends_and_names_the_path(tmp_path):
    from fixtures_results import make_fake_sweep

    from sftbench.analysis.report import write_report

    _, res = make_fake_sweep(tmp_path, name="r")
    cks = sorted(p.name for p in res.iterdir() if p.is_dir() and p.name.startswith("checkpoint-"))
    for ck in cks:
        _with_path(res, ck, FAST)
    out = write_report([res])
    assert "Generated by: fast backend, triton attention, compiled, CUDA graphs on, bf16." in out["md"].read_text()
    _with_path(res, cks[-1], dict(FAST, attention="torch", compile=False, why="no Triton: import failed"))
    with pytest.raises(UserError) as e:
        write_report([res])
    assert str(e.value).startswith(f"{res}: its checkpoints were evaluated with different eval settings or generation "
                                   f"paths (attention: ")
    assert '"torch" (checkpoint-5)' in str(e.value) and "compile: " in str(e.value)
    out = write_report([res], allow_mixed_settings=True)
    md = out["md"].read_text()
    assert "**Mixed eval settings in this curve (--allow_mixed_settings): attention:" in md
    assert "checkpoint-5: fast backend, torch attention, eager, CUDA graphs on, bf16" in md


# ----------------------------------------------------------------------------- Windows: locked files

@pytest.fixture
def windows_locks(monkeypatch):
    import sftbench.core.io as sio

    waits = []
    monkeypatch.setattr(sio, "LOCKS_POSSIBLE", True)
    monkeypatch.setattr(sio, "_sleep", waits.append)
    return sio, waits


def _flaky_replace(monkeypatch, sio, fails: int | None):
    real, calls = sio.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if fails is None or len(calls) <= fails:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        return real(src, dst)

    monkeypatch.setattr(sio.os, "replace", replace)
    return calls


def test_locked_result_file_is_replaced_after_retries(tmp_path, monkeypatch, windows_locks):
    sio, waits = windows_locks
    f = tmp_path / "sweep.csv"
    f.write_text("old\n")
    calls = _flaky_replace(monkeypatch, sio, fails=2)
    sio.atomic_write_text(f, "new\n")
    assert f.read_text() == "new\n" and len(calls) == 3 and waits == [0.2, 0.5]
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]  # no temp file left


def test_file_locked_for_good_is_a_user_error_naming_it(tmp_path, monkeypatch, windows_locks):
    sio, waits = windows_locks
    f = tmp_path / "sweep.csv"
    f.write_text("old\n")
    _flaky_replace(monkeypatch, sio, fails=None)
    with pytest.raises(UserError) as e:
        sio.atomic_write_text(f, "new\n")
    assert str(e.value) == (f"could not replace {f}: another program has it open (on Windows, e.g. the file open in "
                            f"Excel, an editor or a sync client). Close it in the program that has it open and run "
                            f"the same command again.")
    assert waits == [0.2, 0.5, 1.0, 2.0] and f.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]


def test_permission_error_off_windows_is_not_retried(tmp_path, monkeypatch):
    import sftbench.core.io as sio
    from sftbench.core.errors import DiskWriteError

    monkeypatch.setattr(sio, "LOCKS_POSSIBLE", False)
    _flaky_replace(monkeypatch, sio, fails=None)
    with pytest.raises(DiskWriteError, match="permission denied"):
        sio.atomic_write_text(tmp_path / "x.json", "{}")


def test_pruning_retries_a_held_checkpoint(tmp_path, monkeypatch, windows_locks):
    import shutil

    from sftbench.train import checkpoint as ck

    sio, waits = windows_locks
    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}" / "training_state").mkdir(parents=True)
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_text("w")
    monkeypatch.setattr(ck, "list_checkpoints", lambda out: [(s, tmp_path / f"checkpoint-{s}") for s in (1, 2)])
    real, calls = shutil.rmtree, []

    def rmtree(p, *a, **k):
        calls.append(p)
        if len(calls) <= 2:
            raise PermissionError(13, "[WinError 32] The process cannot access the file")
        return real(p, *a, **k)

    monkeypatch.setattr(sio.shutil, "rmtree", rmtree)
    assert ck.prune_checkpoints(tmp_path, keep_state=1, keep_weights=None) == ["removed optimizer state of checkpoint-1"]
    assert not (tmp_path / "checkpoint-1" / "training_state").exists() and waits == [0.2, 0.5]
    monkeypatch.setattr(sio.shutil, "rmtree", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "held")))
    with pytest.raises(UserError, match=r"^could not remove .*checkpoint-1: another program has it open"):
        ck.prune_checkpoints(tmp_path, keep_state=None, keep_weights=1)


# ----------------------------------------------------------------------------- Windows: WDDM, a CPU torch next to a GPU

def test_cpu_torch_next_to_a_gpu_says_how_to_install_a_cuda_build(monkeypatch):
    import sftbench.core.device as dev

    monkeypatch.setattr(dev, "_SAID", set())
    monkeypatch.setattr(dev, "_nvidia_smi_gpus", lambda: ["NVIDIA GeForce RTX 4060 Laptop GPU"])
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    notes = dev.start_notes(torch.device("cpu"))
    assert notes == [f"an NVIDIA GPU is here (NVIDIA GeForce RTX 4060 Laptop GPU, nvidia-smi sees it) but this torch "
                     f"{torch.__version__} is a CPU build, so this runs on the CPU. Install a CUDA build of torch into "
                     f"this environment: `pip install --force-reinstall torch --index-url "
                     f"https://download.pytorch.org/whl/cu124` (the index for your driver's CUDA version: "
                     f"https://pytorch.org/get-started/locally/)."]
    assert dev.start_notes(torch.device("cpu")) == []  # said once per process
    monkeypatch.setattr(dev, "_SAID", set())
    monkeypatch.setattr(dev, "_nvidia_smi_gpus", lambda: [])
    assert dev.start_notes(torch.device("cpu")) == []  # no GPU: nothing to say


def test_wddm_is_said_once_at_start(monkeypatch):
    import sftbench.core.device as dev
    import sftbench.core.memory as mem

    monkeypatch.setattr(dev, "_SAID", set())
    monkeypatch.setattr(mem, "_driver_model", lambda index: "WDDM")
    assert dev.start_notes(CUDA) == [mem.WDDM_NOTE]
    assert "NVML reports no per-process memory" in mem.WDDM_NOTE and "Sysmem Fallback Policy" in mem.WDDM_NOTE
    assert dev.start_notes(CUDA) == []
    monkeypatch.setattr(dev, "_SAID", set())
    monkeypatch.setattr(mem, "_driver_model", lambda index: "TCC")
    assert dev.start_notes(CUDA) == []
    assert mem._driver_model.__name__ and mem.wddm_note() is None


def test_driver_model_off_windows_is_none():
    import sftbench.core.memory as mem

    assert mem._driver_model(0) is None  # Linux/macOS: no WDDM


def test_planner_shows_each_gpus_path():
    from sftbench.core.gpus import get_gpu
    from sftbench.plan.report import planned_path

    assert planned_path(get_gpu("4060"), "fast") == "varlen bf16, compiled, graphs (no Triton: eager, no graphs)"
    assert planned_path(get_gpu("t4"), "fast") == "buckets fp16+scaler, compiled (no Triton: eager)"
    assert planned_path(get_gpu("p100"), "fast") == "buckets fp16+scaler, eager"  # Triton does not support sm60
    assert planned_path(get_gpu("t4"), "reference") == "reference fp16+scaler"
    assert planned_path(get_gpu("h100"), "reference") == "reference bf16"
