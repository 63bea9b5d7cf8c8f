"""Checkpoints: complete, loadable, atomic; training state without pickles.

Layout of OUT/checkpoint-<step>/ (see docs/ARCHITECTURE.md):
  model.safetensors, config.json, generation_config.json    (from_pretrained loads it as is)
  tokenizer files + chat template                           (AutoTokenizer loads it as is)
  sft_config.json        the resolved TrainConfig
  trainer_state.json     {"global_step", "epoch", "steps_per_epoch", "world_size", ...}
  training_state/        optimizer.safetensors + optimizer.json, scheduler.json, rng.json(+ rng.safetensors), scaler.json
The directory is written as OUT/.checkpoint-<step>.tmp and renamed, so a crash never leaves a
`checkpoint-<step>` that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sftbench.core import rundir
from sftbench.core.errors import UserError
from sftbench.core.io import atomic_write_json, read_json, rmtree_retry


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in a run dir with trainer state, sorted by step: [(step, path)] (sftbench.core.rundir's
    one definition of a complete checkpoint: config.json + weights, plus trainer_state.json)."""
    return rundir.list_checkpoints(run_dir, require=("trainer_state.json",))


def resolve_resume(spec: str, output_dir: str | os.PathLike) -> Path:
    """`latest` -> newest checkpoint with training state in output_dir; else the given path (validated)."""
    if spec == "latest":
        cands = [p for _, p in list_checkpoints(output_dir) if (p / "training_state" / "optimizer.safetensors").is_file()]
        if not cands:
            raise UserError(f"--resume_from_checkpoint latest: no checkpoint with training state in {output_dir}. "
                            f"Start a new run without --resume_from_checkpoint, or point it at a checkpoint directory.")
        return cands[-1]
    p = Path(spec)
    if not p.is_dir():
        raise UserError(f"--resume_from_checkpoint {spec}: directory not found.")
    if not (p / "training_state" / "optimizer.safetensors").is_file():
        raise UserError(f"--resume_from_checkpoint {spec}: this checkpoint has no training_state/ (its optimizer state "
                        f"was pruned by --save_total_limit, or it is not one of ours). Its weights can still start a new run "
                        f"as --model_name_or_path.")
    return p


# ---------------------------------------------------------------- optimizer / rng state (no pickles)

def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = float(v.item() if torch.is_tensor(v) else v)
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def _optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        # AdamW keeps `step` as a float32 scalar tensor.
        state.setdefault(int(pid), {})[k] = torch.tensor(v, dtype=torch.float32)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


# ---------------------------------------------------------------- save / load

def save_checkpoint(output_dir, step: int, *, model, tokenizer, optimizer, scheduler, scaler, config_dict: dict,
                    trainer_state: dict, rank: int = 0) -> Path:
    """Write OUT/checkpoint-<step>/ atomically (rank 0 writes; RNG of rank r goes to rng_rank<r>)."""
    out = Path(output_dir)
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    if rank == 0:
        if final.exists():
            raise UserError(f"{final} already exists; refusing to overwrite a checkpoint.")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model_dir(tmp, model, tokenizer, config_dict, trainer_state)
        ts = tmp / "training_state"
        ts.mkdir()
        opt_t, opt_meta = _optimizer_to_files(optimizer)
        save_file(opt_t, str(ts / "optimizer.safetensors"))
        atomic_write_json(ts / "optimizer.json", opt_meta)
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        atomic_write_json(ts / "scheduler.json", sched)
        atomic_write_json(ts / "scaler.json", scaler.state_dict() if scaler is not None and scaler.is_enabled() else {})
    return final


def save_rng(output_dir, step: int, rank: int) -> None:
    ts = Path(output_dir) / f".checkpoint-{step}.tmp" / "training_state"
    rng_t, rng_meta = _rng_state()
    save_file(rng_t, str(ts / f"rng_rank{rank}.safetensors"))
    atomic_write_json(ts / f"rng_rank{rank}.json", rng_meta)


def finalize_checkpoint(output_dir, step: int) -> Path:
    out = Path(output_dir)
    os.replace(out / f".checkpoint-{step}.tmp", out / f"checkpoint-{step}")
    return out / f"checkpoint-{step}"


def save_model_dir(path, model, tokenizer, config_dict: dict, trainer_state: dict) -> None:
    """Weights (safetensors, fp32 masters), config, generation config, tokenizer + template, our JSONs."""
    path = Path(path)
    if hasattr(model, "peft_config"):
        # LoRA: the adapter (for resume) in adapter/, and a merged full model at the top level so that
        # from_pretrained and the IFEval sweep load the checkpoint like any other.
        import copy

        model.save_pretrained(path / "adapter")
        merged = copy.deepcopy(model).to("cpu").merge_and_unload()
        merged.save_pretrained(path, safe_serialization=True)
        del merged
    else:
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    atomic_write_json(path / "sft_config.json", config_dict)
    atomic_write_json(path / "trainer_state.json", trainer_state)


def save_final(out: Path, model, tok, cfg_dict: dict, trainer_state: dict) -> None:
    """The final model in OUT itself (from_pretrained(OUT) works); trainer_state.json is moved in last."""
    out = Path(out)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, model, tok, cfg_dict, trainer_state)
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "trainer_state.json"] + ["trainer_state.json"]:
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def load_training_state(ckpt: Path, *, optimizer, scheduler, scaler, rank: int = 0) -> dict:
    ts = Path(ckpt) / "training_state"
    _optimizer_from_files(optimizer, load_file(str(ts / "optimizer.safetensors")), read_json(ts / "optimizer.json"))
    sched = read_json(ts / "scheduler.json")
    cur = scheduler.state_dict()
    cur.update(sched)
    scheduler.load_state_dict(cur)
    sc = read_json(ts / "scaler.json")
    if scaler is not None and scaler.is_enabled() and sc:
        scaler.load_state_dict(sc)
    rng_file = ts / f"rng_rank{rank}.safetensors"
    if rng_file.is_file():
        _set_rng_state(load_file(str(rng_file)), read_json(ts / f"rng_rank{rank}.json"))
    return read_json(Path(ckpt) / "trainer_state.json")


def prune_checkpoints(output_dir, keep_state: int | None, keep_weights: int | None) -> list[str]:
    """Delete training_state/ of all but the newest `keep_state` checkpoints first; weights only if keep_weights is set."""
    actions = []
    ckpts = list_checkpoints(output_dir)
    if keep_state is not None and keep_state >= 0:
        for _, p in ckpts[: max(0, len(ckpts) - keep_state)]:
            if (p / "training_state").exists():
                rmtree_retry(p / "training_state")  # Windows: retried while a file inside is held open
                actions.append(f"removed optimizer state of {p.name}")
    if keep_weights is not None and keep_weights >= 0:
        for _, p in ckpts[: max(0, len(ckpts) - keep_weights)]:
            rmtree_retry(p)
            actions.append(f"removed {p.name}")
    return actions
