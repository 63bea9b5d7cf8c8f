"""The two training engines behind one small interface.

    engine = make_engine(model, cfg, device, d, prec, scaler, explicit=...)     # prepare (once, after .to(device))
    ce_sum, real_tokens = engine.window(micro_batches, n_window, seed)         # one accumulation window

`window` runs this rank's share of one optimizer step's conversations (`micro_batches`: lists of examples
from sftbench.data.build.build_examples) forward and backward.  Every micro-batch's CE *sum* is divided by
`n_window`, the target tokens of the whole window over all ranks (sftbench.loss), so the gradient does not
depend on the micro-batch / accumulation / GPU split; when it returns, the gradients are summed over ranks.
It returns (this rank's CE sum as a 0-dim float64 tensor, this rank's real input tokens).  The caller
unscales, clips and steps the optimizer.

- ReferenceEngine: padded micro-batches through the HF model (CausalLMLossSum), DDP across ranks.
- FastEngine: the window packed into --token_budget-token rows (sftbench.data.packing), attention kept per
  conversation, compiled layers, fused CE (sftbench.engine.fast_model); one all-reduce of the gradients,
  since ranks may pack different numbers of rows.
scripts/bench_train.py times these same `window` calls.
"""

from __future__ import annotations

import contextlib

import torch

from sftbench.core.errors import UserError
from sftbench.loss import CausalLMLossSum
from sftbench.engine import fast_model as fm
from sftbench.engine import memory_budget as mb
from sftbench.train.dist import Dist, log


class Engine:
    name = "engine"
    path = None  # sftbench.core.capabilities.TrainPath, set by make_engine

    def __init__(self, model, device: torch.device, d: Dist, prec, scaler):
        self.model, self.device, self.d, self.prec, self.scaler = model, device, d, prec, scaler

    def window(self, micro_batches: list[list[dict]], n_window: int, seed: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class ReferenceEngine(Engine):
    name = "reference"

    def __init__(self, model, device, d, prec, scaler, *, loss_chunk_size: int, pad_id: int):
        super().__init__(model, device, d, prec, scaler)
        self.pad_id = pad_id
        self.loss_mod: torch.nn.Module = CausalLMLossSum(causal_lm(model), loss_chunk_size)
        if d.enabled:
            self.loss_mod = torch.nn.parallel.DistributedDataParallel(
                self.loss_mod, device_ids=[device.index] if device.type == "cuda" else None)

    def window(self, micro_batches, n_window, seed):
        from sftbench.data.collate import collate

        total = torch.zeros((), dtype=torch.float64, device=self.device)
        real = 0
        for j, exs in enumerate(micro_batches):
            cpu = collate(exs, self.pad_id)
            real += int(cpu["attention_mask"].sum())  # counted on the CPU: no device sync
            batch = {k: v.to(self.device) for k, v in cpu.items()}
            last = j == len(micro_batches) - 1
            sync = self.loss_mod.no_sync() if (self.d.enabled and not last) else contextlib.nullcontext()
            with sync:
                with self.prec.autocast():
                    ce_sum, _ = self.loss_mod(batch["input_ids"], batch["attention_mask"], batch["labels"])
                # DDP averages gradients over ranks; multiply by world so the result is sum / n_window.
                self.scaler.scale(ce_sum.float() * (self.d.world / max(n_window, 1))).backward()
            total += ce_sum.detach().double()
        return total, real


class FastEngine(Engine):
    name = "fast"

    def __init__(self, model, device, d, prec, scaler, *, token_budget: int, pad_id: int, cuda_graphs: bool = False):
        super().__init__(model, device, d, prec, scaler)
        self.token_budget, self.pad_id = token_budget, pad_id
        self.rows_packed = 0  # packed micro-batches run so far (the bench reports rows per step)
        self.graphs = None
        if cuda_graphs and device.type == "cuda" and model._sftbench_fast.attention == "varlen" and model._sftbench_fast.compile:
            from sftbench.engine.row_graph import RowGraphs

            self.graphs = RowGraphs(model, device, self._row_step, log=lambda m: log(d, m))

    def _row_step(self, batch: dict) -> torch.Tensor:
        """One row forward and backward (what a CUDA graph captures): the CE sum / the window's target count."""
        with self.prec.autocast():
            s, _ = fm.packed_loss_sum(self.model, batch)  # looked up per call: tests patch it
        self.scaler.scale(s.float() / batch["_n_window"]).backward()
        return s.detach()

    def window(self, micro_batches, n_window, seed):
        try:
            return self._window(micro_batches, n_window, seed)
        except Exception as e:
            why = triton_failure(e)
            st = self.model._sftbench_fast
            if why is None or not st.compile:
                raise
        # Triton passed the probe but failed when the first row compiled (TritonMissing, a broken install): the
        # window is re-run from zero gradients with eager layers, never a traceback.
        log(self.d, f"fast engine: torch.compile failed ({why}); running the layers eagerly from now on")
        st.compile, self.graphs = False, None
        st.layer_fns.clear()
        if self.path is not None:
            self.path.compile, self.path.cuda_graphs = False, False
            self.path.why["compile"] = self.path.why["cuda_graphs"] = f"compile failed: {why}"
            log(self.d, self.path.line())
        self.model.zero_grad(set_to_none=True)
        return self._window(micro_batches, n_window, seed)

    def _window(self, micro_batches, n_window, seed):
        from sftbench.data.packing import batch_to_device, make_packed_batch, pack_examples

        examples = [ex for m in micro_batches for ex in m]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        real = 0
        max_seqlen = self.model._sftbench_fast.max_seqlen
        graphs = self.graphs if self.graphs is not None and self.graphs.disabled is None else None
        if graphs is not None:
            graphs.begin_window()
        for b in (pack_examples(examples, self.token_budget, seed=seed) if examples else []):
            cpu = make_packed_batch([examples[i] for i in b], self.token_budget, self.pad_id, max_seqlen=max_seqlen)
            real += int(cpu["num_real_tokens"])
            self.rows_packed += 1
            if graphs is not None and graphs.disabled is None:
                s = graphs.run(cpu, n_window)
            else:
                batch = batch_to_device(cpu, self.device)
                batch["_n_window"] = max(n_window, 1)
                s = self._row_step(batch)
            total += s.double()
        self.d.all_reduce_grads(self.model)  # sum: each rank's loss is already divided by the whole window's count
        return total, real


def triton_failure(e: BaseException) -> str | None:
    """A short reason when `e` (or what caused it) is torch.compile failing for want of a working Triton."""
    seen = 0
    while e is not None and seen < 8:
        name = type(e).__name__
        if name == "TritonMissing" or (name in ("BackendCompilerFailed", "InductorError") and "triton" in str(e).lower()):
            return f"{name}: Triton missing or unusable on this GPU"
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def causal_lm(model):
    """The LlamaForCausalLM-like module (inside a peft wrapper when training LoRA)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


def make_engine(model, cfg, device, d: Dist, prec, scaler, *, pad_id: int, explicit: bool,
                checkpoint_layers: int | None = None) -> Engine:
    """The engine cfg.engine names ('auto' already resolved); the fast one falls back to the reference engine
    when it does not support the model and was not asked for explicitly.  Resolves cfg.token_budget.
    checkpoint_layers: the fast engine's recomputed layers (default: the memory model's choice; a benchmark's
    fixed plan).
    The engine's `path` (sftbench.core.capabilities.TrainPath) says how it runs; its line is logged once."""
    from sftbench.core.capabilities import probe

    caps = probe(device)
    engine: Engine | None = None
    if cfg.engine == "fast":
        path = train_path(caps, cfg, prec, "fast")
        budget = prepare_fast(model, cfg, device, d, explicit=explicit, path=path, checkpoint_layers=checkpoint_layers)
        if budget:
            engine = FastEngine(model, device, d, prec, scaler, token_budget=budget, pad_id=pad_id,
                                cuda_graphs=path.cuda_graphs)
        else:
            cfg.engine = "reference"
    if engine is None:
        path = train_path(caps, cfg, prec, "reference")
        engine = ReferenceEngine(model, device, d, prec, scaler, loss_chunk_size=cfg.loss_chunk_size, pad_id=pad_id)
    engine.path = path
    log(d, path.line())
    return engine


def train_path(caps, cfg, prec, engine: str):
    """The training path from the probed capabilities and the flags (UserError for a forced choice that cannot run)."""
    from sftbench.core.capabilities import decide_train_path
    from sftbench.core.device import requested_precision

    return decide_train_path(caps, engine=engine, precision=prec.name, grad_scaler=prec.use_grad_scaler,
                             asked_precision=requested_precision(cfg.precision, cfg.bf16, cfg.fp16),
                             compile=cfg.compile, attention=cfg.attention, cuda_graphs=cfg.cuda_graphs)


def prepare_fast(model, cfg, device, d: Dist, *, path, explicit: bool = True, checkpoint_layers: int | None = None) -> int:
    """Padding-free packing + per-conversation attention + (where Triton runs) compiled layers; returns the token
    budget (0 = unsupported).  `path`: the chosen TrainPath (attention, compile).

    The number of checkpointed layers is chosen from the memory budget (the --memory_cap_gib, else the GPU's memory).
    """
    budget = cfg.token_budget or mb.default_token_budget(device.type == "cuda", cfg.per_device_train_batch_size,
                                                         cfg.model_max_length)
    if budget < cfg.model_max_length:
        raise UserError(f"--token_budget {budget} is smaller than --model_max_length {cfg.model_max_length}: "
                        f"a conversation must fit in one packed micro-batch.")
    k = 0
    if checkpoint_layers is not None:
        k = checkpoint_layers
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 1024**3
        k = mb.choose_checkpoint_layers(model, budget, mb.torch_budget_bytes(total, cfg.vram_target_gib, cfg.memory_cap_gib),
                                        ce_chunk_size=cfg.loss_chunk_size or 1024)
    elif cfg.gradient_checkpointing:
        k = model.config.num_hidden_layers
    try:
        fm.prepare_fast_model(model, attention=path.attention, compile=path.compile, checkpoint_layers=k,
                              ce_chunk_size=cfg.loss_chunk_size or 1024, max_seqlen=cfg.model_max_length,
                              fuse_projections=cfg.fuse_projections)
    except NotImplementedError as e:
        if not explicit:
            log(d, f"engine: reference (the fast engine does not support this model: {e})")
            return 0
        raise UserError(f"--engine fast does not support this model ({e}); use --engine reference.") from None
    cfg.token_budget = budget  # the resolved value: saved in sft_config.json, halved by --oom_fallback
    log(d, f"fast engine: packed micro-batches of {budget} tokens, {k} of {model.config.num_hidden_layers} layers "
           f"checkpointed")
    if path.compile and device.type == "cuda":
        log(d, "fast engine: the first step compiles the layer graphs (torch.compile)"
               + ("" if path.attention != "flex" else "; with FlexAttention that took over 3 minutes on a cold H100 "
                  "machine (later runs reuse the inductor cache); --attention auto skips it") + ".")
    return budget
