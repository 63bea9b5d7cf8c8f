"""Loading a causal LM that is what it claims to be: one check shared by the trainer and the evaluation.

    check_config(path, llama_only=True)   # before any weights load: a config the trainer can train
    model = load_causal_lm(path, torch.float32)   # UserError unless every weight loads into the model

Errors are one line naming the directory: a truncated or corrupt weights file (sftbench.core.fingerprint), a
config.json without `model_type` or of another architecture, a config whose shapes do not match the weights,
weights missing from the file or left unused by the model (a GPT-2 config beside Llama weights would otherwise
evaluate a randomly initialised model).
"""

from __future__ import annotations

import os
from pathlib import Path

from sftbench.core.errors import UserError

# model_type values the trainer's engines (sftbench/model/llama.py, the fast engine) implement.
LLAMA_TYPES = ("llama",)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def check_config(model_path: str | os.PathLike, llama_only: bool = False) -> dict:
    """config.json of a local model directory as a dict (an empty dict for a hub id); UserError for one that is
    unreadable, has no model_type, or (llama_only) is not a Llama-architecture model."""
    from sftbench.core.io import read_json

    p = Path(model_path)
    if not (p / "config.json").is_file():
        return {}
    cfg = read_json(p / "config.json")
    if not isinstance(cfg, dict):
        raise UserError(f"{p / 'config.json'}: not a JSON object, so not a model config.")
    mt = cfg.get("model_type")
    if not mt:
        raise UserError(f"{p / 'config.json'}: has no \"model_type\", so the architecture is unknown. Save the model "
                        f"again with save_pretrained, or restore its config.json.")
    if llama_only and mt not in LLAMA_TYPES:
        raise UserError(f"{p}: this trainer supports Llama-architecture models (SmolLM2, Llama, TinyLlama, ...); got "
                        f"{mt}. Choose a Llama-architecture --model_name_or_path.")
    return cfg


def check_weight_files(model_path: str | os.PathLike) -> None:
    """UserError for a truncated or corrupt safetensors file of a local model directory."""
    from sftbench.core.fingerprint import check_weights

    if Path(model_path).is_dir():
        check_weights(model_path)


def load_causal_lm(model_path: str | os.PathLike, dtype, *, llama_only: bool = False, **kw):
    """AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **kw), with every weight checked: UserError
    (one line naming the directory) for a bad config, a damaged weights file, shapes that do not match, or
    weights missing / unexpected."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_config(model_path, llama_only=llama_only)
    check_weight_files(model_path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype, output_loading_info=True, **kw)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError, TypeError, SafetensorError) as e:
        # a truncated or corrupt weights file, a config an architecture cannot be built from, shapes that differ
        if "ignore_mismatched_sizes" in str(e):
            raise UserError(f"{model_path}: could not load the model: the shapes in config.json do not match the "
                            f"weights (transformers' load report above lists them). Restore the config.json saved "
                            f"with these weights.") from None
        raise UserError(f"{model_path}: could not load the model ({type(e).__name__}: {_first_line(e)}).") from None
    check_loading_info(model_path, info)
    return model


def check_loading_info(model_path, info: dict) -> None:
    """UserError when from_pretrained left weights of the model unloaded (initialised at random) or weights of the
    file unused, or loaded some with another shape.  Tied output embeddings are not reported missing by
    transformers, so they pass."""
    missing = list(info.get("missing_keys") or [])
    unexpected = list(info.get("unexpected_keys") or [])
    mismatched = [k if isinstance(k, str) else k[0] for k in (info.get("mismatched_keys") or [])]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for what, keys in (("missing from the weights", missing), ("in the weights but not in the model", unexpected),
                       ("of another shape than the config says", mismatched)):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {', '.join(sorted(keys)[:3])})")
    raise UserError(f"{model_path}: could not load the model: config.json does not match the weights: "
                    f"{'; '.join(parts)}. A model whose weights do not all load would run with random ones. Restore "
                    f"the config.json saved with these weights.")


def weight_tensors(obj) -> list:
    """The weight tensors behind a model or a generator: an nn.Module's parameters, or the tensors (and lists of
    tensors) held by `obj`, its `.model`, its `.engine.weights` / `.weights` (the fast decode engine's buffers)."""
    import torch

    for path in (("model",), ("engine", "weights"), ("weights",), ()):
        cur = obj
        for name in path:
            cur = getattr(cur, name, None)
        if isinstance(cur, torch.nn.Module):
            return [p.detach() for p in cur.parameters()]
        if cur is not None and path:
            found = []
            for v in vars(cur).values():
                if torch.is_tensor(v):
                    found.append(v)
                elif isinstance(v, (list, tuple)):
                    found.extend(x for x in v if torch.is_tensor(x))
            if found:
                return found
    return [p.detach() for p in obj.parameters()] if isinstance(obj, torch.nn.Module) else []


def check_finite_weights(model_path, obj) -> None:
    """UserError when a weight of `obj` (a model, or a generator holding one) is NaN or Inf: a diverged run's
    checkpoint, whose evaluation would score garbage as if it were a model.  One pass over the weights on their
    device and one sync (milliseconds on a GPU, against minutes of generation)."""
    import torch

    tensors = weight_tensors(obj)
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise UserError(f"{model_path}: its weights hold NaN or Inf values (the training run diverged before this "
                        f"checkpoint was written); refusing to evaluate it. Evaluate an earlier checkpoint, or retrain "
                        f"with a lower --learning_rate.")
