"""Everything train() does before its first step and around each step, as small functions.

Order matters for exact resume and for the losses staying bit-identical: seed, validate, tokenizer, data,
model (fp32 masters), engine, optimizer/schedule/scaler, resume state, then the run directory.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sftbench.core.errors import UserError
from sftbench.data.build import build_examples
from sftbench.data.records import Loaded, read_records
from sftbench.model.hf import chat_template_of, load_tokenizer, stop_token_ids
from sftbench.train.prepare import prepare_data
from sftbench.config.train import TrainConfig, resolve_accumulation
from sftbench.train.dist import Dist, log
from sftbench.train.engines import causal_lm, make_engine
from sftbench.train.step import add_lora, build_optimizer, optimizer_and_schedule, prepare_model, target_count  # noqa: F401 (API)
from sftbench.train.step import optimizer_step as _optimizer_step
from sftbench.train.stop import check_weights_finite


@dataclass
class Run:
    """The state of one training run that the loop reads and updates."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    prec: Any
    out: Path
    resume: Path | None
    tok: Any
    examples: list
    stats: Any
    n_targets: list
    window: int
    steps_per_epoch: int
    total_steps: int
    model: Any = None
    engine: Any = None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    start_step: int = 0
    last_loss: float = float("nan")
    cfg_dict: dict = field(default_factory=dict)
    tracker: Any = None
    monitor: Any = None
    pbar: Any = None
    t_start: float = 0.0
    model_path: str = ""
    cap_msg: str | None = None
    starting_over: bool = False  # --start_over of a run that stopped before its first checkpoint
    data_fingerprint: str = ""
    changes: dict = field(default_factory=dict)  # settings changed on resume: {name: {"from", "to"}}
    lock: Any = None  # sftbench.core.lock.DirLock on OUT (rank 0), held from start() to the end


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    """The data order of one epoch: a permutation that depends only on (seed, epoch), so resume is exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def window_of(run: Run, step: int) -> tuple[list[list[dict]], int]:
    """(this rank's micro-batches, target tokens of the whole window) of optimizer step `step` (0-based)."""
    epoch, pos = divmod(step, run.steps_per_epoch)
    idx = epoch_order(run.cfg.seed, epoch, len(run.examples))[pos * run.window:(pos + 1) * run.window]
    win = [run.examples[i] for i in idx]
    mb = run.cfg.per_device_train_batch_size
    micro = [win[i:i + mb] for i in range(0, run.window, mb)]
    return micro[run.d.rank::run.d.world], sum(run.n_targets[i] for i in idx)  # rank r takes r, r+world, ...


# ----------------------------------------------------------------------------- before the first step

def start(cfg: TrainConfig) -> Run:
    """Device, validation, tokenizer and data: everything that can fail on bad input, before any weights load."""
    from sftbench.core.device import pick_device, pick_precision
    from sftbench.model.offline import resolve_model_path
    from sftbench.train import checkpoint as ck

    d = Dist()
    device = pick_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    d.init(device.type)
    from sftbench.core.device import start_notes

    for note in start_notes(device):  # a CPU torch next to a GPU; Windows WDDM
        log(d, note)
    prec = pick_precision(device, cfg.bf16, cfg.fp16, cfg.precision)
    if prec.name != "fp32":  # the resolved choice, in the HF booleans too (sft_config.json, the planner's OOM advice)
        cfg.precision, cfg.bf16, cfg.fp16 = prec.name, prec.name == "bf16", prec.name == "fp16"
    if cfg.engine == "fast" or (cfg.engine == "auto" and device.type == "cuda"):
        from sftbench.core.capabilities import decide_train_path, probe

        # a forced --compile/--attention that cannot run here: UserError before any weights load
        decide_train_path(probe(device), precision=prec.name, compile=cfg.compile, attention=cfg.attention)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    starting_over = check_output_dir(out, resuming=bool(cfg.resume_from_checkpoint), start_over=cfg.start_over)
    resume = (ck.resolve_resume(cfg.resume_from_checkpoint, out)
              if cfg.resume_from_checkpoint and not (starting_over and cfg.resume_from_checkpoint == "latest") else None)
    resolve_accumulation(cfg, d.world)
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "model_max_length", "save_steps", "logging_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(cfg, name)}).")
    if cfg.engine == "fast" and cfg.method == "lora":
        raise UserError("--engine fast trains full weights only; use --engine reference with --method lora.")
    check_report_to(cfg.report_to)
    model_path = resolve_model_path(cfg.model_name_or_path)
    check_model_files(model_path, resume)  # a foreign architecture, a damaged weights / optimizer file: one line
    # the project's one loader: the template evaluation will use too (a fallback to plain ChatML is logged)
    tok = load_tokenizer(model_path, cfg.chat_template, log=lambda m: log(d, m))
    if cfg.auto_batch:
        auto_batch(cfg, device, d)
    loaded = read_records(cfg.data_path, lenient=True)  # the one read of the data file (records + fingerprint)
    fingerprint = loaded.fingerprint
    changes = check_resume_settings(cfg, resume, out, d.world, prec.name, tok.chat_template, fingerprint) if resume else {}
    examples, stats = load_data(cfg, tok, d, loaded)
    window = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * d.world
    if not examples:
        raise UserError(no_examples_message(cfg, stats))
    if len(examples) < window:
        raise UserError(f"{cfg.data_path}: {len(examples)} trainable conversations, fewer than one optimizer step's "
                        f"effective batch ({window}). Lower --gradient_accumulation_steps or add data.")
    steps_per_epoch = len(examples) // window
    n_targets = [target_count(ex) for ex in examples]  # shifted targets, once
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    return Run(cfg, d, device, prec, out, resume, tok, examples, stats, n_targets, window, steps_per_epoch, total_steps,
               model_path=model_path, starting_over=starting_over, data_fingerprint=fingerprint, changes=changes)


def check_report_to(report_to: str) -> None:
    """--report_to tensorboard / wandb needs that package: say which, before any work."""
    import importlib.util

    need = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}.get(report_to)
    if need and importlib.util.find_spec(need[0]) is None:
        raise UserError(f"--report_to {report_to} needs the package {need[0]}, which is not installed: {need[1]} "
                        f"(or leave --report_to at none; metrics.jsonl in --output_dir has every logged value).")


def check_model_files(model_path: str, resume: Path | None) -> None:
    """The base model (and the checkpoint resumed) is a Llama-architecture model whose weights files are whole, and
    the resumed optimizer state too: UserError naming the file, before anything loads (sftbench/model/load.py)."""
    from sftbench.core.fingerprint import read_safetensors_header
    from sftbench.model.load import check_config, check_weight_files

    for p in [model_path] + ([str(resume)] if resume else []):
        check_config(p, llama_only=True)
        check_weight_files(p)
    if resume:
        read_safetensors_header(Path(resume) / "training_state" / "optimizer.safetensors")


def no_examples_message(cfg: TrainConfig, stats) -> str:
    """Why no conversation is left to train on, from the data counts (not a guess)."""
    bad = sum(stats.skipped_bad.values())
    if stats.records == 0:
        why = "it holds no records (an empty file?)"
    elif bad == stats.records:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped_bad.items()))
        why = (f"all {stats.records} records are bad and were skipped by --skip_bad_records ({reasons}); run without "
               f"--skip_bad_records to see the first one with its file and line")
    else:
        why = (f"{stats.records} records: {bad} bad and skipped, {stats.dropped_no_target} lost every assistant token to "
               f"--model_max_length {cfg.model_max_length} / --max_rounds {cfg.max_rounds} (--truncation_side "
               f"{cfg.truncation_side})")
    return (f"{cfg.data_path}: no trainable conversation: {why}. Nothing was written. Point --data_path at chat data "
            f"(one {{\"messages\": [...]}} object per line).")


# What the trainer writes into --output_dir (besides checkpoint-N/ and the final model's files, which come with
# sft_config.json): a directory holding anything else, and no run, is not ours to write into.
RUN_MARKERS = ("sft_config.json", "metrics.jsonl", "trainer_state.json")
OWN_FILES = ("config_history.jsonl", "memory_samples.jsonl", "contamination.json", "augment_stats.json", "tensorboard",
             "wandb")
MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "adapter_model.safetensors")


def _own(name: str) -> bool:
    """A name the trainer may have left (hidden temporaries, the OOM retry's moved-aside logs)."""
    return (name.startswith(".") or name in OWN_FILES or name.startswith(("metrics.jsonl.oom-", "sft_config.json.oom-")))


def check_output_dir(out: Path, resuming: bool, start_over: bool = False) -> bool:
    """UserError unless --output_dir may be written; True when a run with no checkpoint is to be started over.

    Refused: a file; a directory with files the trainer did not write and no run (a model directory, say); a run
    (fresh start); a run that stopped before its first checkpoint, unless --start_over."""
    from sftbench.core.rundir import checkpoint_step

    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: exists and is a file.")
    if not out.is_dir():
        return False
    names = sorted(p.name for p in out.iterdir())
    ckpts = [n for n in names if checkpoint_step(n) is not None]
    markers = [n for n in names if n in RUN_MARKERS] + ckpts
    if not markers:
        foreign = [n for n in names if not _own(n)]
        if foreign:
            weights = [n for n in foreign if n in MODEL_FILES]
            what = f"a model directory ({', '.join(weights)})" if weights else "files the trainer did not write"
            raise UserError(
                f"--output_dir {out} holds {what}: {', '.join(foreign[:6])}{' ...' if len(foreign) > 6 else ''}. "
                f"Training writes checkpoints and its final model there and would overwrite them. Nothing was "
                f"written. Choose a new or empty --output_dir (the model to start from is --model_name_or_path).")
        return False
    if not ckpts and "trainer_state.json" not in names:  # killed before its first checkpoint
        if start_over:
            return True
        raise UserError(
            f"--output_dir {out} holds a run that stopped before its first checkpoint ({', '.join(markers)}; no "
            f"checkpoint-N/), so there is nothing to resume. Nothing was written. Start it over with --start_over True "
            f"(its metrics.jsonl and sft_config.json are replaced), or choose a new --output_dir.")
    if start_over:
        raise UserError(f"--start_over: {out} holds checkpoints ({', '.join(ckpts[:4])}); only a run with none is started "
                        f"over. Nothing was written. Resume it with --resume_from_checkpoint latest, or choose a new --output_dir.")
    if not resuming:
        raise UserError(
            f"--output_dir {out} already holds a run ({', '.join(sorted(markers)[:4])}). Nothing was overwritten. "
            f"Continue it with --resume_from_checkpoint latest, or choose a new --output_dir.")
    return False


# Settings that determine the losses of every step: changing one on resume breaks "resumed == uninterrupted".
# Not here (free to change): the run's length (--max_steps / --num_train_epochs, extending a finished run),
# checkpoint/log cadence, engine and memory knobs, the micro-batch / accumulation split of the same effective batch.
EXACT_RESUME_SETTINGS = (
    "model_name_or_path", "seed", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "model_max_length", "max_rounds",
    "truncation_side", "masking", "chat_template", "skip_bad_records", "special_tokens_in_content", "method",
    "lora_rank", "precision", "effective_batch_size", "data")
LENGTH_SETTINGS = ("max_steps", "num_train_epochs")


def _resume_view(c: dict) -> dict:
    """The settings of a sft_config.json dict that resume compares (the data by content when known)."""
    v = {k: c.get(k) for k in EXACT_RESUME_SETTINGS + LENGTH_SETTINGS if k in c}
    if all(k in c for k in ("per_device_train_batch_size", "gradient_accumulation_steps")):
        v["effective_batch_size"] = c["per_device_train_batch_size"] * c["gradient_accumulation_steps"] * c.get("world_size", 1)
    v["data"] = c.get("data_fingerprint") or c.get("data_path")
    return v


def check_resume_settings(cfg: TrainConfig, resume: Path, out: Path, world: int, precision: str, template: str,
                          fingerprint: str) -> dict:
    """{setting: {"from", "to"}} that differ from the checkpoint's sft_config.json; UserError for those that break
    exact resume, unless --allow_changed_settings."""
    from sftbench.core.io import read_json

    saved_path = Path(resume) / "sft_config.json"
    if not saved_path.is_file():
        return {}
    saved = read_json(saved_path)
    now = cfg.to_dict() | {"world_size": world, "precision": precision, "chat_template": template,
                           "data_fingerprint": fingerprint if saved.get("data_fingerprint") else None}
    old, new = _resume_view(saved), _resume_view(now)
    changes = {k: {"from": old[k], "to": new.get(k)} for k in old if old[k] != new.get(k)}
    breaking = [k for k in changes if k in EXACT_RESUME_SETTINGS]
    if breaking and not cfg.allow_changed_settings:
        def show(k):
            if k == "data":
                return f"the data ({saved.get('data_path')} -> {cfg.data_path}, content differs)"
            if k == "chat_template":
                return "the chat template"
            return f"{k} {changes[k]['from']!r} -> {changes[k]['to']!r}"
        raise UserError(
            f"--resume_from_checkpoint {resume}: this run's settings differ from the checkpoint's ({saved_path}): "
            f"{'; '.join(show(k) for k in breaking)}. A resumed run would not match an uninterrupted one. Nothing was "
            f"written. Resume with the checkpoint's settings, or pass --allow_changed_settings True to continue with "
            f"the new ones (each change is recorded in {out / 'config_history.jsonl'}).")
    return changes


def load_data(cfg: TrainConfig, tok, d: Dist, loaded: Loaded):
    """(examples, stats) of the records read at the start: guarded, augmented, tokenised (or from the cache)."""
    cache = cfg.data.cache_dir()  # None: --data_cache_dir none
    if d.enabled and not d.main:
        d.barrier()  # rank 0 tokenises (and fills the cache) first
    prep = prepare_data(cfg, d, loaded=loaded)  # contamination guard, --augment_fraction (sftbench/train/prepare.py)
    examples, stats = build_examples(
        prep.data_path, tok, max_length=cfg.model_max_length, max_rounds=cfg.max_rounds,
        mode=cfg.masking, truncation_side=cfg.truncation_side, chat_template=None,
        on_bad_record="skip" if cfg.skip_bad_records else "error", cache_dir=cache, progress=d.main and cfg.progress,
        special_tokens=cfg.special_tokens_in_content,
        loaded=loaded if prep.data_path == cfg.data_path else None)  # else a guarded/augmented copy to read
    prep.done()
    stats.prepared = prep  # not a count: open_run_dir writes its reports into the run directory
    if d.enabled and d.main:
        d.barrier()
    log(d, f"data: {stats.as_dict()}")
    return examples, stats


def auto_batch(cfg: TrainConfig, device: torch.device, d: Dist) -> None:
    """--auto_batch: the largest micro-batch the memory model fits on this GPU, same effective batch."""
    from sftbench.plan import pick_auto_batch, spec_from_train_config

    if device.type != "cuda":
        log(d, "auto batch: no GPU, keeping the given micro-batch and accumulation")
        return
    mem = cfg.memory_cap_gib or torch.cuda.get_device_properties(device).total_memory / 1024**3
    eff = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    mb, acc = pick_auto_batch(spec_from_train_config(cfg), mem, eff)
    log(d, f"auto batch for {mem:.1f} GiB: micro-batch {mb} x accumulation {acc} (effective {eff}; was "
           f"{cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps})")
    cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps = mb, acc


def build_model_and_engine(run: Run) -> None:
    """fp32 master weights (LoRA adapters on top for --method lora), the engine, optimizer, schedule, scaler."""
    from sftbench.core.memory import apply_memory_cap
    from sftbench.model.load import load_causal_lm

    cfg, d, device = run.cfg, run.d, run.device
    explicit = cfg.engine == "fast"
    if cfg.engine == "auto":
        cfg.engine = "fast" if (device.type == "cuda" and cfg.method == "full") else "reference"
        log(d, f"engine: {cfg.engine} (auto: {'CUDA GPU, full fine-tuning' if cfg.engine == 'fast' else 'no GPU or LoRA'})")
    run.cap_msg = apply_memory_cap(cfg.memory_cap_gib, device)
    if cfg.method == "lora":
        model = load_lora_model(run.model_path, run.resume, cfg)
    else:
        model = load_causal_lm(str(run.resume or run.model_path), torch.float32, llama_only=True)
    model.config.use_cache = False
    gcfg = causal_lm(model).generation_config
    gen_eos = [gcfg.eos_token_id] if isinstance(gcfg.eos_token_id, int) else list(gcfg.eos_token_id or [])
    gcfg.eos_token_id = list(dict.fromkeys(stop_token_ids(run.tok) + gen_eos))  # stop at end-of-turn when evaluated
    gcfg.pad_token_id = run.tok.pad_token_id
    prepare_model(model, cfg, device)  # no KV cache, HF checkpointing, on the device in train mode
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.prec.use_grad_scaler)
    run.model = model
    run.engine = make_engine(model, cfg, device, d, run.prec, run.scaler, pad_id=run.tok.pad_token_id, explicit=explicit)
    run.optimizer, run.scheduler = optimizer_and_schedule(model, cfg, device, run.total_steps)


def load_lora_model(model_path: str, resume, cfg: TrainConfig):
    """Base weights in fp32 + LoRA adapters on q/k/v/o/gate/up/down; resumed adapters from ckpt/adapter."""
    try:
        from peft import PeftModel
    except ImportError:
        raise UserError("--method lora needs the package peft: pip install 'sftbench[lora]' (or pip install peft).") from None
    from sftbench.model.load import load_causal_lm

    base = load_causal_lm(model_path, torch.float32, llama_only=True)
    if resume:
        return PeftModel.from_pretrained(base, str(Path(resume) / "adapter"), is_trainable=True)
    return add_lora(base, cfg)


def restore(run: Run) -> None:
    """--resume_from_checkpoint: optimizer, schedule, scaler and RNG state; refuses resumes that would lose results."""
    from sftbench.train import checkpoint as ck

    cfg, d, resume, out = run.cfg, run.d, run.resume, run.out
    state = ck.load_training_state(resume, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler, rank=d.rank)
    run.start_step = int(state["global_step"])
    sync_lr_to_schedule(run.optimizer, run.scheduler)
    if run.start_step > run.total_steps:  # else the final model would be labelled with a step its weights are past
        raise UserError(f"--resume_from_checkpoint {resume}: that checkpoint is at step {run.start_step}, past this "
                        f"run's {run.total_steps} optimizer steps. Nothing was written. Raise --max_steps / "
                        f"--num_train_epochs, or resume from an earlier checkpoint.")
    later = [p.name for st, p in ck.list_checkpoints(out) if st > run.start_step]
    if later:  # else the run would stop at the first of them, after truncating metrics.jsonl
        raise UserError(f"--resume_from_checkpoint {resume}: {out} already holds later checkpoints "
                        f"({', '.join(later[:4])}). Nothing was changed. Resume from the newest "
                        f"(--resume_from_checkpoint latest), or move the later checkpoints out of {out} first.")
    if isinstance(state.get("loss"), (int, float)):
        run.last_loss = float(state["loss"])  # resuming a finished run: the final model keeps its loss, not NaN
    if state.get("world_size", d.world) != d.world or state.get("steps_per_epoch", run.steps_per_epoch) != run.steps_per_epoch:
        log(d, f"warning: resuming with world size {d.world} / steps per epoch {run.steps_per_epoch}, the checkpoint had "
               f"{state.get('world_size')} / {state.get('steps_per_epoch')}: the data order will differ from a straight run.")


def sync_lr_to_schedule(optimizer, scheduler) -> None:
    """After loading optimizer/scheduler state: set each group's lr from THIS run's schedule at the resumed step.

    The optimizer state carries the lr of the old schedule's next step; when a finished run is extended with a
    larger --max_steps, that is the old schedule's end (0 for linear decay), and the first new step would not
    move.  Same schedule: the recomputed value equals the saved one, so exact resume is unchanged."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas:
        return
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)


def record_history(run: Run) -> None:
    """OUT/config_history.jsonl: one row per start, start over and resume with changed settings; a start over
    also removes what the stopped run left (its metrics, half-written checkpoint temporaries)."""
    import shutil

    from sftbench.core.io import append_jsonl

    out, when = run.out, time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if run.starting_over:
        for p in [out / "metrics.jsonl", out / "memory_samples.jsonl", *out.glob(".checkpoint-*.tmp"), out / ".final.tmp"]:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        append_jsonl(out / "config_history.jsonl", {"event": "start_over", "time": when})
    elif run.resume is None:
        append_jsonl(out / "config_history.jsonl", {"event": "start", "time": when})
    if run.resume is not None and run.changes:
        append_jsonl(out / "config_history.jsonl", {"event": "resume", "time": when, "step": run.start_step,
                                                    "checkpoint": str(run.resume), "changed": run.changes})


def open_run_dir(run: Run) -> None:
    """sft_config.json, metrics.jsonl cut back to the resumed step, the start-up log, trackers, monitor, bar."""
    from sftbench.core.io import atomic_write_json, atomic_write_jsonl, read_jsonl
    from sftbench.core.memory import MemoryMonitor
    from sftbench.train.prepare import write_reports

    cfg, d, out = run.cfg, run.d, run.out
    run.cfg_dict = cfg.to_dict() | {"resolved_model_path": run.model_path, "world_size": d.world,
                                    "precision": run.prec.name, "chat_template": run.tok.chat_template,
                                    "chat_template_name": chat_template_of(run.tok).name,
                                    "data_fingerprint": run.data_fingerprint}
    if getattr(run.engine, "path", None) is not None:  # how it runs: engine, compile, attention, dtype, graphs, why
        run.cfg_dict["resolved_path"] = run.engine.path.to_dict()
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        record_history(run)
        atomic_write_json(out / "sft_config.json", run.cfg_dict)
        write_reports(out, getattr(run.stats, "prepared", None))  # contamination.json, augment_stats.json
        metrics_path = out / "metrics.jsonl"
        if run.resume and metrics_path.exists():  # drop rows logged after the checkpoint we resume from
            atomic_write_jsonl(metrics_path, [r for r in read_jsonl(metrics_path, tolerate_partial_tail=True)
                                              if r.get("step", 0) <= run.start_step])
    log(d, f"device: {run.prec.reason}" + (f"; {run.cap_msg}" if run.cap_msg else ""))
    log(d, f"GPUs/processes: {d.world} | micro-batch {cfg.per_device_train_batch_size} x accumulation "
           f"{cfg.gradient_accumulation_steps} x {d.world} = effective batch {run.window} conversations")
    log(d, f"steps: {run.total_steps} optimizer steps ({run.steps_per_epoch} per epoch; "
           f"{len(run.examples) - run.steps_per_epoch * run.window} conversations per epoch fall outside a full window "
           f"and wait for the next shuffle)" + (f"; resuming at step {run.start_step} from {run.resume}" if run.resume else ""))
    if d.main and cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        run.tracker = SummaryWriter(str(out / "tensorboard"))
    elif d.main and cfg.report_to == "wandb":
        import wandb
        run.tracker = wandb.init(project=os.environ.get("WANDB_PROJECT", "sftbench"), config=run.cfg_dict, dir=str(out))
    run.monitor = MemoryMonitor(device_index=run.device.index or 0 if run.device.type == "cuda" else 0)
    if run.device.type == "cuda" and d.main:
        run.monitor.start()
    if d.main and cfg.progress:
        from tqdm.auto import tqdm
        run.pbar = tqdm(total=run.total_steps, initial=run.start_step, desc="train", unit="step", dynamic_ncols=True)
    run.t_start = time.time()


# ----------------------------------------------------------------------------- each step

def optimizer_step(run: Run) -> tuple[float, float]:
    """Unscale, clip, step, advance the schedule (sftbench.train.step.optimizer_step); returns (grad_norm before
    clipping, the lr this step used)."""
    return _optimizer_step(run.model, run.optimizer, run.scheduler, run.scaler, run.cfg.max_grad_norm)


def log_step(run: Run, step: int, grad_norm: float, lr: float, real_tokens: int, n_window: int, dt: float) -> None:
    """A metrics.jsonl row (every --logging_steps and at the end), the tracker and the progress bar."""
    from sftbench.core.io import append_jsonl
    from sftbench.core.memory import GIB

    cfg, global_step = run.cfg, step + 1
    if run.d.main and (global_step % cfg.logging_steps == 0 or global_step == run.total_steps):
        row = {"step": global_step, "epoch": round(step / run.steps_per_epoch + 1 / run.steps_per_epoch, 4),
               "loss": round(run.last_loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
               "tokens_per_s": round(real_tokens / dt, 1), "real_tokens": real_tokens, "target_tokens": n_window,
               "time_s": round(time.time() - run.t_start, 2)}
        if run.device.type == "cuda":
            row["torch_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(run.device) / GIB, 3)
            used, peak = run.monitor.sample(), run.monitor.peak_bytes()
            row["nvml_used_gib"] = None if used is None else round(used / GIB, 3)
            row["nvml_peak_gib"] = None if peak is None else round(peak / GIB, 3)
        append_jsonl(run.out / "metrics.jsonl", row)
        if run.tracker is not None and cfg.report_to == "tensorboard":
            for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                run.tracker.add_scalar(f"train/{k}", row[k], global_step)
        elif run.tracker is not None:
            run.tracker.log(row, step=global_step)
    if run.pbar is not None:
        run.pbar.update(1)
        run.pbar.set_postfix(loss=f"{run.last_loss:.4f}", tok_s=f"{real_tokens / dt:.0f}", lr=f"{lr:.2e}")


def save_step(run: Run, global_step: int) -> None:
    """OUT/checkpoint-<step>/ every --save_steps and at the end (rank 0 writes, every rank its RNG), then pruning."""
    from sftbench.train import checkpoint as ck

    if not (global_step % run.cfg.save_steps == 0 or global_step == run.total_steps):
        return
    d, out = run.d, run.out
    trainer_state = {"global_step": global_step, "epoch": global_step / run.steps_per_epoch, "total_steps": run.total_steps,
                     "steps_per_epoch": run.steps_per_epoch, "world_size": d.world, "loss": run.last_loss}
    if (out / f"checkpoint-{global_step}").exists():
        raise UserError(f"{out}/checkpoint-{global_step} already exists; refusing to overwrite it.")
    check_weights_finite(run, global_step)  # never a checkpoint with NaN/Inf weights
    with checkpoint_writes(run, global_step):  # disk full / read-only / OUT deleted -> one message, exit 5
        ck.save_checkpoint(out, global_step, model=run.model, tokenizer=run.tok, optimizer=run.optimizer,
                           scheduler=run.scheduler, scaler=run.scaler, config_dict=run.cfg_dict,
                           trainer_state=trainer_state, rank=d.rank)
        d.barrier()
        ck.save_rng(out, global_step, d.rank)
        d.barrier()
        if d.main:
            ck.finalize_checkpoint(out, global_step)
    if d.main:
        for a in ck.prune_checkpoints(out, run.cfg.save_total_limit, run.cfg.keep_weights_limit):
            log(d, a)
    d.barrier()


def checkpoint_bytes(run: Run) -> int:
    """About what one checkpoint takes on disk: the weights as saved (fp32 masters; LoRA: the merged model plus
    the adapter), the optimizer's tensors, and room for tokenizer and JSON files."""
    weights = sum(p.numel() * p.element_size() for p in run.model.parameters())
    opt = sum(v.numel() * v.element_size() for st in run.optimizer.state.values() for v in st.values()
              if torch.is_tensor(v) and v.dim() > 0)
    return weights + opt + 64 * 2**20


def checkpoint_writes(run: Run, global_step: int):
    """Free-space check before a checkpoint, and its write failures as one DiskWriteError (exit 5) that names the
    path, the space it needs and the checkpoint that is kept; the half-written temporary is removed."""
    import contextlib
    import shutil

    from sftbench.core import io
    from sftbench.core.errors import DiskWriteError
    from sftbench.train.stop import resume_advice

    out, path = run.out, run.out / f"checkpoint-{global_step}"

    @contextlib.contextmanager
    def guarded():
        needed = checkpoint_bytes(run)
        kept = resume_advice(out) if out.is_dir() else ""
        if run.lock is not None and not run.lock.still_held():  # OUT deleted or moved: don't recreate it
            raise DiskWriteError(io.disk_write_message(path, errno.ENOENT, needed, kept), errno.ENOENT)
        try:
            if run.d.main:
                io.check_free_space(path, needed, kept)
            with io.disk_writes(path, needed, kept):
                yield
        except DiskWriteError:
            shutil.rmtree(out / f".checkpoint-{global_step}.tmp", ignore_errors=True)  # give the space back
            raise

    return guarded()


# ----------------------------------------------------------------------------- after the last step

def finish(run: Run) -> dict:
    """The final model in OUT itself, memory samples, trackers closed, process group torn down."""
    from sftbench.core.io import atomic_write_jsonl
    from sftbench.core.memory import GIB
    from sftbench.train.checkpoint import save_final

    d, out, total = run.d, run.out, run.total_steps
    if d.main:
        check_weights_finite(run, total)
        from sftbench.core.io import check_free_space, disk_writes
        from sftbench.train.stop import resume_advice

        needed = sum(p.numel() * p.element_size() for p in run.model.parameters()) + 64 * 2**20
        kept = f"The final model was not written. {resume_advice(out)}"
        check_free_space(out / "model.safetensors", needed, kept)
        with disk_writes(out / "model.safetensors", needed, kept):
            save_final(out, run.model, run.tok, run.cfg_dict, {"global_step": total, "epoch": total / run.steps_per_epoch,
                                                               "total_steps": total, "loss": run.last_loss, "final": True})
        if run.monitor.samples:
            atomic_write_jsonl(out / "memory_samples.jsonl",
                               [{"t": t, "nvml_used_gib": round(u / GIB, 4)} for t, u in run.monitor.samples])
        log(d, f"done: {total} steps, final loss {run.last_loss:.4f}, {time.time() - run.t_start:.1f} s; model in {out}")
    if run.tracker is not None:
        run.tracker.close() if run.cfg.report_to == "tensorboard" else run.tracker.finish()
    d.close()
    return {"global_step": total, "final_loss": run.last_loss, "output_dir": str(out), "data_stats": run.stats.as_dict()}
