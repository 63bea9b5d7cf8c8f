"""scripts/bench_train.py's CPU-side logic: the TRL+Liger search (stop a direction at its first OOM), the FLOPs
per token behind the MFU column, row names, and the report's ratios to the peer's best setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bt():
    spec = importlib.util.spec_from_file_location("bench_train_under_test", ROOT / "scripts" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parse_trl_search_orders_each_direction(bt):
    assert bt.parse_trl_search("gc:48,16,32,64; nogc:16,8") == [
        ["trl_liger@16", "trl_liger@32", "trl_liger@48", "trl_liger@64"], ["trl_liger@8:nogc", "trl_liger@16:nogc"]]
    assert bt.parse_trl_search(bt.TRL_SEARCH) == [
        ["trl_liger@16", "trl_liger@32", "trl_liger@48", "trl_liger@64"], ["trl_liger@8:nogc", "trl_liger@16:nogc"]]
    with pytest.raises(UserError, match="each part is gc:MB"):
        bt.parse_trl_search("ckpt:8")


def test_peer_search_stops_a_direction_at_its_first_oom_and_picks_the_fastest(bt):
    speed = {"trl_liger@16": 20600, "trl_liger@32": 46000, "trl_liger@48": 64900, "trl_liger@8:nogc": 9000}
    calls = []

    def fake_run(row):  # what _child returns: the row subprocess's JSON
        calls.append(row)
        if row in speed:
            return {"row": row, "status": "ok", "tokens_per_s": speed[row]}
        return {"row": row, "status": "oom", "error": "CUDA out of memory"}

    results, best = bt.peer_search(bt.parse_trl_search("gc:16,32,48,64,96;nogc:8,16,32"), fake_run)
    # 96 is never tried after 64 ran out of memory, nor nogc 32 after nogc 16 did
    assert calls == ["trl_liger@16", "trl_liger@32", "trl_liger@48", "trl_liger@64", "trl_liger@8:nogc", "trl_liger@16:nogc"]
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "oom", "ok", "oom"]
    assert all(r["search"] for r in results)
    assert best["row"] == "trl_liger@48" and best["tokens_per_s"] == 64900


def test_peer_search_failure_or_timeout_also_stops_and_no_best_when_nothing_ran(bt):
    calls = []

    def fake_run(row):
        calls.append(row)
        return {"row": row, "status": "timed out after 240 s"} if "nogc" in row else {"row": row, "status": "failed (exit 1, 3 s)"}

    results, best = bt.peer_search(bt.parse_trl_search("gc:16,32;nogc:8,16"), fake_run)
    assert calls == ["trl_liger@16", "trl_liger@8:nogc"]
    assert best is None
    assert bt._peer_baseline(results) == (bt.TRL_LIGER_PEER, f"TRL+Liger (no setting ran here: the earlier measurement, "
                                                             f"{bt.TRL_LIGER_PEER} tok/s)")


def test_flops_per_token_smollm2_shape(bt):
    cfg = bt.smollm2_135m_config()
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536
    assert per_layer == 3_538_944
    head = 576 * 49152
    # one 1-token conversation: attention forward 2 x 2 x 9 heads x 64 x 1 pair = 2304 FLOPs per layer
    assert bt.train_flops_per_token(cfg, [1], 30) == 6 * (30 * per_layer + head) + 2 * 30 * per_layer + 2304 * (90 + 30)
    assert bt.train_flops_per_token(cfg, [1], 0) == 6 * (30 * per_layer + head) + 2304 * 90
    # lengths 3 and 1: 6 + 1 causal (query, key) pairs over 4 tokens
    assert bt.train_flops_per_token(cfg, [3, 1], 0) == 6 * (30 * per_layer + head) + 4 * 576 * 7 / 4 * 90
    # the issue's ~1.1 GFLOP per token at 30/30 layers recomputed, conversations of ~500 tokens
    assert 1.05e9 < bt.train_flops_per_token(cfg, [500], 30) < 1.15e9


def test_row_names(bt):
    a = bt.parse(["--_cpu-debug"])
    assert bt.parse_fast_row("fast@16384:30:fused:buckets:fp16", a) == {
        "budget": 16384, "ckpt": "30", "fuse": True, "attention": "buckets", "precision": "fp16", "graphs": True}
    assert bt.parse_fast_row("fast@8192:auto:nograph", a) == {
        "budget": 8192, "ckpt": "auto", "fuse": False, "attention": "auto", "precision": "bf16", "graphs": False}
    with pytest.raises(UserError, match="unknown flag 'fp8'"):
        bt.parse_fast_row("fast@8192:30:fp8", a)
    assert bt.parse_trl_row("trl_liger@48", a) == (48, True)
    assert bt.parse_trl_row("trl_liger@8:nogc", a) == (8, False)
    assert bt.parse_trl_row("trl_liger", a) == (8, True)
    with pytest.raises(UserError, match="expected trl_liger"):
        bt.parse_trl_row("trl_liger@x", a)


def test_report_quotes_ratios_to_the_peer_best_with_mfu(bt):
    a = bt.parse(["--peak-tflops", "790"])
    ok = {"status": "ok", "timed_steps": 7}
    results = [
        dict(ok, row="trl_liger@32", search=True, tokens_per_s=46000.0, config={"micro_batch": 32, "gradient_checkpointing": True}),
        dict(ok, row="trl_liger@48", search=True, tokens_per_s=64900.0, config={"micro_batch": 48, "gradient_checkpointing": True},
             torch_peak_allocated_gib=6.3, torch_peak_reserved_gib=7.93, nvml_peak_gib=7.99, row_wall_s=41.0),
        {"row": "trl_liger@64", "search": True, "status": "oom"},
        dict(ok, row="fast@16384:30:fused", tokens_per_s=146850.0, nvml_peak_gib=5.66, first_step_s=20.1,
             config={"checkpoint_layers": 30, "attention": "varlen", "precision": "bf16"}),
    ]
    text = bt.report(a, results, bt.smollm2_135m_config(), [500])
    assert ("ratios (x peer) are to TRL+Liger best (trl_liger@48: micro-batch 48, gradient checkpointing on): "
            "64,900 real tokens/s") in text
    assert "| trl_liger@48 | ok | 48 | on | 64,900 | " in text
    assert "| trl_liger@64 | oom | 64 | on | - | - |" in text
    f = bt.train_flops_per_token(bt.smollm2_135m_config(), [500], 30)
    assert f"| fast@16384:30:fused | ok | 7 | 146,850 | 2.26 | {100 * 146850 * f / 790e12:.1f} |" in text
    assert "fastest fast row NVML <= 6 GiB: fast@16384:30:fused 146,850 real tokens/s = 2.26x TRL+Liger best" in text


def test_bad_row_is_a_usage_error_before_any_row_runs(bt, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        bt.main(["--_cpu-debug", "--data", "synthetic", "--rows", "fast,fast@512:2:fp8", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_train: error: --rows: row fast@512:2:fp8: unknown flag 'fp8'")
    assert not out.exists()


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_bench_step_is_the_trainers_step(bt, engine, tiny_model_dir, tmp_path):
    """The bench's reference and fast rows run the trainer's own step (sftbench.train.step, engines): one step of
    the same window from the same tiny model gives the trainer's loss and the trainer's weights."""
    import json

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import train_hw_parallel
    from sftbench.config.train import parse_train_config
    from sftbench.data.demo import make_conversations
    from sftbench.train.setup import epoch_order, start

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(8, seed=3)))
    flags = dict(model_name_or_path=tiny_model_dir, data_path=data, output_dir=tmp_path / "run", max_steps=1,
                 per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3, weight_decay=0.0,
                 max_grad_norm=1.0, lr_scheduler_type="constant_with_warmup", warmup_steps=0, model_max_length=128,
                 seed=0, data_cache_dir="none", progress=False, loss_chunk_size=64, device="cpu", engine=engine,
                 gradient_checkpointing=engine == "reference", save_steps=1)
    if engine == "fast":
        flags.update(attention="sdpa", token_budget=256, fuse_projections=True)
    argv = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    run = start(parse_train_config(argv))  # the trainer's own examples (tokenised, masked) and data order
    window = list(epoch_order(0, 0, len(run.examples))[:4])
    assert train_hw_parallel.main(argv) == 0
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])

    a = bt.parse(["--_cpu-debug", "--lr", "1e-3", "--warmup-lr-steps", "0", "--warmup-steps", "0", "--ref-batch", "2",
                  "--ref-ce-chunk", "64", "--ce-chunk", "64"])
    a.row = engine
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    if engine == "reference":
        res = bt.row_reference(a, run.examples, [window], model, torch.device("cpu"))
    else:
        res = bt.row_fast(a, run.examples, [window], model, torch.device("cpu"), budget=256, ckpt="0", fuse=True,
                          attention="sdpa", graphs=False)
    assert bt._n_targets([run.examples[i] for i in window]) == logged["target_tokens"]
    assert res["losses"][0] == pytest.approx(logged["loss"], abs=2e-5)
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    got = {k: v.detach() for k, v in model.state_dict().items()}
    for name, w in trained.items():
        assert torch.allclose(got[name], w, rtol=0, atol=1e-7), name
