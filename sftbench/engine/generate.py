"""Generation for evaluation, augmentation and the benches: prompts, system prompt, batching, two backends.

The tokenizer (with the run's chat template), the stop ids and the stop rule come from sftbench.model.hf
(load_tokenizer(..., padding_side="left"), stop_token_ids, finish), shared with training.
- `render_prompts` applies the chat template exactly as lm-eval/the homework do:
  `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`; the string is recorded.
- Backends behind one interface, `Generator` (`load(model)`, `generate(prompt_ids, max_new_tokens)` ->
  [`Completion`]): `HFGenerator` (`model.generate`, greedy) and `FastBackend` (the engine of
  `sftbench/engine/fast_generate.py`, loaded lazily).  Stopping and hit_cap are decided once, by `finish()`.
- `pick_generation_dtype`: the weights dtype for generation (eval and the benches).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sftbench.core.errors import UserError
from sftbench.model.chat_template import PLAIN_CHATML
from sftbench.model.hf import finish, torch_dtype

def _injects_system(tokenizer) -> bool:
    """Does the template add a system turn when the conversation has none (SmolLM2-Instruct's does)?"""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "PROBE"}], add_generation_prompt=True,
                                          tokenize=False)
    head = probe.split("PROBE")[0]
    return "system" in head


def resolve_system_prompt(tokenizer, system_prompt: str) -> tuple[list[dict], str | None]:
    """(leading messages, replacement template or None).

    "default": only the user turn; the template decides (SmolLM2-Instruct injects its SmolLM system prompt).
    "none": no system turn at all; if the template injects one anyway and is ChatML, use plain ChatML instead.
    anything else: that text as the system message.
    """
    if system_prompt == "default":
        return [], None
    if system_prompt == "none":
        if _injects_system(tokenizer):
            if "<|im_start|>" in (tokenizer.chat_template or ""):
                return [], PLAIN_CHATML
            raise UserError("--system_prompt none: this model's chat template adds a system prompt by itself and is "
                            "not ChatML; use --system_prompt default or give a template with --chat_template.")
        return [], None
    return [{"role": "system", "content": system_prompt}], None


def render_prompts(tokenizer, prompts: Sequence[str], system_prompt: str = "default") -> list[str]:
    """The exact strings given to the model (template applied, generation prompt added)."""
    lead, replacement = resolve_system_prompt(tokenizer, system_prompt)
    if replacement is not None:
        tokenizer.chat_template = replacement
    out = []
    for p in prompts:
        text = tokenizer.apply_chat_template(lead + [{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=False)
        out.append(text)
    return out


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of the rendered strings, without adding special tokens again (the template has them)."""
    enc = tokenizer(list(texts), add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


@dataclass
class GenSpec:
    max_new_tokens: int
    stop_ids: list[int]
    pad_id: int


@dataclass
class Completion:
    """One answer: ids without the stop token, its text, tokens generated (the stop token included) and
    whether it ran to max_new_tokens without stopping."""

    token_ids: list[int]
    text: str
    generated_tokens: int
    hit_cap: bool


class Generator:
    """The interface both backends share (the product's eval and scripts/bench_generate.py call it):

        g.load(model)                                  # (re)load weights: same architecture, new checkpoint
        g.generate(prompt_ids, max_new_tokens=None)    # [Completion] in input order; None = spec's cap
        g.sample(prompt_ids, n, temperature, top_p=1.0, seed=0, keys=None, max_new_tokens=None, top_k=0)
                                                       # n [Completion] per prompt, prompt-major

    A backend implements `_generate_ids` (raw generated ids per prompt) and `_sample_ids`; stopping, hit_cap
    and decoding are decided here, once, by `finish`.  Both backends sample with the one function
    sftbench.engine.sampling.sample_tokens, seeded per (prompt key, sample): the same seed gives the same
    answers whatever the batch; temperature 0 is the greedy path itself, its answer repeated n times.
    """

    name = "?"

    def __init__(self, tokenizer, spec: GenSpec):
        self.tokenizer = tokenizer
        self.spec = spec

    def load(self, model) -> None:
        raise NotImplementedError

    def _generate_ids(self, prompt_ids: list[list[int]], max_new_tokens: int, **kw) -> list[list[int]]:
        raise NotImplementedError

    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None, **kw) -> list[Completion]:
        cap = max_new_tokens or self.spec.max_new_tokens
        return [self.complete(ids, cap) for ids in self._generate_ids(prompt_ids, cap, **kw)]

    def sample(self, prompt_ids: list[list[int]], n: int, temperature: float, *, top_p: float = 1.0, seed: int = 0,
               keys: list | None = None, max_new_tokens: int | None = None, top_k: int = 0) -> list[Completion]:
        """n answers per prompt, prompt-major (prompt i's are [i*n, (i+1)*n)); keys: per-prompt seed keys
        (default: the prompt's index), so a prompt keeps its samples when the others change.  top_k > 0: draw
        among the k most likely tokens only, then top_p among them (0: no limit)."""
        from sftbench.engine.sampling import checked_top_k  # lazy: torch

        top_k = checked_top_k(top_k)
        cap = max_new_tokens or self.spec.max_new_tokens
        if temperature <= 0:
            return [c for c in self.generate(prompt_ids, cap) for _ in range(n)]
        keys = list(range(len(prompt_ids))) if keys is None else list(keys)
        rows = self._sample_ids(prompt_ids, cap, n, float(temperature), float(top_p), int(seed), keys, top_k)
        return [self.complete(ids, cap) for ids in rows]

    def _sample_ids(self, prompt_ids, max_new_tokens, n, temperature, top_p, seed, keys,
                    top_k: int = 0) -> list[list[int]]:
        raise NotImplementedError

    def complete(self, gen_ids: Sequence[int], max_new_tokens: int) -> Completion:
        ans, n_gen, hit = finish(gen_ids, self.spec.stop_ids, max_new_tokens)
        return Completion(ans, self.tokenizer.decode(ans, skip_special_tokens=True), n_gen, hit)


class HFGenerator(Generator):
    """Batched `model.generate` over left-padded prompts: greedy (`generate`), or sampled through `sample()`
    (n answers per prompt, prompt-major, drawn by sftbench.engine.sampling)."""

    name = "hf"

    def __init__(self, model, tokenizer, spec: GenSpec):
        super().__init__(tokenizer, spec)
        self.model = model

    def load(self, model) -> None:
        self.model = model

    def _left_padded(self, rows: list[list[int]]):
        """(input_ids [B, width] left-padded with the pad id, attention_mask [B, width], the model's device)."""
        import torch

        width = max(len(p) for p in rows)
        input_ids = torch.full((len(rows), width), self.spec.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(rows):
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[i, width - len(p):] = 1
        return input_ids, attn, next(self.model.parameters()).device

    def _generate_ids(self, prompt_ids: list[list[int]], max_new_tokens: int,
                      min_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy; min_new_tokens: force that many steps (benchmark probes of a fixed length)."""
        import torch
        from transformers import GenerationConfig

        input_ids, attn, dev = self._left_padded(prompt_ids)
        width = input_ids.shape[1]
        gc = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                              num_beams=1, eos_token_id=list(self.spec.stop_ids), pad_token_id=self.spec.pad_id)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(dev), attention_mask=attn.to(dev), generation_config=gc)
        # Rows that stopped early are padded by generate; `finish` cuts at the first stop token anyway.
        return out[:, width:].tolist()

    def _sample_ids(self, prompt_ids, max_new_tokens, n, temperature, top_p, seed, keys,
                    top_k: int = 0) -> list[list[int]]:
        """Greedy generate() over scores that SampleLogitsProcessor made one-hot on sample_tokens' draw."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from sftbench.engine.sampling import SampleLogitsProcessor, row_seed

        input_ids, attn, dev = self._left_padded([p for p in prompt_ids for _ in range(n)])
        width = input_ids.shape[1]
        proc = SampleLogitsProcessor([row_seed(seed, key, k) for key in keys for k in range(n)], temperature, top_p,
                                     width, top_k=top_k)
        gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=list(self.spec.stop_ids), pad_token_id=self.spec.pad_id)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(dev), attention_mask=attn.to(dev), generation_config=gc,
                                      logits_processor=LogitsProcessorList([proc]))
        return out[:, width:].tolist()


class FastBackend(Generator):
    """The fast engine (sftbench/engine/fast_generate.py's FastGenerator: continuous batching, CUDA graphs) behind
    the Generator interface.  Its cap is fixed when built (graphs are captured for it): a call may ask for
    less, not more.  `engine.last_stats` holds the last call's slots/tokens/timings."""

    name = "fast"

    def __init__(self, engine, tokenizer, spec: GenSpec):
        super().__init__(tokenizer, spec)
        self.engine = engine

    def load(self, model) -> None:
        self.engine.load_weights(model)

    def _generate_ids(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        if max_new_tokens > self.engine.max_new_tokens:
            raise ValueError(f"the fast engine was built for max_new_tokens {self.engine.max_new_tokens}, "
                             f"not {max_new_tokens}")
        return [list(o["token_ids"]) for o in self.engine.generate(prompt_ids, progress=False)]

    def _sample_ids(self, prompt_ids, max_new_tokens, n, temperature, top_p, seed, keys,
                    top_k: int = 0) -> list[list[int]]:
        if max_new_tokens > self.engine.max_new_tokens:
            raise ValueError(f"the fast engine was built for max_new_tokens {self.engine.max_new_tokens}, "
                             f"not {max_new_tokens}")
        out = self.engine.generate(prompt_ids, progress=False, n=n, temperature=temperature, top_p=top_p, seed=seed,
                                   keys=keys, top_k=top_k)
        return [list(o["token_ids"][:max_new_tokens]) for o in out]


def fast_generator_class():
    """sftbench.engine.fast_generate.FastGenerator, or None when that module is not there (then: hf)."""
    if importlib.util.find_spec("sftbench.engine.fast_generate") is None:
        return None
    from sftbench.engine import fast_generate  # lazy: torch + Triton set-up, only when the fast backend is asked for

    return getattr(fast_generate, "FastGenerator", None)


def make_fast_generator(model, tokenizer, spec: GenSpec, max_batch: int | None, device, dtype: str,
                        log: Callable = print, reuse: FastBackend | None = None, **engine_kw) -> FastBackend | None:
    """The fast backend, or `reuse` re-armed with a new checkpoint's weights (graphs and compiled kernels
    kept) when it was built for the same cap, stop tokens, batch and dtype.  None when the module is missing.

    Contract of `FastGenerator` (sftbench/engine/fast_generate.py):
        FastGenerator(model, tokenizer, *, max_new_tokens, stop_token_ids, device, dtype, max_batch, **engine_kw)
        .generate(prompt_ids, progress=...) -> [{"token_ids", "hit_cap", "generated_tokens"}, ...] in input order
        .load_weights(model)   # same architecture, new weights
    """
    cls = fast_generator_class()
    if cls is None:
        return None
    eng = getattr(reuse, "engine", None)
    if (eng is not None and not engine_kw and hasattr(eng, "load_weights")
            and getattr(eng, "max_new_tokens", None) == spec.max_new_tokens
            and list(getattr(eng, "stop_token_ids", [])) == list(spec.stop_ids)
            and getattr(eng, "max_batch", None) == max_batch and getattr(eng, "dtype", None) == torch_dtype(dtype)):
        try:
            reuse.load(model)
            reuse.tokenizer, reuse.spec = tokenizer, spec
            return reuse
        except ValueError as e:  # another architecture/rotary setting: build anew
            log(f"fast generator: rebuilding ({e})")
    engine = cls(model, tokenizer, max_new_tokens=spec.max_new_tokens, stop_token_ids=list(spec.stop_ids),
                 device=device, dtype=torch_dtype(dtype), max_batch=max_batch, **engine_kw)
    return FastBackend(engine, tokenizer, spec)


def reload_fast_generator(reuse: FastBackend, model_path: str, tokenizer, spec: GenSpec, *, max_batch: int | None,
                          dtype: str, log: Callable = print) -> FastBackend | None:
    """`reuse` re-armed with a checkpoint read straight from its safetensors files into the engine's weight
    buffers (no HF model is built), when built for the same cap, stop tokens, batch and dtype; None when that
    cannot be done (another architecture, no safetensors, a hub id): then load the model and make_generator."""
    eng = getattr(reuse, "engine", None)
    if (eng is None or not hasattr(eng, "load_weights_from_dir") or not Path(model_path).is_dir()
            or getattr(eng, "max_new_tokens", None) != spec.max_new_tokens
            or list(getattr(eng, "stop_token_ids", [])) != list(spec.stop_ids)
            or getattr(eng, "max_batch", None) != max_batch or getattr(eng, "dtype", None) != torch_dtype(dtype)):
        return None
    try:
        eng.load_weights_from_dir(model_path)
    except (ValueError, OSError, KeyError) as e:
        log(f"fast generator: loading {model_path} through transformers ({e})")
        return None
    reuse.tokenizer, reuse.spec = tokenizer, spec
    return reuse


def make_generator(backend: str, model, tokenizer, spec: GenSpec, *, max_batch: int | None, device, dtype: str,
                   log: Callable = print, reuse: FastBackend | None = None) -> Generator:
    """`backend` "fast" (falls back to hf when sftbench/engine/fast_generate.py is missing) or "hf"."""
    if backend == "fast":
        g = make_fast_generator(model, tokenizer, spec, max_batch, device, dtype, log=log, reuse=reuse)
        if g is not None:
            return g
        log("fast backend unavailable; falling back to hf")  # pragma: no cover - resolve_backend checked it
    return HFGenerator(model, tokenizer, spec)


def pick_generation_dtype(requested: str, device) -> str:
    """Weights dtype for generation ("bf16"|"fp16"|"fp32"): as asked, or for "auto" the project's one rule
    (sftbench.core.device.auto_precision: bf16 on a GPU with bf16, fp16 otherwise, fp32 on CPU).  Generation casts
    the weights (no autocast, no master copy), unlike training (sftbench.core.device.pick_precision)."""
    if requested != "auto":
        return requested
    from sftbench.core.device import auto_precision

    return auto_precision(device)
