"""The planner: arithmetic against hand-computed bytes, fits decisions, auto batch, OOM advice, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sftbench.core.errors import UserError
from sftbench.core.gpus import GPUS, PRICES, PRICES_AS_OF, get_gpu
from sftbench.plan import (GIB, SMOLLM2_135M, ModelDims, PlanSpec, estimate_peak_gib, fits, layer_activation_bytes,
                           load_model_dims, main, max_micro_batch, measure_data, oom_advice, oom_advice_for_config,
                           pick_auto_batch, plan_rows)

ROOT = Path(__file__).resolve().parents[1]
# the tiny test model's shape (sftbench/model/tiny.py): hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV, vocab 384
TINY = ModelDims(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=384, tie_word_embeddings=True)


def test_parameter_counts_match_real_models():
    from sftbench.model.tiny import build_tiny_model

    # by hand: per layer q 64*64 + k 64*32 + v 64*32 + o 64*64 + 3 * 64*128 = 36864, + 2 norms of 64
    assert TINY.layer_linear_params == 36864
    assert TINY.num_params == 384 * 64 + 2 * (36864 + 128) + 64 == 98624
    m = build_tiny_model(384)
    assert sum(p.numel() for p in m.parameters()) == TINY.num_params
    assert SMOLLM2_135M.num_params == 134_515_008  # SmolLM2-135M
    # LoRA r=4: per layer 4*(in+out) summed over q,k,v,o,gate,up,down = 4096
    assert TINY.lora_params(4) == 2 * 4096


def test_lora_param_count_matches_peft():
    peft = pytest.importorskip("peft")
    from sftbench.model.tiny import build_tiny_model

    m = peft.get_peft_model(build_tiny_model(384), peft.LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == TINY.lora_params(4)


def test_breakdown_hand_computed_full_logits_no_ckpt():
    spec = PlanSpec(dims=TINY, max_length=128, micro_batch=2, grad_accum=1, gradient_checkpointing=False,
                    chunked_ce=False)
    b = estimate_peak_gib(spec)
    assert layer_activation_bytes(TINY) == 26 * 64 + 6 * 64 + 4 * 32 + 8 * 128 == 3200
    assert b.weights * GIB == 4 * 98624
    assert b.optimizer_state * GIB == 8 * 98624
    assert b.gradients == 0  # grad_accum 1: gradients were freed by zero_grad(set_to_none) before the forward
    assert b.master_copies * GIB == 2 * (2 * 36864 + 384 * 64)  # bf16 copies of the linears + lm_head
    assert b.activations * GIB == 2 * 256 * 3200 + 256 * 64 * 8
    assert b.logits_loss * GIB == 12 * (2 * 127) * 384
    assert round(b.torch_allocated * GIB) == 4_320_000
    assert b.cuda_context == pytest.approx(1.2)
    assert b.total == pytest.approx(b.torch_allocated * 1.03 + 1.2)
    # accumulating (grad_accum > 1): the gradients of earlier micro-batches are alive during the forward
    b2 = estimate_peak_gib(replace(spec, grad_accum=4))
    assert (b2.torch_allocated - b.torch_allocated) * GIB == pytest.approx(4 * 98624)


def test_lora_and_checkpointing_reduce_memory():
    spec = PlanSpec(max_length=2048, micro_batch=4, grad_accum=2, gradient_checkpointing=False)
    full = estimate_peak_gib(spec)
    ck = estimate_peak_gib(replace(spec, gradient_checkpointing=True))
    lora = estimate_peak_gib(replace(spec, method="lora", lora_rank=16, gradient_checkpointing=True))
    lora_bf16 = estimate_peak_gib(replace(spec, method="lora", lora_rank=16, lora_base_dtype="bf16", gradient_checkpointing=True))
    assert ck.total < full.total and lora.total < ck.total and lora_bf16.total < lora.total
    # without checkpointing, LoRA's activations (frozen-weight copies, adapter inputs) exceed what it saves at 8k tokens
    assert estimate_peak_gib(replace(spec, method="lora")).activations > full.activations
    assert lora.trainable_params == SMOLLM2_135M.lora_params(16) < full.trainable_params / 20
    assert lora.optimizer_state * GIB == 8 * lora.trainable_params
    assert full.activations == pytest.approx(full.activations_no_ckpt) and ck.activations == pytest.approx(ck.activations_ckpt)


def test_calibration_against_measured_facts():
    """NOTES.md (H100): fp32 weights + AdamW floor ~2.0 GiB; 4096 tokens, no checkpointing, full-logits CE:
    7.6 GiB allocated / 9.0 GiB NVML."""
    floor = 16 * SMOLLM2_135M.num_params / GIB
    assert floor == pytest.approx(2.0, abs=0.01)
    b = estimate_peak_gib(PlanSpec(max_length=4096, micro_batch=1, grad_accum=1, gradient_checkpointing=False,
                                   chunked_ce=False))
    assert b.torch_allocated == pytest.approx(7.6, rel=0.05)
    assert b.total == pytest.approx(9.0, rel=0.05)
    # with checkpointing + chunked CE the logits no longer dominate: far below, and nearly flat in length
    c1 = estimate_peak_gib(PlanSpec(max_length=1024, grad_accum=1))
    c4 = estimate_peak_gib(PlanSpec(max_length=4096, grad_accum=1))
    assert c1.torch_allocated < c4.torch_allocated < 0.4 * b.torch_allocated
    assert c4.logits_loss == pytest.approx(c1.logits_loss, rel=0.1)


def test_fits_decisions():
    a = PlanSpec(max_length=1024, micro_batch=1, grad_accum=64)  # the 8 GB preset
    big = PlanSpec(max_length=4096, micro_batch=1, grad_accum=1, gradient_checkpointing=False, chunked_ce=False)
    huge = PlanSpec(max_length=4096, micro_batch=16, grad_accum=4, gradient_checkpointing=False, chunked_ce=False)
    g = {k: get_gpu(k).mem_gib for k in ("4060-8gb", "t4", "a100-40gb", "h100")}
    assert fits(a, g["4060-8gb"]) and fits(a, g["t4"])
    assert not fits(big, g["4060-8gb"]) and fits(big, g["t4"])
    assert not fits(huge, g["a100-40gb"]) and not fits(huge, g["t4"])
    mb = max_micro_batch(a, g["4060-8gb"])
    assert mb >= 4 and fits(replace(a, micro_batch=mb), g["4060-8gb"]) and not fits(replace(a, micro_batch=mb + 1), g["4060-8gb"])


def test_pick_auto_batch():
    spec = PlanSpec(max_length=1024)
    mb, acc = pick_auto_batch(spec, 8.0, 64)
    assert mb * acc == 64 and 64 % mb == 0
    assert fits(replace(spec, micro_batch=mb, grad_accum=acc), 8.0)
    bigger = [d for d in range(mb + 1, 65) if 64 % d == 0]
    assert bigger and not fits(replace(spec, micro_batch=bigger[0], grad_accum=64 // bigger[0]), 8.0)
    assert pick_auto_batch(spec, 80.0, 64)[0] >= mb
    assert pick_auto_batch(spec, 1.0, 64) == (1, 64)  # nothing fits: micro-batch 1, and the caller warns
    with pytest.raises(UserError):
        pick_auto_batch(spec, 8.0, 0)


def test_oom_advice_names_the_remedies():
    spec = PlanSpec(max_length=2048, micro_batch=8, grad_accum=8, gradient_checkpointing=False, chunked_ce=False)
    text = oom_advice(spec, 8.0)
    for must in ("--per_device_train_batch_size 4 --gradient_accumulation_steps 16", "--gradient_checkpointing True",
                 "--loss_chunk_size", "--model_max_length 1024", "scripts/sft_min_vram.sh", "--method lora",
                 "--resume_from_checkpoint latest", "8.0 GiB"):
        assert must in text, must
    assert "(fits)" in text
    assert "\n" not in text  # one paragraph


def test_oom_advice_for_train_config():
    from types import SimpleNamespace

    cfg = SimpleNamespace(model_name_or_path="smollm2-135m-instruct-offline", model_max_length=4096,
                          per_device_train_batch_size=4, gradient_accumulation_steps=16, gradient_checkpointing=False,
                          loss_chunk_size=0, bf16=True, fp16=False, memory_cap_gib=8.0)
    text = oom_advice_for_config(cfg)
    assert "--gradient_checkpointing True" in text and "against 8.0 GiB" in text


def test_model_dims_from_local_dir_and_errors(tiny_model_dir, tmp_path):
    d = load_model_dims(str(tiny_model_dir))
    assert (d.hidden, d.intermediate, d.layers, d.heads, d.kv_heads, d.vocab, d.tie_word_embeddings) == (64, 128, 2, 4, 2, 384, True)
    assert load_model_dims("smollm2-135m-instruct-offline") == SMOLLM2_135M
    assert load_model_dims("HuggingFaceTB/SmolLM2-135M").hidden == 576  # offline: built-in numbers
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model_dims(str(tmp_path / "empty"))
    (tmp_path / "bad.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="hidden_size"):
        load_model_dims(str(tmp_path / "bad.json"))


def test_measure_data_and_steps(tmp_path):
    d = measure_data(str(ROOT / "sftbench" / "data" / "demo_chat.jsonl"))
    assert d.examples == sum(1 for line in open(ROOT / "sftbench" / "data" / "demo_chat.jsonl") if line.strip())
    f = tmp_path / "two.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "b" * 40}]}) + "\n"
                 + json.dumps({"messages": [{"role": "user", "content": "c" * 80}]}) + "\n")
    d2 = measure_data(str(f))
    assert d2.examples == 2 and d2.avg_tokens == pytest.approx((160 / 4 + 5 * 3) / 2)
    assert measure_data(str(f), avg_tokens=300).avg_tokens == 300
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        measure_data(str(bad))
    with pytest.raises(UserError, match="no such file"):
        measure_data(str(tmp_path / "missing.jsonl"))
    steps, rows = plan_rows(PlanSpec(micro_batch=1, grad_accum=64), measure_data("1000", 400), epochs=5)
    assert steps == 5 * (1000 // 64) == 75
    assert {r.gpu.key for r in rows} == {g.key for g in GPUS}
    free = {r.gpu.key: r.cost_usd for r in rows}
    assert free["t4"] == 0 and free["h100"] == pytest.approx(rows[-1].hours * PRICES["h100"])
    h100 = next(r for r in rows if r.gpu.key == "h100")
    t4 = next(r for r in rows if r.gpu.key == "t4")
    assert h100.tokens_per_s >= t4.tokens_per_s and h100.hours <= t4.hours
    assert len(PRICES_AS_OF) >= 7


def test_cli_help_and_table(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--model_name_or_path", "--model_max_length", "--per_device_train_batch_size",
                 "--gradient_accumulation_steps", "--data_path", "--num_train_epochs", "--method", "--gpu",
                 "--lora_rank", "--gradient_checkpointing", "--loss_chunk_size", "--price", "--num_gpus"):
        assert flag in help_text
    assert main(["--model_name_or_path", "HuggingFaceTB/SmolLM2-135M", "--model_max_length", "1024",
                 "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "64",
                 "--data_path", str(ROOT / "sftbench" / "data" / "demo_chat.jsonl"), "--num_train_epochs", "5"]) == 0
    out = capsys.readouterr().out
    for must in ("Peak VRAM", "weights (fp32 masters)", "gradients", "optimizer state", "activations", "logits / loss",
                 "CUDA context", "total device memory (NVML)", "RTX 4060 Laptop 8 GB", "Tesla T4", "H100", "optimizer steps"):
        assert must in out, must
    assert main(["--gpu", "4060-8gb,t4", "--method", "lora", "--data_path", "2000", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert [g["gpu"] for g in j["gpus"]] == ["4060-8gb", "t4"] and j["optimizer_steps"] == 5 * (2000 // 64)
    assert j["breakdown_gib"]["total"] > j["breakdown_gib"]["torch_allocated"]


def test_cli_errors_exit_2(capsys, tmp_path):
    for argv, msg in ((["--gpu", "v100x"], "unknown GPU"), (["--data_path", str(tmp_path / "nope.jsonl")], "no such file"),
                      (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1"),
                      (["--model_name_or_path", "not/a/dir/x"], "--model_name_or_path"),
                      (["--max_length", "512"], "unrecognized arguments: --max_length 512")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert msg in capsys.readouterr().err


def test_plan_sh_runs():
    p = subprocess.run(["bash", str(ROOT / "scripts" / "plan.sh"), "--gpu", "t4", "--data_path", "500"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Tesla T4" in p.stdout and "RTX 4060" not in p.stdout


# ----------------------------------------------------------------------------- the fast engine

def test_fast_engine_memory_exact_and_trainer_choice():
    from sftbench.plan.fast import FastSpec, estimate_fast_peak_gib, trainer_checkpoint_layers

    # by hand, SmolLM2-135M, 16384 tokens, all 30 layers checkpointed: per token 30 x 4 x 576 (layer inputs)
    # + 18688 (the layer being recomputed) + 8 x 576 (final norm)
    b = estimate_fast_peak_gib(FastSpec(token_budget=16384), 30)
    assert b.activations * GIB == 16384 * (30 * 2304 + 18688 + 4608) == 1_514_143_744
    assert b.logits_loss * GIB == 8 * 1024 * 49152 + 12 * 49152 * 576
    assert b.weights + b.gradients + b.optimizer_state == pytest.approx(16 * 134_515_008 / GIB)
    assert round(b.torch_allocated, 4) == 4.106 and round(b.total, 4) == 5.5792  # measured 3.95 / 5.57 (H100)
    assert round(estimate_fast_peak_gib(FastSpec(token_budget=16384), 25).total, 4) == 6.8667  # measured 6.61
    assert round(estimate_fast_peak_gib(FastSpec(token_budget=32768), 30).total, 4) == 7.0316  # measured 7.2 (H200)
    # the trainer's own choice: --vram_target_gib 6 -> all 30 layers; the whole 8 GiB card -> 25 (measured run)
    assert trainer_checkpoint_layers(FastSpec(), 8.0) == 30
    assert trainer_checkpoint_layers(FastSpec(vram_target_gib=None), 8.0) == 25
    assert trainer_checkpoint_layers(FastSpec(vram_target_gib=None, token_budget=8192), 80.0) == 0


def test_planner_trainer_and_bench_share_one_torch_free_memory_policy():
    import subprocess
    import sys

    import sftbench.plan.fast as plan_fast
    import sftbench.engine.memory_budget as mb

    assert plan_fast.choose_checkpoint_layers is mb.choose_checkpoint_layers
    assert plan_fast.trainer_memory_budget_bytes(8.0, 6.0, None) == mb.torch_budget_bytes(8.0, 6.0) == \
        int((6.0 - 1.3) * 0.9 * GIB)
    # importable where torch is not (bash scripts/plan.sh outside the venv)
    code = ("import sys; sys.modules['torch'] = None; import sftbench.engine.memory_budget, sftbench.plan.fast; "
            "print(sftbench.plan.fast.trainer_checkpoint_layers(sftbench.plan.fast.FastSpec(), 8.0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "30"


def test_fast_engine_tokens_per_second_scaled_by_matrix_rate_and_bandwidth():
    from sftbench.plan.throughput import fast_tokens_per_second

    # reproduces the two H200 measurements it is solved from (CUDA graphs, 2026-12-01)
    assert round(fast_tokens_per_second(get_gpu("h200"), 8192, 30, 30)) == 176_600
    assert round(fast_tokens_per_second(get_gpu("h200"), 16384, 30, 30)) == 200_100
    assert round(fast_tokens_per_second(get_gpu("t4"), 16384, 30, 30)) == 15_107
    assert round(fast_tokens_per_second(get_gpu("4060-8gb"), 16384, 30, 30)) == 11_110
    # fewer checkpointed layers: less recompute, faster
    assert fast_tokens_per_second(get_gpu("h100"), 16384, 0, 30) > 172_858


def test_cli_engines_and_trainer_flags(capsys):
    argv = ["--model_name_or_path", "smollm2-135m-instruct-offline", "--model_max_length", "1024",
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "64", "--data_path", "1000",
            "--num_train_epochs", "5", "--gpu", "4060-8gb,h100", "--json"]
    assert main(argv) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["engines"] == ["fast"] and [g["engine"] for g in j["gpus"]] == ["fast", "fast"]
    assert [g["checkpoint_layers"] for g in j["gpus"]] == [30, 30]
    assert j["gpus"][1]["tokens_per_s"] == 172857.6 and j["optimizer_steps"] == 75
    assert main(argv + ["--both_engines"]) == 0
    assert [g["engine"] for g in json.loads(capsys.readouterr().out)["gpus"]] == ["reference"] * 2 + ["fast"] * 2
    # the trainer's names (the planner's spec keeps its short keys)
    assert main(["--model_max_length", "512", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "8",
                 "--data_path", "100", "--num_train_epochs", "2",
                 "--engine", "reference", "--gpu", "t4", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert (j["spec"]["max_length"], j["spec"]["micro_batch"], j["spec"]["grad_accum"], j["optimizer_steps"]) == (512, 2, 8, 12)
    assert main(["--gpu", "4060-8gb", "--data_path", "500", "--both_engines"]) == 0
    out = capsys.readouterr().out
    assert "Reference engine (padded" in out and "Fast engine (packed rows of 16384 tokens" in out and "30 of 30" in out
    with pytest.raises(SystemExit) as e:
        main(["--token_budget", "512", "--model_max_length", "1024"])
    assert e.value.code == 2 and "--token_budget 512 is smaller" in capsys.readouterr().err
