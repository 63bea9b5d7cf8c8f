"""Does a model directory's config.json describe the weights beside it?  Checked before any weights load, by
training (the base model, a resumed checkpoint) and by evaluation, because transformers' from_pretrained
builds a randomly initialised model around weights it cannot place (every tensor "UNEXPECTED") and goes on.

    check_config_matches_weights(model_dir)   UserError "MODEL: could not load the model (...)" naming the
                                              missing, unexpected and wrong-shape tensors

The model the config describes is built on the meta device (no memory, no initialisation: milliseconds) and
its parameter names and shapes are compared with the safetensors headers (sftbench.core.fingerprint reads
them; truncated files are named there).  Directories whose weights are not safetensors (pytorch_model.bin) or
only a LoRA adapter are left to from_pretrained.
"""

from __future__ import annotations

import os
from pathlib import Path

from sftbench.core import fingerprint as fpr
from sftbench.core.errors import UserError

# tensors old checkpoints carry that current models recompute (transformers ignores them too)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"{d}: could not load the model (config.json: {first}).") from None
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
