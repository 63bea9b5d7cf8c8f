"""Greedy generation for IFEval: tokenizer + template, stop tokens, batching, and the two backends.

- `load_tokenizer` applies `--chat_template` (a Jinja file, or `plain_chatml` = the homework's template) and
  refuses a tokenizer with no template at all.  Left padding (a decoder pads on the left to generate).
- `render_prompts` applies the chat template exactly as lm-eval/the homework do:
  `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`; the string is recorded.
- `stop_token_ids` = eos ids of generation_config + the tokenizer's eos + `<|im_end|>`: a model whose eos is
  `<|endoftext|>` would otherwise run every answer to the cap (the homework's vLLM runs did).
- Backends behind one interface, `Generator` (`load(model)`, `generate(prompt_ids, max_new_tokens)` ->
  [`Completion`]): `HFGenerator` (`model.generate`, greedy) and `FastBackend` (the engine of
  `sftbench/engine/fast_generate.py`, loaded lazily).  Stopping and hit_cap are decided once, by `finish()`.
- `pick_generation_dtype`: the weights dtype for generation (eval and the benches).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sftbench.model.chat_template import IM_END, PLAIN_CHATML
from sftbench.core.errors import UserError

PLAIN_CHATML_NAME = "plain_chatml"


def read_chat_template(spec: str | None) -> tuple[str | None, str]:
    """(template text or None = the model's own, the name recorded in settings)."""
    if not spec or spec == "model":
        return None, "model"
    if spec == PLAIN_CHATML_NAME:
        return PLAIN_CHATML, PLAIN_CHATML_NAME
    p = Path(spec).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: --chat_template file not found (give a Jinja template file, or `{PLAIN_CHATML_NAME}` "
                        f"for the homework's ChatML without a system prompt).")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"{p}: --chat_template file is empty.")
    return text, str(p.resolve())


def template_sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def load_tokenizer(model_path: str, chat_template: str | None = None):
    """AutoTokenizer with a chat template (UserError if there is none), left padding and a pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_path}: could not load a tokenizer ({str(e).splitlines()[0][:200]}).") from None
    text, _ = read_chat_template(chat_template)
    if text is not None:
        tok.chat_template = text
    if not getattr(tok, "chat_template", None):
        raise UserError(
            f"{model_path}: the tokenizer has no chat template, so prompts cannot be formatted as a conversation "
            f"(base models such as SmolLM2-135M have none). Pass --chat_template PATH (a Jinja file) or "
            f"--chat_template {PLAIN_CHATML_NAME} (ChatML without a system prompt, as the homework).")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = IM_END if IM_END in tok.get_vocab() else tok.eos_token
    return tok


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Sorted unique ids that end an answer: generation_config.eos_token_id (int or list), the tokenizer's
    eos, and <|im_end|> when the vocabulary has it."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    if IM_END in vocab:
        ids.add(int(vocab[IM_END]))
    if not ids:
        raise UserError("the model defines no end-of-sequence token and its vocabulary has no <|im_end|>: "
                        "every answer would run to --max_new_tokens.")
    return sorted(ids)


def load_generation_config(model_path: str):
    """The generation_config a loaded model would have (its generation_config.json, else one made from
    config.json), without loading weights; None when neither can be read (stop ids then come from the tokenizer)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        pass
    try:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))
    except (OSError, ValueError):
        return None


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


def finish(gen_ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], int, bool]:
    """(answer ids without the stop token, tokens generated including the stop token, hit_cap)."""
    stop = set(stop_ids)
    for i, t in enumerate(gen_ids):
        if int(t) in stop:
            return [int(x) for x in gen_ids[:i]], i + 1, False
    ids = [int(x) for x in gen_ids[:max_new_tokens]]
    return ids, len(ids), True


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

    A backend implements `_generate_ids` (raw generated ids per prompt); stopping, hit_cap and decoding
    are decided here, once, by `finish`.
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

    def complete(self, gen_ids: Sequence[int], max_new_tokens: int) -> Completion:
        ans, n_gen, hit = finish(gen_ids, self.spec.stop_ids, max_new_tokens)
        return Completion(ans, self.tokenizer.decode(ans, skip_special_tokens=True), n_gen, hit)


class HFGenerator(Generator):
    """Batched greedy `model.generate` over left-padded prompts."""

    name = "hf"

    def __init__(self, model, tokenizer, spec: GenSpec):
        super().__init__(tokenizer, spec)
        self.model = model

    def load(self, model) -> None:
        self.model = model

    def _generate_ids(self, prompt_ids: list[list[int]], max_new_tokens: int,
                      min_new_tokens: int | None = None) -> list[list[int]]:
        """min_new_tokens: force that many steps (benchmark probes of a fixed length)."""
        import torch
        from transformers import GenerationConfig

        dev = next(self.model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.spec.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[i, width - len(p):] = 1
        gc = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                              num_beams=1, eos_token_id=list(self.spec.stop_ids), pad_token_id=self.spec.pad_id)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(dev), attention_mask=attn.to(dev), generation_config=gc)
        # Rows that stopped early are padded by generate; `finish` cuts at the first stop token anyway.
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


def fast_generator_class():
    """sftbench.engine.fast_generate.FastGenerator, or None when that module is not there (then: hf)."""
    import importlib.util

    if importlib.util.find_spec("sftbench.engine.fast_generate") is None:
        return None
    from sftbench.engine import fast_generate

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


def generated_ids(out) -> list[int]:
    """A backend's per-prompt output (a list of ids, or the fast generator's dict) as a list of ids."""
    if isinstance(out, dict):
        return list(out["token_ids"])
    return list(out)


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def load_model(model_path: str, dtype: str, device):
    """AutoModelForCausalLM in `dtype` on `device`, eval mode.  UserError for an unloadable directory."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype))
    except (OSError, ValueError, SafetensorError) as e:  # a truncated or corrupt weights file, a bad config
        raise UserError(f"{model_path}: could not load the model ({str(e).splitlines()[0][:200]}).") from None
    return model.to(device).eval()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
