"""Trainer tests on CPU with the tiny 2-layer Llama: smoke run, checkpoints, exact resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftbench.data.demo import make_conversations
from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write_data(path: Path, n: int = 48) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(n, seed=1)))
    return path


def args(model_dir, data, out, **over) -> list[str]:
    base = dict(model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(out), max_steps=6,
                per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3, warmup_ratio=0.0,
                lr_scheduler_type="linear", model_max_length=128, max_rounds=6, save_steps=3, logging_steps=1,
                seed=7, data_cache_dir="none", progress=False, loss_chunk_size=64)
    base.update(over)
    return [x for k, v in base.items() for x in (f"--{k}", str(v))]


def run_train(argv):
    from sftbench.config.train import parse_train_config
    from train_hw_parallel import train

    return train(parse_train_config(argv))


def metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "chat.jsonl")


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    res = run_train(args(tiny_model_dir, data, out))
    return out, res


def test_smoke_loss_falls_and_checkpoints_load(straight_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, res = straight_run
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] < rows[0]["loss"]
    for key in ("epoch", "loss", "lr", "grad_norm", "tokens_per_s", "real_tokens"):
        assert key in rows[0]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not list(out.glob(".*.tmp"))
    for ck in ("checkpoint-3", "checkpoint-6", "."):
        d = out / ck
        model = AutoModelForCausalLM.from_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.chat_template and "<|im_start|>" in tok.chat_template
        eos = model.generation_config.eos_token_id
        assert 2 in (eos if isinstance(eos, list) else [eos])  # <|im_end|> stops generation
        assert next(model.parameters()).dtype == torch.float32
        cfg = json.loads((d / "sft_config.json").read_text())
        assert cfg["learning_rate"] == 3e-3 and cfg["max_rounds"] == 6
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert (out / "checkpoint-3" / "training_state" / "optimizer.safetensors").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))


def test_exact_resume(straight_run, tiny_model_dir, data, tmp_path):
    """6 steps straight == 3 steps + resume + 3 steps: same losses and same final weights."""
    from safetensors.torch import load_file

    out, _ = straight_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-3", resumed / "checkpoint-3")
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(out)[:3]))
    run_train(args(tiny_model_dir, data, resumed, resume_from_checkpoint="latest"))
    a, b = metrics(out), metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-7)
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-9)
    wa = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    wb = load_file(str(resumed / "checkpoint-6" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_extending_a_finished_run_uses_the_new_schedule(straight_run, tiny_model_dir, data, tmp_path):
    """A finished 6-step run (linear decay ends at lr 0) extended to 9 steps: step 7 trains at the 9-step
    schedule's lr, not at the old schedule's 0, and the weights move."""
    from safetensors.torch import load_file

    out, _ = straight_run
    ext = tmp_path / "ext"
    ext.mkdir()
    shutil.copytree(out / "checkpoint-6", ext / "checkpoint-6")
    run_train(args(tiny_model_dir, data, ext, max_steps=9, save_steps=3, resume_from_checkpoint="latest"))
    rows = metrics(ext)
    assert [r["step"] for r in rows] == [7, 8, 9]
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * 3 / 9, 3e-3 * 2 / 9, 3e-3 * 1 / 9], rel=1e-9)
    w6 = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    w7 = load_file(str(ext / "checkpoint-9" / "model.safetensors"))
    assert any(not torch.equal(w6[k], w7[k]) for k in w6)


def test_accumulation_split_is_invariant(tiny_model_dir, data, tmp_path):
    """micro-batch 4 x accumulation 1 == micro-batch 1 x accumulation 4 (the 2024 GA-normalisation bug)."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    run_train(args(tiny_model_dir, data, a, max_steps=2, save_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=1))
    run_train(args(tiny_model_dir, data, b, max_steps=2, save_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=4))
    for ra, rb in zip(metrics(a), metrics(b)):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_two_process_ddp_matches_one_process(engine, tiny_model_dir, data, tmp_path):
    """2 processes (gloo) x accumulation 1 == 1 process x accumulation 2: same loss, same weights."""
    from safetensors.torch import load_file

    one = tmp_path / "one"
    two = tmp_path / "two"
    run_train(args(tiny_model_dir, data, one, max_steps=3, save_steps=3, gradient_accumulation_steps=2))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "train_hw_parallel.py"),
           *args(tiny_model_dir, data, two, max_steps=3, save_steps=3, gradient_accumulation_steps=1, engine=engine),
           "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPUs/processes: 2" in proc.stdout and "effective batch 4" in proc.stdout
    for ra, rb in zip(metrics(one), metrics(two)):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    wa = load_file(str(one / "checkpoint-3" / "model.safetensors"))
    wb = load_file(str(two / "checkpoint-3" / "model.safetensors"))
    # The fast engine packs 4 conversations per row in one process and 2 per row in each of two, so sums run
    # in a different order; Adam magnifies that float noise on near-zero gradients, hence the looser atol.
    atol = 1e-5 if engine == "reference" else 1e-4
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=atol)


def test_save_total_limit_prunes_optimizer_state_not_weights(tiny_model_dir, data, tmp_path):
    out = tmp_path / "prune"
    run_train(args(tiny_model_dir, data, out, max_steps=4, save_steps=1, save_total_limit=1))
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in ckpts] == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert [(p / "training_state").exists() for p in ckpts] == [False, False, False, True]
    assert all((p / "model.safetensors").is_file() for p in ckpts)


# ----------------------------------------------------------------------------- bad input


def _cli(argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_hw_parallel.py"), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_output_dir_holding_a_run_is_refused(straight_run, tiny_model_dir, data):
    out, _ = straight_run
    before = sorted(p.name for p in out.iterdir())
    p = _cli(args(tiny_model_dir, data, out))
    assert p.returncode == 2
    assert "already holds a run" in p.stderr and "--resume_from_checkpoint latest" in p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("what", ["data", "model", "resume"])
def test_missing_paths_are_clear_errors(what, tiny_model_dir, data, tmp_path):
    over = {"data": {"data_path": str(tmp_path / "nope.jsonl")},
            "model": {"model_name_or_path": str(tmp_path / "no_model")},
            "resume": {"resume_from_checkpoint": str(tmp_path / "no_ckpt")}}[what]
    kw = dict(over)
    p = _cli(args(kw.pop("model_name_or_path", tiny_model_dir), kw.pop("data_path", data), tmp_path / "o", **kw))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "error:" in p.stderr and "Traceback" not in p.stderr
    assert "nope.jsonl" in p.stderr or "no_model" in p.stderr or "no_ckpt" in p.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("checkpoint-*"))


def test_malformed_jsonl_names_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(make_conversations(1)[0])
    bad.write_text(good + "\n" + good + "\n{not json\n")
    p = _cli(args(tiny_model_dir, bad, tmp_path / "o"))
    assert p.returncode == 2
    assert "bad.jsonl:3" in p.stderr
    assert not (tmp_path / "o").exists()


def test_help_explains_every_flag():
    p = _cli(["--help"])
    assert p.returncode == 0
    for flag in ("--model_name_or_path", "--max_rounds", "--resume_from_checkpoint", "--truncation_side", "--fp16",
                 "--bf16", "--save_total_limit", "--gradient_checkpointing", "--lr_scheduler_type"):
        assert flag in p.stdout


def test_homework_command_line_is_accepted():
    from sftbench.config.train import parse_train_config

    cfg = parse_train_config(
        "--model_name_or_path M --data_path D --output_dir O --num_train_epochs 5 --per_device_train_batch_size 1 "
        "--gradient_accumulation_steps 64 --learning_rate 4e-5 --warmup_ratio 0.2 --model_max_length 1024 "
        "--fp16 True --gradient_checkpointing True --save_steps 20 --logging_steps 1 --max_rounds 6".split())
    assert cfg.fp16 is True and cfg.gradient_checkpointing is True and cfg.gradient_accumulation_steps == 64
    assert cfg.effective_warmup_steps(100) == 20


def test_precision_policy_on_cpu():
    from sftbench.core.device import pick_precision

    p = pick_precision(torch.device("cpu"), bf16=False, fp16=True)
    assert p.autocast_dtype is None and not p.use_grad_scaler and "fp32" in p.reason
    with pytest.raises(UserError):
        pick_precision(torch.device("cpu"), bf16=True, fp16=True)


def test_lora_run_saves_adapter_and_merged_model(tiny_model_dir, data, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    run_train(args(tiny_model_dir, data, out, max_steps=2, save_steps=2, method="lora", lora_rank=4))
    ck = out / "checkpoint-2"
    assert (ck / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(ck)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not any("lora" in k for k in merged.state_dict())
    diffs = [not torch.equal(merged.state_dict()[k], base.state_dict()[k]) for k in base.state_dict() if "q_proj" in k]
    assert any(diffs)  # the adapter changed the merged projections
    rows = metrics(out)
    assert len(rows) == 2
    # resume continues from the adapter
    res = tmp_path / "lora_resume"
    res.mkdir()
    shutil.copytree(ck, res / "checkpoint-2")
    run_train(args(tiny_model_dir, data, res, max_steps=3, save_steps=3, method="lora", lora_rank=4,
                   resume_from_checkpoint="latest"))
    assert (res / "checkpoint-3" / "adapter").is_dir()


def test_oom_is_answered_with_advice_and_fallback(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    """Simulated CUDA OOM: plain run exits 3 with the planner's advice; --oom_fallback retries at half micro-batch."""
    import train_hw_parallel as thp

    real_forward = thp.CausalLMLossSum.forward

    def fake_forward(self, input_ids, attention_mask, labels):
        if input_ids.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_forward(self, input_ids, attention_mask, labels)

    monkeypatch.setattr(thp.CausalLMLossSum, "forward", fake_forward)
    rc = thp.main(args(tiny_model_dir, data, tmp_path / "a", max_steps=2, save_steps=1))
    err = capsys.readouterr().err
    assert rc == 3 and "out of memory" in err and "--per_device_train_batch_size 1" in err
    rc = thp.main(args(tiny_model_dir, data, tmp_path / "b", max_steps=2, save_steps=1, oom_fallback=True))
    outp = capsys.readouterr().out
    assert rc == 0 and "--oom_fallback: retrying with micro-batch 1 x accumulation 4" in outp
    assert [r["step"] for r in metrics(tmp_path / "b")] == [1, 2]


def test_fast_engine_oom_fallback_halves_the_token_budget(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    """Fast engine: a simulated OOM on packed micro-batches over 256 tokens; the plain run exits 3 naming
    --token_budget, --oom_fallback retries at 256 tokens and gives the losses of a run started at 256."""
    import sftbench.engine.fast_model as fm
    import train_hw_parallel as thp

    real = fm.packed_loss_sum

    def fake(model, batch, chunk_size=None):
        if batch["input_ids"].numel() > 256:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return real(model, batch, chunk_size)

    monkeypatch.setattr(fm, "packed_loss_sum", fake)
    rc = thp.main(args(tiny_model_dir, data, tmp_path / "a", max_steps=2, save_steps=1, engine="fast", token_budget=512))
    err = capsys.readouterr().err
    assert rc == 3 and "--token_budget 256" in err and "Traceback" not in err
    rc = thp.main(args(tiny_model_dir, data, tmp_path / "b", max_steps=2, save_steps=1, engine="fast", token_budget=512,
                       oom_fallback=True))
    outp = capsys.readouterr().out
    assert rc == 0 and "--oom_fallback: retrying with packed micro-batches of 256 tokens from the start" in outp
    assert json.loads((tmp_path / "b" / "sft_config.json").read_text())["token_budget"] == 256
    run_train(args(tiny_model_dir, data, tmp_path / "c", max_steps=2, save_steps=1, engine="fast", token_budget=256))
    assert [r["loss"] for r in metrics(tmp_path / "b")] == [r["loss"] for r in metrics(tmp_path / "c")]
    # at the floor (--model_max_length) it stops with the advice instead of looping
    rc = thp.main(args(tiny_model_dir, data, tmp_path / "d", max_steps=2, engine="fast", token_budget=512,
                       model_max_length=512, oom_fallback=True))
    assert rc == 3


def test_fast_engine_matches_reference_losses(tiny_model_dir, data, tmp_path):
    """--engine fast (packed, per-conversation attention) gives the reference engine's losses (CPU, fp32)."""
    ref = tmp_path / "ref"
    fast = tmp_path / "fast"
    run_train(args(tiny_model_dir, data, ref, max_steps=3, save_steps=3))
    run_train(args(tiny_model_dir, data, fast, max_steps=3, save_steps=3, engine="fast", token_budget=256))
    for ra, rb in zip(metrics(ref), metrics(fast)):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["real_tokens"] == rb["real_tokens"]
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)


def test_unknown_flag_and_bad_device_are_clean_errors(tiny_model_dir, data, tmp_path):
    p = _cli(["--bogus", "1"])
    assert p.returncode == 2 and "unrecognized arguments" in p.stderr and "Traceback" not in p.stderr
    p = _cli(args(tiny_model_dir, data, tmp_path / "o", device="bogus"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "bogus" in p.stderr
    for att, why in (("varlen", "not a CUDA device"), ("flex", "no backward pass on the CPU")):
        p = _cli(args(tiny_model_dir, data, tmp_path / att, engine="fast", attention=att, max_steps=1))
        assert p.returncode == 2 and why in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / att / "metrics.jsonl").exists()


def test_resume_from_an_older_checkpoint_is_refused(straight_run, tiny_model_dir, data):
    """Resuming checkpoint-3 while checkpoint-6 exists would overwrite later results: refused, nothing changed."""
    out, _ = straight_run
    before = {p.name: p.stat().st_mtime for p in out.iterdir()}
    p = _cli(args(tiny_model_dir, data, out, resume_from_checkpoint=str(out / "checkpoint-3")))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert {p.name: p.stat().st_mtime for p in out.iterdir()} == before


def test_effective_batch_is_divided_by_micro_batch_and_world_size():
    """--effective_batch (what the presets state) -> accumulation per process; a later explicit
    --gradient_accumulation_steps (a user's override of a preset) wins; a non-divisor is a clean error."""
    from sftbench.config.train import parse_train_config, resolve_accumulation

    cfg = parse_train_config(["--effective_batch", "64", "--per_device_train_batch_size", "2"])
    resolve_accumulation(cfg, world=2)
    assert cfg.gradient_accumulation_steps == 16
    cfg = parse_train_config(["--effective_batch", "64", "--gradient_accumulation_steps", "1"])
    resolve_accumulation(cfg, world=2)
    assert cfg.effective_batch is None and cfg.gradient_accumulation_steps == 1
    cfg = parse_train_config(["--gradient_accumulation_steps", "1", "--effective_batch", "6"])
    with pytest.raises(UserError, match="--effective_batch 6: not a positive multiple of micro-batch 1 x 4"):
        resolve_accumulation(cfg, world=4)


def test_precision_flag_and_hf_booleans():
    from sftbench.core.device import pick_precision, requested_precision
    from sftbench.config.train import parse_train_config

    assert parse_train_config([]).precision == "auto"  # as the presets: bf16 where native, fp16+scaler, fp32 on CPU
    assert requested_precision("auto", bf16=False, fp16=True) == "fp16"  # the HF booleans win
    assert requested_precision("auto") == "auto"
    p = pick_precision(torch.device("cpu"), precision="auto")
    assert p.name == "fp32" and p.reason == "CPU: training in fp32 (auto was asked for; it only applies on a GPU)"
    assert _cli(["--precision", "fp8"]).returncode == 2


def test_presets_are_flag_lists_that_launch(tiny_model_dir, tmp_path):
    """A preset with positional MODEL DATA OUT runs 1 step on the CPU; its flags reach the trainer."""
    out = tmp_path / "preset"
    data = write_data(tmp_path / "d.jsonl", n=40)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "sft_min_vram.sh"), str(tiny_model_dir), str(data), str(out),
                        "--max_steps", "1", "--model_max_length", "128", "--progress", "False", "--data_cache_dir", "none"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = json.loads((out / "sft_config.json").read_text())
    assert (cfg["effective_batch"], cfg["gradient_accumulation_steps"], cfg["max_rounds"]) == (32, 32, 4)
    assert cfg["precision"] == "fp32" and cfg["model_max_length"] == 128


def test_prepare_model_checkpoints_every_layer_without_deprecation_warnings():
    """--gradient_checkpointing reaches every decoder layer through transformers' current API (the old name warns
    that it goes away in v6: users must not see that on every run)."""
    import warnings
    from types import SimpleNamespace

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftbench.train.step import prepare_model

    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        prepare_model(m, SimpleNamespace(gradient_checkpointing=True, method="full"), torch.device("cpu"))
    assert [layer.gradient_checkpointing for layer in m.model.layers] == [True, True]
    assert m.config.use_cache is False and m.training
