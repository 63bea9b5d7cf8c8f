"""Fast greedy generation for IFEval: static KV cache sized to a memory budget, continuous batching,
one CUDA graph per decode window, weights swappable between checkpoints without recompiling.

How a `generate()` call runs
1. Prompts are sorted longest first (so a prefill group wastes little padding) and prefilled eagerly,
   a group of up to `prefill_tokens` padded tokens at a time, into a staging KV buffer; each prompt's
   first greedy token comes out of its prefill.
2. A fixed set of `slots` (decode batch rows) each own `slot_len = longest prompt + max_new_tokens`
   cache positions.  A free slot takes the next staged prompt: its K/V are copied into the slot (two
   copies, microseconds) and its state (token, position, count) is set on the device.
3. The decode step (embed -> 30 x [RMSNorm, fused QKV, RoPE, attention over the filled prefix only,
   o_proj, RMSNorm, fused gate/up, SiLU, down] -> norm -> head -> argmax -> bookkeeping) runs with all
   state on the device; `sync_every` steps are captured in one CUDA graph and replayed.  Finished rows
   (stop token or cap) stop changing; after each window the host reads the done flags once, collects
   finished rows and refills their slots (continuous batching).
4. `load_weights(model)` copies a new checkpoint into the same weight buffers: the captured graph and
   compiled kernels are reused, so checkpoints after the first skip all set-up.

Sampling (`generate(..., n=, temperature=, top_p=, top_k=, seed=)`): every prompt is prefilled once and decoded as
`n` requests, each with its own 32-bit seed (sftbench.engine.sampling.row_seed of the run seed, the prompt's key
and the sample number).  The decode step then takes the logits instead of their argmax and draws with
sftbench.engine.sampling.sample_tokens (counter-based noise: no RNG state, so it is captured in the same
kind of CUDA graph, one graph per (mode, top_k)).  temperature 0 never enters this branch: greedy is unchanged.

Output contract (matches the hf backend's accounting): for each prompt, in input order,
`{"token_ids": generated ids INCLUDING the stop token when one was produced and nothing after it,
"hit_cap": True when max_new_tokens were generated without a stop token, "generated_tokens": len(token_ids)}`.
"""

from __future__ import annotations

import os
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sftbench.engine.fast_attention import HAVE_TRITON, decode_attention_torch, decode_attention_triton, pick_num_splits
from sftbench.engine.fast_llama import DecodeWeights, LlamaShape, make_layer_fns, prefill, rms_norm, rope_tables
from sftbench.model.hf import finish
from sftbench.engine.sampling import checked_top_k, row_seed, sample_tokens
from sftbench.core.errors import UserError

GIB = 1024**3
MIB = 1024**2
SAMPLE_SCRATCH_BYTES = 48  # per slot and vocabulary entry, while sampling (plan_batch)


# ----------------------------------------------------------------------------------------- sizing

def kv_bytes_per_token(shape: LlamaShape, dtype_bytes: int) -> int:
    """K and V for one token over all layers: 2 * layers * kv_heads * head_dim * dtype_bytes
    (SmolLM2-135M in bf16: 2 * 30 * 3 * 64 * 2 = 23,040 B = 22.5 KiB)."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes


@dataclass(frozen=True)
class BatchPlan:
    """How many decode slots fit, and what each part of the budget holds (bytes)."""

    slots: int
    slot_len: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    weight_bytes: int
    stage_tokens: int
    stage_bytes: int
    per_slot_bytes: int
    reserve_bytes: int
    budget_bytes: int
    limited_by: str  # "memory", "max_batch" or "prompts"

    def describe(self) -> str:
        return (f"{self.slots} slots x {self.slot_len} positions (limited by {self.limited_by}); KV cache "
                f"{self.kv_cache_bytes / GIB:.2f} GiB at {self.kv_bytes_per_token / 1024:.1f} KiB/token, weights "
                f"{self.weight_bytes / GIB:.2f} GiB, prefill staging {self.stage_bytes / GIB:.2f} GiB, reserve "
                f"{self.reserve_bytes / GIB:.2f} GiB, of a {self.budget_bytes / GIB:.2f} GiB budget")


def plan_batch(shape: LlamaShape, *, budget_bytes: int, dtype_bytes: int, max_prompt_len: int, max_new_tokens: int,
               num_prompts: int, max_batch: int | None = None, prefill_tokens: int = 8192,
               reserve_bytes: int = 256 * MIB, sampling: bool = False) -> BatchPlan:
    """Size the static KV cache to a memory budget (pure function; no device needed).

    The budget covers everything the generator allocates: weights, the staging buffer of one prefill
    group (its K/V plus activations), per-slot decode buffers (KV cache of `slot_len` tokens, logits row,
    output row, attention partials) and a fixed reserve for the allocator's slack and CUDA-graph pool.
    Slots are rounded down to a multiple of 8 when at least 16 fit (tensor-core friendly GEMMs).
    sampling: also hold the sampler's per-slot scratch (float32 logits, noise, the nucleus sort: ~48 B a vocabulary
    entry).  Raises UserError when not even one slot fits.
    """
    if max_prompt_len < 1 or max_new_tokens < 1 or num_prompts < 1:
        raise ValueError("plan_batch needs max_prompt_len, max_new_tokens and num_prompts >= 1")
    kvb = kv_bytes_per_token(shape, dtype_bytes)
    slot_len = max_prompt_len + max_new_tokens
    weight_bytes = shape.weight_numel() * dtype_bytes
    stage_tokens = max(prefill_tokens, max_prompt_len)
    act_per_token = dtype_bytes * (6 * shape.hidden_size + 3 * shape.qkv_dim + 4 * shape.intermediate_size) \
        + 8 * shape.hidden_size  # + the fp32 copy inside RMSNorm
    stage_bytes = stage_tokens * (kvb + act_per_token)
    per_slot_extra = (2 * shape.vocab_size * dtype_bytes  # logits row (+ argmax scratch)
                      + 2 * 8 * max_new_tokens  # int64 output row, gathered copy
                      + 2 * 32 * shape.num_heads * shape.head_dim * 4  # split-K partials (fp32), up to 32 splits
                      + 8 * shape.intermediate_size * dtype_bytes  # decode activations
                      + (SAMPLE_SCRATCH_BYTES * shape.vocab_size if sampling else 0))
    per_slot = slot_len * kvb + per_slot_extra
    free = budget_bytes - weight_bytes - stage_bytes - reserve_bytes
    fit = free // per_slot if free > 0 else 0
    if fit < 1:
        need = weight_bytes + stage_bytes + reserve_bytes + per_slot
        raise UserError(
            f"fast generation: a memory budget of {budget_bytes / GIB:.2f} GiB cannot hold even one sequence of "
            f"{slot_len} tokens ({max_prompt_len} prompt + {max_new_tokens} new; needs about {need / GIB:.2f} GiB "
            f"with weights and prefill staging). Raise the memory cap, lower --max_new_tokens, or use --backend hf.")
    slots, limited_by = int(fit), "memory"
    if max_batch is not None and max_batch < slots:
        slots, limited_by = int(max_batch), "max_batch"
    if num_prompts < slots:
        slots, limited_by = int(num_prompts), "prompts"
    if limited_by != "prompts" and slots >= 16:
        slots -= slots % 8
    return BatchPlan(slots=slots, slot_len=slot_len, kv_bytes_per_token=kvb, kv_cache_bytes=slots * slot_len * kvb,
                     weight_bytes=weight_bytes, stage_tokens=stage_tokens, stage_bytes=stage_bytes,
                     per_slot_bytes=per_slot, reserve_bytes=reserve_bytes, budget_bytes=int(budget_bytes),
                     limited_by=limited_by)


def available_memory_bytes(device) -> int:
    """Bytes this process may still allocate on `device`: under its torch cap
    (set_per_process_memory_fraction, e.g. sftbench.core.memory.apply_memory_cap) and under what is free."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return 4 * GIB  # CPU: a nominal budget (tests and smoke runs)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(idx).total_memory
    frac = 1.0
    if hasattr(torch.cuda, "get_per_process_memory_fraction"):
        try:
            frac = float(torch.cuda.get_per_process_memory_fraction(idx))
        except Exception:
            frac = 1.0
    allocated = torch.cuda.memory_allocated(idx)
    cached_free = torch.cuda.memory_reserved(idx) - allocated
    free_dev, _ = torch.cuda.mem_get_info(idx)
    return int(max(0, min(frac * total - allocated, free_dev + cached_free)))


# ----------------------------------------------------------------------------------------- generator

_KEYED_SAMPLERS: dict = {}


def keyed_sampler(use_top_p: bool, top_k: int):
    """sample_tokens with (use_top_p, top_k) bound: f(logits, temperature, top_p, seeds, step).  Each key gets a
    function with its own code object, because torch.compile keeps its compiled graphs (and its recompile limit)
    per code object: one key's graphs never serve, nor crowd out, another's.  Shared by all generators, so a new
    generator reuses what an earlier one compiled."""
    key = (bool(use_top_p), int(top_k))
    fn = _KEYED_SAMPLERS.get(key)
    if fn is None:
        def sampler(logits, temperature, top_p, seeds, step):
            return sample_tokens(logits, temperature, top_p, seeds, step, key[0], key[1])

        code = sampler.__code__.replace(co_name=f"sample_tokens_{'top_p' if key[0] else 'all'}_k{key[1]}")
        fn = _KEYED_SAMPLERS[key] = types.FunctionType(code, sampler.__globals__, code.co_name, None,
                                                       sampler.__closure__)
    return fn


def _compile_works(device) -> bool:
    from sftbench.core.capabilities import compile_works

    return compile_works(device)


class FastGenerator:
    """Greedy batched generation with our own Llama forward (see the module docstring).

    model: an HF LlamaForCausalLM on any device/dtype (its weights are copied; it is not kept).
    tokenizer: kept for callers' convenience (decoding is the caller's job).
    max_new_tokens: the cap per response.  stop_token_ids: generation ends after any of these.
    device, dtype: where and in what precision to generate (bf16 on a GPU; fp32 for CPU tests).
    memory_budget_gib: GiB the generator may allocate in total (weights + KV cache + staging + workspace);
      None: what the process may still allocate (under its torch cap) minus 8%.
    max_batch: upper bound on decode slots.  compile: torch.compile the per-layer functions (None: on CUDA).
    prefill_tokens: padded tokens per prefill group.  sync_every: decode steps per graph replay / host check.
    attention: "auto" (Triton on CUDA, SDPA with a length mask elsewhere), "triton" or "torch".
    """

    def __init__(self, model, tokenizer, *, max_new_tokens: int, stop_token_ids: list[int], device,
                 dtype=torch.bfloat16, memory_budget_gib: float | None = None, max_batch: int | None = None,
                 compile: bool | None = None, prefill_tokens: int = 8192, sync_every: int = 8,
                 attention: str = "auto", cuda_graph: bool | None = None):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.memory_budget_gib = memory_budget_gib
        self.max_batch = max_batch
        self.prefill_tokens = int(prefill_tokens)
        self.sync_every = max(1, int(sync_every))
        is_cuda = self.device.type == "cuda"
        self.use_graph = is_cuda if cuda_graph is None else (bool(cuda_graph) and is_cuda)
        # where Triton runs for this GPU (sftbench.core.capabilities: importable, sm70+, not switched off)
        triton_ok = is_cuda and HAVE_TRITON and _compile_works(self.device)
        self.compile = triton_ok if compile is None else bool(compile)
        self.shape = LlamaShape.from_model(model)
        s = self.shape
        if attention == "auto":
            attention = "triton" if (triton_ok and dtype in (torch.bfloat16, torch.float16)
                                     and s.head_dim >= 16 and s.head_dim & (s.head_dim - 1) == 0) else "torch"
        if attention not in ("triton", "torch"):
            raise ValueError(f"attention must be auto, triton or torch, got {attention!r}")
        if attention == "triton" and not is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("attention='triton' needs a CUDA device (or TRITON_INTERPRET=1, for tests)")
        self.attention = attention
        self._rope = _RopeSource(model)
        self._config_sig = config_signature(model.config.to_dict())
        self.weights = DecodeWeights(s, self.device, dtype)
        self.weights.load_from(model)
        self._eager_fns = make_layer_fns(s)
        self._fns = self._eager_fns
        self._compiled = False
        eps = s.rms_norm_eps
        self._eager_logits = lambda x, norm_w, lm_head: torch.nn.functional.linear(rms_norm(x, norm_w, eps), lm_head)
        self._sample_head = self._eager_logits  # the sampling step's logits head, compiled with the rest
        self._samplers: dict | None = None  # None: the eager sampler; else (mode, top_k) -> its compiled sampler
        self.plan: BatchPlan | None = None
        self._graph = None
        self._sample_graphs: dict = {}  # (mode, top_k) -> the sampling decode window's graph
        self._stage_seeds = None  # the current call's seed per request (sampling)
        self._plan_sampling = False  # the current plan holds the sampler's scratch
        self._mode = "greedy"  # "greedy", "sample" (every top_p 1, no top_k) or "sample_top_p": what _decode_step runs
        self._top_k = 0  # the sampler's top_k (0: no limit) in mode "sample_top_p"; static per graph
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ weights

    def load_weights(self, model) -> None:
        """Copy a new checkpoint of the same architecture into the existing buffers (graphs stay valid)."""
        self.weights.load_from(model)
        src = _RopeSource(model)
        if src.key != self._rope.key:
            raise ValueError("load_weights: the new checkpoint's rotary settings differ; build a new FastGenerator.")

    def load_weights_from_dir(self, model_dir) -> None:
        """Read a checkpoint's safetensors straight into the weight buffers (no HF model is built; on the
        GPU the tensors load onto the device).  ValueError when its config.json differs from the built
        model's in architecture or rotary settings, or its tensors do not match (then build a model)."""
        from safetensors import safe_open
        from transformers import AutoConfig

        model_dir = Path(model_dir)
        sig = config_signature(AutoConfig.from_pretrained(model_dir).to_dict())
        if sig != self._config_sig:
            diff = sorted(k for k in set(sig) | set(self._config_sig) if sig.get(k) != self._config_sig.get(k))
            raise ValueError(f"{model_dir}: config differs from the generator's ({', '.join(diff)})")
        files = safetensors_files(model_dir)
        w, s = self.weights, self.shape
        hd = s.head_dim
        targets = {"model.embed_tokens.weight": [(w.embed, 0)], "model.norm.weight": [(w.final_norm, 0)]}
        if not s.tie_word_embeddings:
            targets["lm_head.weight"] = [(w.lm_head, 0)]
        for i in range(s.num_layers):
            p = f"model.layers.{i}."
            targets.update({
                p + "input_layernorm.weight": [(w.ln1[i], 0)], p + "post_attention_layernorm.weight": [(w.ln2[i], 0)],
                p + "self_attn.q_proj.weight": [(w.wqkv[i], 0)],
                p + "self_attn.k_proj.weight": [(w.wqkv[i], s.num_heads * hd)],
                p + "self_attn.v_proj.weight": [(w.wqkv[i], (s.num_heads + s.num_kv_heads) * hd)],
                p + "self_attn.o_proj.weight": [(w.wo[i], 0)], p + "mlp.gate_proj.weight": [(w.wgu[i], 0)],
                p + "mlp.up_proj.weight": [(w.wgu[i], s.intermediate_size)], p + "mlp.down_proj.weight": [(w.wd[i], 0)],
            })
        dev = str(self.device) if self.device.type == "cuda" else "cpu"
        seen = set()
        with torch.no_grad():
            for f in files:
                with safe_open(str(f), framework="pt", device=dev) as st:
                    for name in st.keys():
                        if name not in targets:
                            if name == "lm_head.weight" or name.endswith("rotary_emb.inv_freq"):
                                continue  # tied head / a buffer
                            raise ValueError(f"{f}: unexpected tensor {name}")
                        t = st.get_tensor(name)
                        for buf, row in targets[name]:
                            dst = buf[row: row + t.shape[0]] if buf.dim() == 2 else buf
                            if dst.shape != t.shape:
                                raise ValueError(f"{f}: {name} has shape {tuple(t.shape)}, expected {tuple(dst.shape)}")
                            dst.copy_(t)
                        seen.add(name)
        missing = sorted(set(targets) - seen)
        if missing:
            raise ValueError(f"{model_dir}: {len(missing)} tensor(s) missing from the safetensors, e.g. {missing[0]}")

    # ------------------------------------------------------------------ buffers

    def _allocate(self, plan: BatchPlan) -> None:
        s, dev, dt = self.shape, self.device, self.dtype
        self._graph = None
        self.plan = plan
        B, L = plan.slots, plan.slot_len
        kv = (s.num_layers, B, L, s.num_kv_heads, s.head_dim)
        self.k_cache = torch.zeros(kv, device=dev, dtype=dt)
        self.v_cache = torch.zeros(kv, device=dev, dtype=dt)
        st = (s.num_layers, plan.stage_tokens, s.num_kv_heads, s.head_dim)
        self.stage_k = torch.empty(st, device=dev, dtype=dt)
        self.stage_v = torch.empty(st, device=dev, dtype=dt)
        self.cos_tab, self.sin_tab = rope_tables(self._rope.rotary, L, dev, dt)
        self.tokens = torch.zeros(B, device=dev, dtype=torch.long)
        self.pos = torch.zeros(B, device=dev, dtype=torch.long)
        self.n_gen = torch.zeros(B, device=dev, dtype=torch.long)
        self.done = torch.ones(B, device=dev, dtype=torch.bool)
        self.out = torch.zeros(B, self.max_new_tokens, device=dev, dtype=torch.long)
        self.stop_ids = torch.tensor(self.stop_token_ids, device=dev, dtype=torch.long)
        self.temperature = torch.zeros(B, device=dev, dtype=torch.float32)  # sampling state (unused by greedy)
        self.top_p = torch.ones(B, device=dev, dtype=torch.float32)
        self.row_seed = torch.zeros(B, device=dev, dtype=torch.long)
        if self.attention == "triton":
            sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 8
            self.num_splits = pick_num_splits(B, s.num_kv_heads, L, num_sms=sms)
        else:
            self.num_splits = 1

    def _release(self) -> None:
        self._graph = None
        self._sample_graphs = {}
        for name in ("k_cache", "v_cache", "stage_k", "stage_v", "out"):
            if hasattr(self, name):
                delattr(self, name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def release_buffers(self) -> None:
        """Give back the KV cache, staging buffers and graph (weights and compiled kernels stay): the next
        generate() plans and allocates them again.  A search calls this before it trains in the same process."""
        self._release()
        self.plan = None

    def _budget_bytes(self) -> int:
        if self.memory_budget_gib is not None:
            return int(self.memory_budget_gib * GIB)
        # Weights are already allocated: give them back to the budget plan_batch subtracts them from.
        return int(available_memory_bytes(self.device) * 0.92) + self.weights.nbytes()

    # ------------------------------------------------------------------ the decode step

    def _attend(self, i, q, k, v):
        if self.attention == "triton":
            return decode_attention_triton(q, k, v, self.k_cache[i], self.v_cache[i], self.pos, self.num_splits)
        kv_len = None if self.use_graph else int(self.pos.max()) + 1  # eager: only the filled part
        return decode_attention_torch(q, k, v, self.k_cache[i], self.v_cache[i], self.pos, kv_len)

    def _decode_step(self) -> None:
        """One token for every slot; all state stays on the device (graph-capturable)."""
        W, (pre, post, head) = self.weights, self._fns
        x = torch.nn.functional.embedding(self.tokens, W.embed)
        cos, sin = self.cos_tab[self.pos], self.sin_tab[self.pos]
        for i in range(self.shape.num_layers):
            q, k, v = pre(x, W.ln1[i], W.wqkv[i], cos, sin)
            o = self._attend(i, q, k, v)
            x = post(x, o, W.wo[i], W.ln2[i], W.wgu[i], W.wd[i])
        if self._mode == "greedy":
            nxt = head(x, W.final_norm, W.lm_head)
        else:
            nxt = self._sampler()(self._sample_head(x, W.final_norm, W.lm_head), self.temperature, self.top_p,
                                  self.row_seed, self.n_gen)
        active = ~self.done
        idx = self.n_gen.clamp(max=self.max_new_tokens - 1)[:, None]
        kept = self.out.gather(1, idx)[:, 0]
        self.out.scatter_(1, idx, torch.where(active, nxt, kept)[:, None])
        self.n_gen += active.long()
        is_stop = (nxt[:, None] == self.stop_ids[None, :]).any(-1)
        self.done |= active & (is_stop | (self.n_gen >= self.max_new_tokens))
        self.tokens.copy_(torch.where(active, nxt, self.tokens))
        self.pos += active.long()

    def _warm_and_capture(self) -> None:
        """Compile (optionally), warm up on inert state, and capture `sync_every` steps in one CUDA graph."""
        t0 = time.perf_counter()
        self.done.fill_(True)
        self.pos.zero_()
        if self.compile and not self._compiled:
            pre, post, head = self._eager_fns
            self._fns = tuple(torch.compile(f, dynamic=False, fullgraph=True) for f in (pre, post, head))
            self._sample_head = torch.compile(self._eager_logits, dynamic=False, fullgraph=True)
            self._samplers = {}
            self._compiled = True
        if not self.use_graph:
            self.last_capture_s = time.perf_counter() - t0
            return
        while True:
            try:
                graph = self._capture()
                if self._mode == "greedy":
                    self._graph = graph
                else:
                    self._sample_graphs[self._graph_key()] = graph
                break
            except Exception as e:  # a compile or kernel problem must not cost the user the run
                if self._mode != "greedy" and self._samplers is not None:
                    what, self._sample_head, self._samplers = "with the sampler uncompiled", self._eager_logits, None
                elif self._fns is not self._eager_fns:
                    what, self._fns, self.compile = "without torch.compile", self._eager_fns, False
                elif self.attention == "triton":
                    what, self.attention = "with SDPA attention instead of the Triton kernel", "torch"
                else:
                    raise
                print(f"[fast_generate] decode step failed ({type(e).__name__}: {str(e)[:300]}); retrying {what}",
                      flush=True)
                torch.cuda.synchronize(self.device)
        self.last_capture_s = time.perf_counter() - t0

    def _capture(self):
        """Warm up (compiles and autotunes outside the capture) on a side stream, then capture."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._decode_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.sync_every):
                self._decode_step()
        torch.cuda.synchronize(self.device)
        # Leave the state inert: warm-up and capture ran steps on all-done rows.
        self.done.fill_(True)
        self.pos.zero_()
        return graph

    def _sampler(self):
        """The sampler of the current (mode, top_k): f(logits, temperature, top_p, seeds, step); compiled (one
        compiled function per key) when the generator compiles."""
        fn = keyed_sampler(self._mode == "sample_top_p", self._top_k)
        if self._samplers is None:
            return fn
        key = self._graph_key()
        if key not in self._samplers:
            self._samplers[key] = torch.compile(fn, dynamic=False, fullgraph=True)
        return self._samplers[key]

    def _graph_key(self) -> tuple:
        """Which captured sampling graph the current mode replays: one per (mode, top_k)."""
        return (self._mode, self._top_k)

    def _current_graph(self):
        return self._graph if self._mode == "greedy" else self._sample_graphs.get(self._graph_key())

    def _run_window(self) -> None:
        graph = self._current_graph()
        if graph is not None:
            graph.replay()
        else:
            for _ in range(self.sync_every):
                self._decode_step()

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], progress: bool = True, *, n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, keys: list | None = None, top_k: int = 0) -> list[dict]:
        """Continuations of every prompt (token id lists), in input order: greedy (temperature 0, one per prompt:
        the path this engine always had), or `n` samples per prompt at `temperature` / `top_p`, returned
        prompt-major (prompt 0's samples 0..n-1, then prompt 1's, ...).  Sample k of a prompt is seeded by
        row_seed(seed, keys[i] (default: the prompt's index), k), so it does not depend on the batch.
        top_k > 0: draw only among the k most likely tokens, then top_p among them (0 or >= vocabulary: no limit)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        top_k = checked_top_k(top_k)
        top_k = top_k if top_k < self.shape.vocab_size else 0  # >= vocabulary: no limit
        if keys is not None and len(keys) != len(prompt_ids):
            raise ValueError(f"{len(keys)} keys for {len(prompt_ids)} prompts")
        sampling = temperature > 0
        if not sampling:  # greedy: one decode per prompt, repeated for n > 1 (identical by definition)
            out = self._generate(prompt_ids, progress, 1, None)
            return [dict(o, token_ids=list(o["token_ids"])) for o in out for _ in range(n)] if n > 1 else out
        keys = list(range(len(prompt_ids))) if keys is None else keys
        seeds = [row_seed(seed, key, k) for key in keys for k in range(n)]
        return self._generate(prompt_ids, progress, n, (float(temperature), float(top_p), seeds, top_k))

    def _generate(self, prompt_ids: list[list[int]], progress: bool, copies: int, sampling) -> list[dict]:
        """copies: decodes per prompt; sampling: None (greedy) or (temperature, top_p, seeds per request, top_k)."""
        n = len(prompt_ids) * copies  # requests
        if n == 0:
            return []
        self._check_prompts(prompt_ids)
        t_start = time.perf_counter()
        self._mode, self._top_k = "greedy", 0
        setup_s = self._ensure_plan(prompt_ids, n, sampling is not None)
        if sampling is not None:
            self._top_k = sampling[3]
            self._mode = "sample_top_p" if sampling[1] < 1.0 or self._top_k > 0 else "sample"
            if self.use_graph and self._graph_key() not in self._sample_graphs:
                t0 = time.perf_counter()
                self._warm_and_capture()
                setup_s += time.perf_counter() - t0
            self.temperature.fill_(sampling[0])
            self.top_p.fill_(sampling[1])
        B = self.plan.slots
        # Reset per-call state (cache contents need no reset: every read position is written first).
        self.done.fill_(True)
        self.pos.zero_()
        self.n_gen.zero_()
        stage = _Stage(prompt_ids, copies, None if sampling is None else sampling[2])
        self._stage_seeds = stage.seeds
        owner: list[int | None] = [None] * B
        results: list[dict | None] = [None] * n
        steps = windows = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="generate (fast)", unit="prompt", dynamic_ncols=True)
        t_loop = time.perf_counter()
        while True:
            self._refill(stage, owner)
            active = [s for s in range(B) if owner[s] is not None]
            if not active:
                break
            # ---- decode a window, then one host sync to collect finished rows
            self._run_window()
            steps += self.sync_every
            windows += 1
            n_done = self._collect(active, owner, results)
            if bar is not None and n_done:
                bar.update(n_done)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if bar is not None:
            bar.close()
        t_end = time.perf_counter()
        self.last_stats = self._stats(results, t_start, t_loop, t_end, setup_s, stage, steps, windows)
        self.last_stats["mode"] = self._mode
        self.last_stats["top_k"] = self._top_k
        self._mode, self._top_k = "greedy", 0
        return results

    def _check_prompts(self, prompt_ids: list[list[int]]) -> None:
        V = self.shape.vocab_size
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} has no tokens")
            if min(p) < 0 or max(p) >= V:
                raise ValueError(f"prompt {i} has a token id outside the vocabulary [0, {V})")

    def _ensure_plan(self, prompt_ids: list[list[int]], requests: int | None = None, sampling: bool = False) -> float:
        """(Re)plan, allocate and capture (greedy) when this call does not fit the current plan; seconds spent.
        requests: sequences to decode (prompts x samples; default one per prompt); sampling: the plan must hold
        the sampler's scratch too (a greedy call reuses such a plan as it is)."""
        n, max_prompt = requests or len(prompt_ids), max(len(p) for p in prompt_ids)
        need_len = max_prompt + self.max_new_tokens
        if not (self.plan is None or need_len > self.plan.slot_len
                or (self.plan.limited_by == "prompts" and n > self.plan.slots)
                or (sampling and not self._plan_sampling)):
            return 0.0
        t0 = time.perf_counter()
        self._release()
        plan = plan_batch(self.shape, budget_bytes=self._budget_bytes(),
                          dtype_bytes=torch.empty(0, dtype=self.dtype).element_size(), max_prompt_len=max_prompt,
                          max_new_tokens=self.max_new_tokens, num_prompts=n, max_batch=self.max_batch,
                          prefill_tokens=self.prefill_tokens, sampling=sampling)
        self._plan_sampling = sampling
        self._allocate(plan)
        self._warm_and_capture()
        return time.perf_counter() - t0

    def _refill(self, stage: "_Stage", owner: list[int | None]) -> None:
        """Give free slots staged prompts, prefilling a new length group whenever the stage runs empty."""
        free = [s for s in range(len(owner)) if owner[s] is None]
        pending: list[tuple[int, int, int, int]] = []  # (slot, stage row, prompt length, request)
        while free and (stage.staged or stage.next_prompt < stage.n):
            if not stage.staged:
                if pending:  # the stage is about to be overwritten: move what was taken from it first
                    self._assign(pending, stage.first, stage.k, stage.v)
                    pending = []
                self._prefill_group(stage)
            i, r, ln = stage.staged.pop(0)
            s = free.pop(0)
            owner[s] = i
            pending.append((s, r, ln, i))
        if pending:
            self._assign(pending, stage.first, stage.k, stage.v)

    def _prefill_group(self, stage: "_Stage") -> None:
        """Prefill the next prompts of one length (as many as fit the staging buffer) into the stage."""
        tp = time.perf_counter()
        ids, order = stage.prompt_ids, stage.order
        T = len(ids[order[stage.next_prompt]])
        group = order[stage.next_prompt: stage.next_prompt + max(1, self.plan.stage_tokens // T)]
        stage.next_prompt += len(group)
        view = (self.shape.num_layers, len(group), T, self.shape.num_kv_heads, self.shape.head_dim)
        stage.k = self.stage_k[:, : len(group) * T].view(view)
        stage.v = self.stage_v[:, : len(group) * T].view(view)
        c = stage.copies
        if stage.seeds is None:
            stage.first = prefill(self.weights, self._eager_fns, [ids[i] for i in group], self.cos_tab, self.sin_tab,
                                  stage.k, stage.v)
        else:  # the prompt's logits, then each request's first token drawn from them (its step 0)
            pre, post, _ = self._eager_fns
            logits = prefill(self.weights, (pre, post, self._eager_logits), [ids[i] for i in group], self.cos_tab,
                             self.sin_tab, stage.k, stage.v)
            rows = torch.arange(len(group), device=self.device).repeat_interleave(c)
            req = [i * c + k for i in group for k in range(c)]
            first = torch.empty(len(req), dtype=torch.long, device=self.device)
            for a in range(0, len(req), 64):  # bounded scratch: 64 rows x vocab at a time (eager sampler)
                sl = slice(a, a + 64)
                m = len(req[sl])
                first[sl] = sample_tokens(logits[rows[sl]], self.temperature[:1].expand(m), self.top_p[:1].expand(m),
                                          torch.tensor([stage.seeds[q] for q in req[sl]], device=self.device),
                                          torch.zeros(m, dtype=torch.long, device=self.device),
                                          use_top_p=self._mode == "sample_top_p", top_k=self._top_k)
            stage.first = torch.zeros(stage.n * c, dtype=torch.long, device=self.device)
            stage.first[torch.tensor(req, device=self.device)] = first
        # request i * copies + k: stage row r; its first token is stage.first[r] (greedy) or stage.first[request]
        stage.staged = [(i * c + k, r, len(ids[i])) for r, i in enumerate(group) for k in range(c)]
        stage.groups += 1
        stage.prefill_s += time.perf_counter() - tp

    def _collect(self, active: list[int], owner: list[int | None], results: list[dict | None]) -> int:
        """Read the finished slots' outputs (one host sync) into results and free the slots; how many finished."""
        flags = torch.stack([self.done.long(), self.n_gen]).cpu()
        finished = [s for s in active if flags[0, s]]
        if not finished:
            return 0
        idx = torch.tensor(finished, device=self.device)
        rows = self.out[idx].cpu()
        for k, s in enumerate(finished):
            cnt = int(flags[1, s])
            toks = rows[k, :cnt].tolist()
            hit_cap = finish(toks, self.stop_token_ids, self.max_new_tokens)[2]
            results[owner[s]] = {"token_ids": toks, "hit_cap": bool(hit_cap), "generated_tokens": cnt}
            owner[s] = None
        self.pos[idx] = 0  # idle slots attend over one position only
        return len(finished)

    def _stats(self, results, t_start, t_loop, t_end, setup_s, stage: "_Stage", steps: int, windows: int) -> dict:
        gen_tokens = sum(r["generated_tokens"] for r in results)
        return {
            "wall_s": round(t_end - t_start, 4),
            "setup_s": round(setup_s, 4),
            "generate_s": round(t_end - t_loop, 4),
            "prefill_s": round(stage.prefill_s, 4),
            "prefill_groups": stage.groups,
            "decode_steps": steps,
            "windows": windows,
            "generated_tokens": gen_tokens,
            "tokens_per_s": round(gen_tokens / max(t_end - t_start, 1e-9), 1),
            "hit_cap": sum(r["hit_cap"] for r in results),
            "slots": self.plan.slots,
            "compiled": bool(self.compile),
            "cuda_graph": self._current_graph() is not None,
            "attention": self.attention,
            "num_splits": self.num_splits,
            "plan": asdict(self.plan),
        }

    def _assign(self, pending, first, stage_k, stage_v) -> None:
        """Move staged prompts into slots: copy their K/V, set their decode state (all on the device).

        pending: [(slot, stage row, prompt length, request)]; first: [rows] the prefill's greedy tokens, or
        (sampling) [requests] each request's first drawn token."""
        slots, rows, lens, reqs = (list(t) for t in zip(*pending))
        for s, r, ln, _ in pending:
            self.k_cache[:, s, :ln].copy_(stage_k[:, r, :ln])
            self.v_cache[:, s, :ln].copy_(stage_v[:, r, :ln])
        sl = torch.tensor(slots, device=self.device)
        if self._stage_seeds is None:
            tok = first[torch.tensor(rows, device=self.device)]
        else:
            tok = first[torch.tensor(reqs, device=self.device)]
            self.row_seed[sl] = torch.tensor([self._stage_seeds[q] for q in reqs], device=self.device)
        self.tokens[sl] = tok
        self.pos[sl] = torch.tensor(lens, device=self.device)
        self.n_gen[sl] = 1
        self.out[sl, 0] = tok
        is_stop = (tok[:, None] == self.stop_ids[None, :]).any(-1)
        self.done[sl] = is_stop | (self.max_new_tokens <= 1)


class _Stage:
    """Prefilled prompts waiting for a decode slot: [(request, stage row, length)], longest prompts first.
    Request i * copies + k is copy k of prompt i; seeds: one per request when sampling, else None."""

    def __init__(self, prompt_ids: list[list[int]], copies: int = 1, seeds: list[int] | None = None):
        self.prompt_ids = prompt_ids
        self.copies, self.seeds = copies, seeds
        self.n = len(prompt_ids)
        self.order = sorted(range(self.n), key=lambda i: -len(prompt_ids[i]))  # longest first
        self.next_prompt = 0
        self.staged: list[tuple[int, int, int]] = []
        self.first = self.k = self.v = None  # the group's first greedy tokens and its K/V views
        self.groups = 0
        self.prefill_s = 0.0


# config.json fields the buffers, the graphs and the rotary tables depend on (any rope*/rotary* key too).
CONFIG_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "tie_word_embeddings",
                 "hidden_act", "attention_bias", "mlp_bias", "max_position_embeddings", "pretraining_tp")


def config_signature(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k in CONFIG_FIELDS or k.startswith("rope") or "rotary" in k}


def safetensors_files(model_dir) -> list:
    """model.safetensors, or the shards its index names; ValueError when the checkpoint has no safetensors."""
    import json

    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ValueError(f"{model_dir}: no model.safetensors")


class _RopeSource:
    """A CPU copy of the model's rotary module (not the model), for building cos/sin tables later;
    `key` tells whether a new checkpoint's rotary settings differ."""

    def __init__(self, model):
        import copy

        rot = model.model.rotary_emb
        self.key = (getattr(rot, "rope_type", "default"), float(getattr(rot, "attention_scaling", 1.0)),
                    tuple(rot.inv_freq.detach().float().cpu().tolist()))
        self.rotary = copy.deepcopy(rot).cpu()
