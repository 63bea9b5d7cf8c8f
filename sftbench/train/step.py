"""One optimizer step as train() takes it, in the pieces that the benchmarks call too, so that what
scripts/bench_train.py and scripts/bench_plan.py measure is the trainer, not a copy of it.

    model = prepare_model(model, cfg, device)                  # use_cache off, HF checkpointing, .to(device).train()
    prec, scaler = precision_and_scaler(cfg, device)           # autocast dtype (sftbench.core.device) + GradScaler
    engine = make_engine(model, cfg, device, Dist(), prec, scaler, pad_id=..., explicit=True)  # sftbench.train.engines
    optimizer, scheduler = optimizer_and_schedule(model, cfg, device, total_steps)
    result = train_step(engine, optimizer, scheduler, micro_batches, n_window, seed, cfg.max_grad_norm)

`n_window` is the window's target count (`target_count` summed over its conversations, over all ranks): every
micro-batch's CE sum is divided by it, so the gradient does not depend on the micro-batch / accumulation / GPU
split.  sftbench/train/setup.py and loop.py build and step the run with these same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftbench.loss import IGNORE_INDEX


def target_count(example: dict) -> int:
    """Tokens that carry loss in one example (labels shifted by one: position t predicts token t + 1)."""
    return sum(1 for x in example["labels"][1:] if x != IGNORE_INDEX)


def prepare_model(model, cfg, device: torch.device):
    """The trainer's model set-up after loading fp32 weights: no KV cache, HF gradient checkpointing
    (non-reentrant) when --gradient_checkpointing, on the device in train mode.  Returns the model."""
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        # transformers renamed it (the old name warns of its removal in v6); older releases have only the old one
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method == "lora":
            model.enable_input_require_grads()
    return model.to(device).train()


def add_lora(base, cfg):
    """--method lora: LoRA adapters (rank --lora_rank, alpha 2 x rank) on q/k/v/o/gate/up/down over `base`."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(base, lcfg)


def precision_and_scaler(cfg, device: torch.device):
    """(Precision, GradScaler) from --precision/--bf16/--fp16 (sftbench.core.device.pick_precision, the one place
    that decides): the scaler is enabled only for fp16."""
    from sftbench.core.device import pick_precision

    prec = pick_precision(device, cfg.bf16, cfg.fp16, cfg.precision)
    return prec, torch.amp.GradScaler(device.type, enabled=prec.use_grad_scaler)


def build_optimizer(model, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; decoupled weight decay except on norms and biases; fused on CUDA."""
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


def optimizer_and_schedule(model, cfg, device: torch.device, total_steps: int):
    """(AdamW, LR schedule): --lr_scheduler_type over total_steps after --warmup_steps/--warmup_ratio of warm-up."""
    from transformers import get_scheduler

    optimizer = build_optimizer(model, cfg, device)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_training_steps=total_steps,
                              num_warmup_steps=cfg.effective_warmup_steps(total_steps))
    return optimizer, scheduler


def optimizer_step(model, optimizer, scheduler, scaler, max_grad_norm: float) -> tuple[float, float]:
    """Unscale, clip, step, advance the schedule; returns (grad_norm before clipping, the lr this step used)."""
    scaler.unscale_(optimizer)
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


@dataclass
class StepResult:
    ce_sum: torch.Tensor  # this rank's CE sum over the window (0-dim float64); loss = ce_sum / n_window
    real_tokens: int  # this rank's real (non-padding) input tokens
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used


def train_step(engine, optimizer, scheduler, micro_batches: list[list[dict]], n_window: int, seed: int,
               max_grad_norm: float) -> StepResult:
    """One optimizer step: the engine's forward/backward over this rank's micro-batches (each CE sum divided by
    n_window), then `optimizer_step`.  seed: the fast engine's packing order for this step."""
    ce_sum, real = engine.window(micro_batches, n_window, seed=seed)
    grad_norm, lr = optimizer_step(engine.model, optimizer, scheduler, engine.scaler, max_grad_norm)
    return StepResult(ce_sum, real, grad_norm, lr)
