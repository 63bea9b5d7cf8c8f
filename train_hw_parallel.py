#!/usr/bin/env python
"""Multi-turn SFT: loss on the assistant's tokens only, fp32 master weights under autocast,
atomic checkpoints, exact resume, one process per GPU (DDP) when launched with accelerate/torchrun.

    python train_hw_parallel.py --help
    bash scripts/sft_4060_8gb.sh                      # the 8 GB preset ("strategy A")
    accelerate launch --num_processes 2 train_hw_parallel.py ...

The training loop is `train()` below, one visible function.  Pieces it uses:
data -> conversation_func.py, loss -> loss_functions.py, config -> sftbench/train/config.py,
device/precision -> sftbench/device.py, checkpoints -> sftbench/train/checkpoint.py.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from sftbench.errors import UserError, exit_with_user_error
from sftbench.train.config import TrainConfig, parse_train_config

PROG = "train_hw_parallel.py"


# ----------------------------------------------------------------------------- small helpers

class Dist:
    """Rank/world from the launcher's environment (accelerate launch and torchrun both set these)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device_type: str) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, x: float) -> float:
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return float(t.item())


def log(d: Dist, msg: str) -> None:
    if d.main:
        print(f"[train] {msg}", flush=True)


class CausalLMLossSum(torch.nn.Module):
    """Wraps the HF model so DDP sees one forward that returns (sum of token CE in fp32, n targets).

    With `chunk_size > 0` the CE runs over the final hidden states in chunks (loss_functions.chunked_ce_sum),
    never materialising the full [tokens, vocab] fp32 logits.
    """

    def __init__(self, model, chunk_size: int):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, labels):
        from loss_functions import chunked_ce_sum, masked_ce_sum

        if self.chunk_size > 0:
            hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            return chunked_ce_sum(hidden, self.model.lm_head.weight, labels, chunk_size=self.chunk_size)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return masked_ce_sum(logits, labels)


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    """The data order of one epoch: a permutation that depends only on (seed, epoch), so resume is exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def check_output_dir(out: Path, resuming: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: exists and is a file.")
    if out.is_dir() and not resuming:
        markers = [p.name for p in out.iterdir() if p.name in ("sft_config.json", "metrics.jsonl", "trainer_state.json")
                   or p.name.startswith("checkpoint-")]
        if markers:
            raise UserError(
                f"--output_dir {out} already holds a run ({', '.join(sorted(markers)[:4])}). Nothing was overwritten. "
                f"Continue it with --resume_from_checkpoint latest, or choose a new --output_dir.")


def load_tokenizer(model_path: str, cfg: TrainConfig):
    from transformers import AutoTokenizer

    from sftbench.chat_template import PLAIN_CHATML

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except OSError as e:
        raise UserError(f"{model_path}: could not load a tokenizer ({e}).") from None
    if cfg.chat_template:
        p = Path(cfg.chat_template)
        if not p.is_file():
            raise UserError(f"--chat_template {p}: file not found.")
        tok.chat_template = p.read_text()
        import jinja2

        try:  # a syntax error would otherwise surface as a traceback from the tokenisation
            tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"--chat_template {p}:{e.lineno}: Jinja syntax error ({e.message}).") from None
    elif not getattr(tok, "chat_template", None):
        tok.chat_template = PLAIN_CHATML  # the base model has none: plain ChatML, as the homework used
    if tok.pad_token is None:
        tok.pad_token = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else tok.eos_token
    return tok


def stop_token_ids(tok) -> list[int]:
    ids = []
    for t in ("<|im_end|>", tok.eos_token):
        if t is not None and t in tok.get_vocab():
            i = tok.convert_tokens_to_ids(t)
            if i not in ids:
                ids.append(i)
    return ids


def build_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    if device.type == "cuda":
        kw["fused"] = True  # one kernel for the whole update instead of several per tensor
    return torch.optim.AdamW(groups, **kw)


# ----------------------------------------------------------------------------- the training loop

def train(cfg: TrainConfig) -> dict:
    """Train; returns {"global_step", "final_loss", "output_dir", "data_stats"}."""
    from transformers import AutoModelForCausalLM, get_scheduler

    import conversation_func as cf
    from sftbench.train import checkpoint as ck
    from sftbench.device import pick_device, pick_precision
    from sftbench.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl
    from sftbench.memory import GIB, MemoryMonitor, apply_memory_cap
    from sftbench.models import resolve_model_path

    d = Dist()
    device = pick_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    d.init(device.type)
    prec = pick_precision(device, cfg.bf16, cfg.fp16)
    torch.manual_seed(cfg.seed)

    # --- validate everything before any heavy work ------------------------------------------------
    out = Path(cfg.output_dir)
    check_output_dir(out, resuming=bool(cfg.resume_from_checkpoint))
    resume = ck.resolve_resume(cfg.resume_from_checkpoint, out) if cfg.resume_from_checkpoint else None
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "model_max_length", "save_steps", "logging_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(cfg, name)}).")
    if cfg.engine == "fast" and cfg.method == "lora":
        raise UserError("--engine fast trains full weights only; use --engine reference with --method lora.")
    engine_asked = cfg.engine
    if cfg.engine == "auto":
        cfg.engine = "fast" if (device.type == "cuda" and cfg.method == "full") else "reference"
        log(d, f"engine: {cfg.engine} (auto: {'CUDA GPU, full fine-tuning' if cfg.engine == 'fast' else 'no GPU or LoRA'})")
    model_path = resolve_model_path(cfg.model_name_or_path)
    tok = load_tokenizer(model_path, cfg)
    if cfg.auto_batch:
        _auto_batch(cfg, device, d)

    # --- data -------------------------------------------------------------------------------------
    cache = None if (cfg.data_cache_dir or "").lower() == "none" else (
        cfg.data_cache_dir or str(Path.home() / ".cache" / "sftbench" / "tokenized"))
    if d.enabled and not d.main:
        d.barrier()  # rank 0 tokenises (and fills the cache) first
    examples, stats = cf.build_examples(
        cfg.data_path, tok, max_length=cfg.model_max_length, max_rounds=None if cfg.max_rounds < 0 else cfg.max_rounds,
        mode=cfg.masking, truncation_side=cfg.truncation_side, chat_template=None,
        on_bad_record="skip" if cfg.skip_bad_records else "error", cache_dir=cache, progress=d.main and cfg.progress)
    if d.enabled and d.main:
        d.barrier()
    log(d, f"data: {stats.as_dict()}")
    window = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * d.world
    if not examples:
        raise UserError(f"{cfg.data_path}: no trainable conversation ({stats.records} records read; an empty file, or every "
                        f"record lost its assistant tokens to --model_max_length / --max_rounds). Point --data_path at chat data.")
    if len(examples) < window:
        raise UserError(f"{cfg.data_path}: {len(examples)} trainable conversations, fewer than one optimizer step's "
                        f"effective batch ({window}). Lower --gradient_accumulation_steps or add data.")
    steps_per_epoch = len(examples) // window
    n_targets = [sum(1 for x in ex["labels"][1:] if x != -100) for ex in examples]  # shifted targets, once
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))

    # --- model, optimizer, schedule -----------------------------------------------------------------
    cap_msg = apply_memory_cap(cfg.memory_cap_gib, device)
    if cfg.method == "lora":
        model = _load_lora_model(model_path, resume, cfg)
    else:
        weights_from = str(resume) if resume else model_path
        model = AutoModelForCausalLM.from_pretrained(weights_from, dtype=torch.float32)  # fp32 masters, always
    model.config.use_cache = False
    stops = stop_token_ids(tok)
    gcfg = _causal_lm(model).generation_config
    gen_eos = [gcfg.eos_token_id] if isinstance(gcfg.eos_token_id, int) else list(gcfg.eos_token_id or [])
    gcfg.eos_token_id = list(dict.fromkeys(stops + gen_eos))  # stop at end-of-turn when evaluated
    gcfg.pad_token_id = tok.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method == "lora":
            model.enable_input_require_grads()
    model.to(device).train()
    token_budget = 0
    if cfg.engine == "fast":
        token_budget = _setup_fast_engine(model, cfg, device, d, explicit=engine_asked == "fast",
                                          half_precision=prec.name in ("bf16", "fp16"))
        if token_budget == 0:
            cfg.engine = "reference"
    loss_mod: torch.nn.Module = CausalLMLossSum(_causal_lm(model), cfg.loss_chunk_size)
    if d.enabled and cfg.engine != "fast":  # the fast engine all-reduces gradients itself (uneven packed rows per rank)
        loss_mod = torch.nn.parallel.DistributedDataParallel(
            loss_mod, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.effective_warmup_steps(total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.use_grad_scaler)
    start_step = 0
    last_loss = float("nan")
    if resume:
        state = ck.load_training_state(resume, optimizer=optimizer, scheduler=scheduler, scaler=scaler, rank=d.rank)
        start_step = int(state["global_step"])
        _sync_lr_to_schedule(optimizer, scheduler)
        if start_step > total_steps:  # else the final model would be labelled with a step its weights are past
            raise UserError(f"--resume_from_checkpoint {resume}: that checkpoint is at step {start_step}, past this "
                            f"run's {total_steps} optimizer steps. Nothing was written. Raise --max_steps / "
                            f"--num_train_epochs, or resume from an earlier checkpoint.")
        later = [p.name for st, p in ck.list_checkpoints(out) if st > start_step]
        if later:  # else the run would stop at the first of them, after truncating metrics.jsonl
            raise UserError(f"--resume_from_checkpoint {resume}: {out} already holds later checkpoints "
                            f"({', '.join(later[:4])}). Nothing was changed. Resume from the newest "
                            f"(--resume_from_checkpoint latest), or move the later checkpoints out of {out} first.")
        if isinstance(state.get("loss"), (int, float)):
            last_loss = float(state["loss"])  # resuming a finished run: the final model keeps its loss, not NaN
        if state.get("world_size", d.world) != d.world or state.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
            log(d, f"warning: resuming with world size {d.world} / steps per epoch {steps_per_epoch}, the checkpoint had "
                   f"{state.get('world_size')} / {state.get('steps_per_epoch')}: the data order will differ from a straight run.")

    cfg_dict = cfg.to_dict() | {"resolved_model_path": model_path, "world_size": d.world, "precision": prec.name,
                                "chat_template": tok.chat_template}
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "sft_config.json", cfg_dict)
        metrics_path = out / "metrics.jsonl"
        if resume and metrics_path.exists():  # drop rows logged after the checkpoint we resume from
            atomic_write_jsonl(metrics_path, [r for r in read_jsonl(metrics_path, tolerate_partial_tail=True)
                                              if r.get("step", 0) <= start_step])
    log(d, f"device: {prec.reason}" + (f"; {cap_msg}" if cap_msg else ""))
    log(d, f"GPUs/processes: {d.world} | micro-batch {cfg.per_device_train_batch_size} x accumulation "
           f"{cfg.gradient_accumulation_steps} x {d.world} = effective batch {window} conversations")
    log(d, f"steps: {total_steps} optimizer steps ({steps_per_epoch} per epoch; {len(examples) - steps_per_epoch * window} "
           f"conversations per epoch fall outside a full window and wait for the next shuffle)"
           + (f"; resuming at step {start_step} from {resume}" if resume else ""))

    tracker = None
    if d.main and cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        tracker = SummaryWriter(str(out / "tensorboard"))
    elif d.main and cfg.report_to == "wandb":
        import wandb
        tracker = wandb.init(project=os.environ.get("WANDB_PROJECT", "sftbench"), config=cfg_dict, dir=str(out))

    monitor = MemoryMonitor(device_index=device.index or 0 if device.type == "cuda" else 0)
    if device.type == "cuda" and d.main:
        monitor.start()
    pbar = None
    if d.main and cfg.progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    pad_id = tok.pad_token_id
    mb = cfg.per_device_train_batch_size
    t_start = time.time()
    try:
        for step in range(start_step, total_steps):
            t0 = time.time()
            epoch, pos = divmod(step, steps_per_epoch)
            order = epoch_order(cfg.seed, epoch, len(examples))
            idx = order[pos * window:(pos + 1) * window]
            win = [examples[i] for i in idx]
            micro = [win[i:i + mb] for i in range(0, window, mb)]
            # Normalise by the target tokens of the WHOLE window (all micro-batches, all ranks): the
            # gradient is then the same whatever the micro-batch / accumulation / GPU split.
            n_window = sum(n_targets[i] for i in idx)
            mine = micro[d.rank::d.world]  # rank r takes micro-batches r, r+world, ...
            ce_total, real_tokens = 0.0, 0
            if cfg.engine == "fast":
                ce_total, real_tokens = _fast_window(model, [ex for m in mine for ex in m], token_budget, pad_id,
                                                     n_window, prec, scaler, d, device, seed=cfg.seed + step)
                mine = []
            for j, batch_ex in enumerate(mine):
                batch = {k: v.to(device) for k, v in cf.collate(batch_ex, pad_id).items()}
                real_tokens += int(batch["attention_mask"].sum())
                sync = (j == len(mine) - 1)
                ctx = loss_mod.no_sync() if (d.enabled and not sync) else _null()
                with ctx:
                    with prec.autocast():
                        ce_sum, _ = loss_mod(batch["input_ids"], batch["attention_mask"], batch["labels"])
                    # DDP averages gradients over ranks; multiply by world so the result is sum / n_window.
                    loss = ce_sum.float() * (d.world / max(n_window, 1))
                    scaler.scale(loss).backward()
                ce_total += float(ce_sum.detach())
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            scaler.step(optimizer)
            scaler.update()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            global_step = step + 1
            ce_total, real_tokens = d.sum(ce_total), int(d.sum(real_tokens))
            last_loss = ce_total / max(n_window, 1)
            dt = time.time() - t0
            if d.main and (global_step % cfg.logging_steps == 0 or global_step == total_steps):
                row = {"step": global_step, "epoch": round(step / steps_per_epoch + 1 / steps_per_epoch, 4),
                       "loss": round(last_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6),
                       "tokens_per_s": round(real_tokens / dt, 1), "real_tokens": real_tokens, "target_tokens": n_window,
                       "time_s": round(time.time() - t_start, 2)}
                if device.type == "cuda":
                    row["torch_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
                    used = monitor.sample()
                    row["nvml_used_gib"] = None if used is None else round(used / GIB, 3)
                    row["nvml_peak_gib"] = None if monitor.peak_bytes() is None else round(monitor.peak_bytes() / GIB, 3)
                append_jsonl(out / "metrics.jsonl", row)
                if tracker is not None and cfg.report_to == "tensorboard":
                    for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                        tracker.add_scalar(f"train/{k}", row[k], global_step)
                elif tracker is not None:
                    tracker.log(row, step=global_step)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{real_tokens / dt:.0f}", lr=f"{lr:.2e}")

            if global_step % cfg.save_steps == 0 or global_step == total_steps:
                trainer_state = {"global_step": global_step, "epoch": global_step / steps_per_epoch, "total_steps": total_steps,
                                 "steps_per_epoch": steps_per_epoch, "world_size": d.world, "loss": last_loss}
                if (out / f"checkpoint-{global_step}").exists():
                    raise UserError(f"{out}/checkpoint-{global_step} already exists; refusing to overwrite it.")
                ck.save_checkpoint(out, global_step, model=model, tokenizer=tok, optimizer=optimizer, scheduler=scheduler,
                                   scaler=scaler, config_dict=cfg_dict, trainer_state=trainer_state, rank=d.rank)
                d.barrier()
                ck.save_rng(out, global_step, d.rank)
                d.barrier()
                if d.main:
                    ck.finalize_checkpoint(out, global_step)
                    for a in ck.prune_checkpoints(out, cfg.save_total_limit, cfg.keep_weights_limit):
                        log(d, a)
                d.barrier()
    finally:  # also on an exception (an OOM retry must not leave the sampler thread running)
        if pbar is not None:
            pbar.close()
        monitor.stop()

    if d.main:
        _save_final(out, model, tok, cfg_dict, {"global_step": total_steps, "epoch": total_steps / steps_per_epoch,
                                                "total_steps": total_steps, "loss": last_loss, "final": True})
        if monitor.samples:
            atomic_write_jsonl(out / "memory_samples.jsonl",
                               [{"t": t, "nvml_used_gib": round(u / GIB, 4)} for t, u in monitor.samples])
        log(d, f"done: {total_steps} steps, final loss {last_loss:.4f}, {time.time() - t_start:.1f} s; model in {out}")
    if tracker is not None:
        tracker.close() if cfg.report_to == "tensorboard" else tracker.finish()
    if d.enabled:
        d.barrier()
        dist.destroy_process_group()
    return {"global_step": total_steps, "final_loss": last_loss, "output_dir": str(out), "data_stats": stats.as_dict()}


def _setup_fast_engine(model, cfg: TrainConfig, device: torch.device, d: Dist, explicit: bool = True,
                       half_precision: bool = True) -> int:
    """Padding-free packing + per-conversation attention + compiled layers (sftbench.train.fast_model).

    Returns the token budget of one packed micro-batch.  The number of checkpointed layers is chosen from the
    memory budget (the --memory_cap_gib, else the GPU's memory).
    """
    from sftbench.train.fast_model import choose_checkpoint_layers, pick_attention, prepare_fast_model, varlen_supported

    budget = cfg.token_budget or (16384 if device.type == "cuda" else cfg.per_device_train_batch_size * cfg.model_max_length)
    if budget < cfg.model_max_length:
        raise UserError(f"--token_budget {budget} is smaller than --model_max_length {cfg.model_max_length}: "
                        f"a conversation must fit in one packed micro-batch.")
    k = 0
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 1024**3
        cap = min(cfg.memory_cap_gib or total, total, cfg.vram_target_gib or total)
        k = choose_checkpoint_layers(model, budget, int((cap - 1.3) * 0.9 * 1024**3), ce_chunk_size=cfg.loss_chunk_size or 1024)
    elif cfg.gradient_checkpointing:
        k = model.config.num_hidden_layers
    try:
        attention, why = pick_attention(device, half_precision)
        if cfg.attention != "auto":
            why_not = None
            if cfg.attention == "varlen":
                why_not = varlen_supported(device) or (None if half_precision else "flash attention needs --bf16 or --fp16")
            elif cfg.attention == "flex" and device.type != "cuda":
                why_not = "FlexAttention has no backward pass on the CPU"
            if why_not:
                raise UserError(f"--attention {cfg.attention} cannot run here ({why_not}); use --attention auto.")
            attention, why = cfg.attention, f"{cfg.attention} (--attention)"
        prepare_fast_model(model, attention=attention, checkpoint_layers=k, ce_chunk_size=cfg.loss_chunk_size or 1024,
                           max_seqlen=cfg.model_max_length, fuse_projections=cfg.fuse_projections)
    except NotImplementedError as e:
        if not explicit:
            log(d, f"engine: reference (the fast engine does not support this model: {e})")
            return 0
        raise UserError(f"--engine fast does not support this model ({e}); use --engine reference.") from None
    cfg.token_budget = budget  # the resolved value: saved in sft_config.json, halved by --oom_fallback
    log(d, f"fast engine: packed micro-batches of {budget} tokens, {k} of {model.config.num_hidden_layers} layers "
           f"checkpointed; attention: {why}")
    if device.type == "cuda":
        log(d, "fast engine: the first step compiles the layer graphs (torch.compile)"
               + ("" if attention == "varlen" else "; with FlexAttention that took over 3 minutes on a cold H100 "
                  "machine (later runs reuse the inductor cache); --engine reference skips it") + ".")
    return budget


def _fast_window(model, examples: list[dict], budget: int, pad_id: int, n_window: int, prec, scaler, d: Dist,
                 device, seed: int) -> tuple[float, int]:
    """One rank's share of an accumulation window, packed; gradients summed over ranks by one all-reduce."""
    from sftbench.train.fast_model import packed_loss_sum
    from sftbench.data.packing import batch_to_device, make_packed_batch, pack_examples

    ce_total, real = 0.0, 0
    if examples:
        for b in pack_examples(examples, budget, seed=seed):
            batch = batch_to_device(make_packed_batch([examples[i] for i in b], budget, pad_id,
                                                      max_seqlen=model._sftbench_fast.max_seqlen), device)
            real += int(batch["num_real_tokens"])
            with prec.autocast():
                s, _ = packed_loss_sum(model, batch)
            scaler.scale(s.float() / max(n_window, 1)).backward()
            ce_total += float(s.detach())
    if d.enabled:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters() if p.requires_grad]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)  # sum: each rank's loss is already divided by the whole window's target count
        for p, g in zip([p for p in model.parameters() if p.requires_grad],
                        torch._utils._unflatten_dense_tensors(flat, grads)):
            p.grad = g
    return ce_total, real


def _sync_lr_to_schedule(optimizer, scheduler) -> None:
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


def _causal_lm(model):
    """The LlamaForCausalLM-like module (inside a peft wrapper when training LoRA)."""
    if hasattr(model, "peft_config"):
        return model.base_model.model
    return model


def _load_lora_model(model_path: str, resume, cfg: TrainConfig):
    """Base weights in fp32 + LoRA adapters on q/k/v/o/gate/up/down; resumed adapters from ckpt/adapter."""
    from transformers import AutoModelForCausalLM

    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise UserError("--method lora needs the package peft: pip install 'sftbench[lora]' (or pip install peft).") from None
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if resume:
        return PeftModel.from_pretrained(base, str(Path(resume) / "adapter"), is_trainable=True)
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(base, lcfg)


def _auto_batch(cfg: TrainConfig, device: torch.device, d: Dist) -> None:
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _save_final(out: Path, model, tok, cfg_dict: dict, trainer_state: dict) -> None:
    """The final model in OUT itself (from_pretrained(OUT) works); trainer_state.json is moved in last."""
    import shutil

    from sftbench.train.checkpoint import save_model_dir

    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, model, tok, cfg_dict, trainer_state)
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "trainer_state.json"] + ["trainer_state.json"]:
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_config(argv)
    while True:
        oom = ""
        try:
            train(cfg)
            return 0
        except UserError as e:
            exit_with_user_error(e, PROG)
        except torch.cuda.OutOfMemoryError as e:
            oom = (str(e).splitlines() or ["CUDA out of memory"])[0]
            # The traceback's frames hold train()'s model, optimizer and activations: drop them, or the retry
            # (and the advice's own CUDA query) would run with the failed attempt's memory still allocated.
            import traceback

            traceback.clear_frames(e.__traceback__)
        _release_cuda_memory()
        if cfg.oom_fallback and _shrink_for_retry(cfg):
            _prepare_oom_retry(cfg, oom)
            continue
        return _report_oom(cfg, oom)


def _release_cuda_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if dist.is_initialized():
        dist.destroy_process_group()


def _shrink_for_retry(cfg: TrainConfig) -> bool:
    """Make the next attempt's micro-batch half as large; False when it cannot shrink any more.

    Reference engine: half the micro-batch, double the accumulation (same window, same data order).
    Fast engine: half the packed token budget (the window is unchanged; it is packed into more micro-batches),
    down to --model_max_length, below which a conversation would not fit a micro-batch."""
    if cfg.engine == "fast" and cfg.token_budget > 0:
        if cfg.token_budget // 2 < cfg.model_max_length:
            return False
        cfg.token_budget //= 2
        return True
    if cfg.per_device_train_batch_size <= 1:
        return False
    cfg.per_device_train_batch_size //= 2
    cfg.gradient_accumulation_steps *= 2
    return True


def _prepare_oom_retry(cfg: TrainConfig, oom: str) -> None:
    """Resume from the last checkpoint that has optimizer state, or start over with the partial log moved aside."""
    from sftbench.train.checkpoint import list_checkpoints

    out = Path(cfg.output_dir)
    have = [p for _, p in list_checkpoints(out) if (p / "training_state").is_dir()]
    if have:
        cfg.resume_from_checkpoint = "latest"
    elif out.is_dir():  # nothing to resume: move the partial log aside and start over
        for name in ("metrics.jsonl", "sft_config.json"):
            if (out / name).exists():
                os.replace(out / name, out / f"{name}.oom-{int(time.time())}")
    what = (f"packed micro-batches of {cfg.token_budget} tokens" if cfg.engine == "fast" else
            f"micro-batch {cfg.per_device_train_batch_size} x accumulation {cfg.gradient_accumulation_steps}")
    print(f"[train] out of memory ({oom[:120]}); --oom_fallback: retrying with {what}"
          + (" from the last checkpoint" if have else " from the start"), flush=True)


def _report_oom(cfg: TrainConfig, oom: str) -> int:
    """The planner's advice instead of a raw CUDA traceback; exit status 3."""
    msg = f"CUDA out of memory: {oom}"
    if cfg.engine == "fast" and cfg.token_budget > 0:
        half = cfg.token_budget // 2
        msg += (f"\nThe fast engine packed {cfg.token_budget}-token micro-batches and checkpointed the layers its memory "
                f"model chose for --vram_target_gib {cfg.vram_target_gib:g}"
                + (f" under --memory_cap_gib {cfg.memory_cap_gib:g}" if cfg.memory_cap_gib else "") + ". Try, in this order: "
                + (f"--token_budget {half} (same optimizer steps, more micro-batches); " if half >= cfg.model_max_length else "")
                + f"a lower --vram_target_gib (checkpoints more layers); --oom_fallback True (halves the token budget "
                  f"and retries by itself); --engine reference with the planner's advice (python -m sftbench.plan). "
                  f"Resume from the last checkpoint with --resume_from_checkpoint latest.")
    else:
        try:
            from sftbench.plan import oom_advice_for_config

            msg += "\n" + oom_advice_for_config(cfg)
        except Exception:
            msg += ("\nTry: halve --per_device_train_batch_size and double --gradient_accumulation_steps (same effective "
                    "batch), --gradient_checkpointing True, a shorter --model_max_length, or scripts/sft_min_vram.sh. "
                    "Resume from the last checkpoint with --resume_from_checkpoint latest.")
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
