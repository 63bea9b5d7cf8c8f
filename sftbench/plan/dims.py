"""Model dimensions the planner needs, read from a config.json (local, cached hub, or built in)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sftbench.core.errors import UserError

@dataclass(frozen=True)
class ModelDims:
    """What the memory model needs from a Llama/Qwen-style causal LM config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_word_embeddings: bool = True
    head_dim: int | None = None
    max_position_embeddings: int | None = None
    name: str = "model"

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        """All parameters (tied embeddings counted once; two RMSNorm weights per layer + the final one)."""
        per_layer = self.layer_linear_params + 2 * self.hidden
        head = 0 if self.tie_word_embeddings else self.embed_params
        return self.embed_params + head + self.layers * per_layer + self.hidden

    def lora_params(self, rank: int) -> int:
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes().values())


# SmolLM2-135M (base and Instruct share it), from its config.json: works offline.
SMOLLM2_135M = ModelDims(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152,
                         tie_word_embeddings=True, head_dim=64, max_position_embeddings=8192, name="SmolLM2-135M")
BUILTIN_MODELS = {
    "smollm2-135m-instruct-offline": SMOLLM2_135M,
    "smollm2-offline": SMOLLM2_135M,
    "huggingfacetb/smollm2-135m": SMOLLM2_135M,
    "huggingfacetb/smollm2-135m-instruct": SMOLLM2_135M,
}


def dims_from_config(cfg, name: str = "model") -> ModelDims:
    """ModelDims from a transformers config object or a config.json dict."""
    get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    text = get("text_config")  # multimodal wrappers keep the LM under text_config
    if text is not None and get("hidden_size") is None:
        return dims_from_config(text, name)
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if get(k) is None]
    if missing:
        raise UserError(f"{name}: config has no {', '.join(missing)}; the planner handles Llama/Qwen/Mistral-style "
                        f"causal LMs (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
                        f"num_key_value_heads, vocab_size, tie_word_embeddings).")
    heads = int(get("num_attention_heads"))
    return ModelDims(hidden=int(get("hidden_size")), intermediate=int(get("intermediate_size")),
                     layers=int(get("num_hidden_layers")), heads=heads,
                     kv_heads=int(get("num_key_value_heads") or heads), vocab=int(get("vocab_size")),
                     tie_word_embeddings=bool(get("tie_word_embeddings", False)),
                     head_dim=get("head_dim"), max_position_embeddings=get("max_position_embeddings"), name=name)


def load_model_dims(name_or_path: str) -> ModelDims:
    """Dimensions of a model: a local dir with config.json, a built-in name, or a hub id (AutoConfig).

    Offline, the SmolLM2-135M names (`smollm2-135m-instruct-offline`, `HuggingFaceTB/SmolLM2-135M[-Instruct]`)
    fall back to the embedded numbers.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise UserError(f"{p}: no config.json in this directory (give a model directory, or a checkpoint-<step>/ inside a run).")
        from sftbench.core.io import read_json

        return dims_from_config(read_json(f), p.name)
    if p.is_file() and p.name.endswith(".json"):
        from sftbench.core.io import read_json

        return dims_from_config(read_json(p), p.stem)
    key = name_or_path.strip().lower()
    if key in ("smollm2-135m-instruct-offline", "smollm2-offline"):
        return BUILTIN_MODELS[key]
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        try:
            from transformers import AutoConfig

            try:  # the local HF cache first: no network round trips (and no retries) when it is there
                return dims_from_config(AutoConfig.from_pretrained(name_or_path, local_files_only=True), name_or_path)
            except UserError:
                raise
            except Exception:
                if key in BUILTIN_MODELS:  # same numbers as the hub's config.json: no need to ask the hub
                    return replace(BUILTIN_MODELS[key], name=name_or_path)
            return dims_from_config(AutoConfig.from_pretrained(name_or_path), name_or_path)
        except UserError:
            raise
        except Exception as e:  # offline, gated, typo: fall back to the embedded numbers if we have them
            if key in BUILTIN_MODELS:
                return replace(BUILTIN_MODELS[key], name=name_or_path)
            raise UserError(f"--model_name_or_path {name_or_path}: could not read its config from the Hugging Face hub "
                            f"({type(e).__name__}). Offline, give a local model directory (with config.json) "
                            f"or the built-in `smollm2-135m-instruct-offline`.") from None
    raise UserError(f"--model_name_or_path {name_or_path}: not a directory, a config.json, a hub id (owner/name) or a built-in "
                    f"name ({', '.join(sorted(BUILTIN_MODELS))}).")
