"""Loading a causal LM that is what it claims to be: the one home of the checks, for training and evaluation.

    check_config(path, llama_only=True)       # config.json has a model_type (and is Llama, for the trainer)
    check_weight_files(path)                  # no truncated or corrupt safetensors file
    check_config_matches_weights(path)        # before any weights load: config names/shapes == the weights'
    model = load_causal_lm(path, torch.float32, llama_only=True)   # UserError unless every weight loads
    model = load_model(path, "bf16", device)  # the same, in eval mode on `device` (generation)
    check_finite_weights(path, model_or_generator)   # no NaN/Inf weight (a diverged checkpoint)

Errors are one line naming the directory: a truncated or corrupt weights file (sftbench.core.fingerprint), a
config.json without `model_type` or of another architecture, a config whose shapes do not match the weights,
weights missing from the file or left unused by the model (a GPT-2 config beside Llama weights would otherwise
evaluate a randomly initialised model), weights that are not finite.
"""

from __future__ import annotations

import os
from pathlib import Path

from sftbench.core import fingerprint as fpr
from sftbench.core.errors import UserError
from sftbench.model.hf import torch_dtype

# model_type values the trainer's engines (sftbench/model/llama.py, the fast engine) implement.
LLAMA_TYPES = ("llama",)
# tensors old checkpoints carry that current models recompute (transformers ignores them too)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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
    if Path(model_path).is_dir():
        fpr.check_weights(model_path)


def load_causal_lm(model_path: str | os.PathLike, dtype, *, llama_only: bool = False, **kw):
    """AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **kw) (dtype: a torch dtype or
    "bf16"|"fp16"|"fp32"), with every weight checked: UserError (one line naming the directory) for a bad
    config, a damaged weights file, shapes that do not match, or weights missing / unexpected."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_config(model_path, llama_only=llama_only)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=torch_dtype(dtype) if isinstance(dtype, str) else dtype,
            output_loading_info=True, **kw)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError, TypeError, SafetensorError) as e:
        # a truncated or corrupt weights file, a config an architecture cannot be built from, shapes that differ
        if "ignore_mismatched_sizes" in str(e):
            raise UserError(f"{model_path}: could not load the model: the shapes in config.json do not match the "
                            f"weights (transformers' load report above lists them). Restore the config.json saved "
                            f"with these weights.") from None
        raise UserError(f"{model_path}: could not load the model ({type(e).__name__}: {_first_line(e)}).") from None
    check_loading_info(model_path, info)
    return model


def load_model(model_path: str, dtype: str, device):
    """The model generation uses: load_causal_lm in `dtype` ("bf16"|"fp16"|"fp32") on `device`, eval mode."""
    return load_causal_lm(model_path, dtype).to(device).eval()


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


def all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite (True for none): the one NaN/Inf test of weights, for the
    trainer's checkpoints and the evaluation alike.  One fused max-|w| pass (NaN and Inf both propagate into it),
    a few launches and one device sync."""
    import torch

    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    try:
        norms = torch._foreach_norm(tensors, float("inf"))
        return bool(torch.stack([n.float() for n in norms]).isfinite().all())
    except (AttributeError, RuntimeError, TypeError):  # a torch without the private fused op: one check a tensor
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def check_finite_weights(model_path, obj) -> None:
    """UserError when a weight of `obj` (a model, or a generator holding one) is NaN or Inf: a diverged run's
    checkpoint, whose evaluation would score garbage as if it were a model.  One pass over the weights on their
    device and one sync (milliseconds on a GPU, against minutes of generation)."""
    import torch

    if not all_finite(weight_tensors(obj)):
        raise UserError(f"{model_path}: its weights hold NaN or Inf values (the training run diverged before this "
                        f"checkpoint was written); refusing to evaluate it. Evaluate an earlier checkpoint, or retrain "
                        f"with a lower --learning_rate.")


def _file_tensors(model_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """{tensor name: shape} over the model's safetensors files; None when its weights are not all safetensors."""
    files = [f for f in fpr.weight_files(model_dir) if f.name != "adapter_model.safetensors"]
    st = [f for f in files if f.suffix == ".safetensors"]
    if not st or any(f.suffix == ".bin" for f in files):
        return None
    out: dict[str, tuple[int, ...]] = {}
    for f in st:
        header, _ = fpr.read_safetensors_header(f)
        for name, t in header.items():
            if name != "__metadata__" and isinstance(t, dict):
                out[name] = tuple(int(x) for x in t.get("shape") or ())
    return out


def _sample(names, n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check_config_matches_weights(model_dir: str | os.PathLike) -> None:
    """UserError "MODEL: could not load the model (...)" when config.json cannot be built into a model, or its
    parameters are not the tensors in the weights files (missing, unexpected or another shape)."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        return
    have = _file_tensors(d)
    if have is None:
        return
    import torch  # lazy: the layer's torch-free modules import this package
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(d))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, OSError) as e:
        raise UserError(f"{d}: could not load the model (config.json: {_first_line(e)}).") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}
    have = {k: v for k, v in have.items() if not k.endswith(IGNORED_SUFFIXES)}
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and not (set(have) & set(want)):  # weights saved from the bare model, without its prefix
        prefixed = {f"{prefix}.{k}": v for k, v in have.items()}
        if set(prefixed) & set(want):
            have = prefixed
    missing = set(want) - set(have)
    # a tied parameter (lm_head.weight = embed_tokens.weight) is stored once
    present_ids = {id(params[k]) for k in have if k in params}
    missing = {k for k in missing if not (k in params and id(params[k]) in present_ids)}
    unexpected = set(have) - set(want)
    shapes = {k: (have[k], want[k]) for k in set(have) & set(want) if have[k] != want[k]}
    if not (missing or unexpected or shapes):
        return
    arch = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the config needs are not in the weights: {_sample(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the weights are not in the model: {_sample(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(f"{len(shapes)} tensor(s) have another shape, e.g. {k}: {list(shapes[k][0])} in the weights, "
                     f"{list(shapes[k][1])} by the config")
    raise UserError(f"{d}: could not load the model (its config.json, a {cfg.model_type} {arch}, does not match its "
                    f"weights: {'; '.join(parts)}). Put the config.json that was saved with these weights beside "
                    f"them; a model built from a mismatched config would be randomly initialised.")
