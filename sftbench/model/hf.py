"""Hugging Face loading, once for the whole project: the tokenizer (with the run's chat template and a pad
token), the ids that end an answer, and fingerprints of a tokenizer (the causal LM: sftbench.model.load).

Training, evaluation, augmentation and the data inspector all call `load_tokenizer`, so they render the same
prompt text for the same conversation (sftbench.model.chat_template.resolve_chat_template decides the template).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

from sftbench.core.errors import UserError
from sftbench.model.chat_template import IM_END, ChatTemplate, resolve_chat_template


def looks_like_hub_id(path: str) -> bool:
    """"owner/name" that is not a relative or absolute path."""
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and all(path.split("/"))


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else ""


def _from_name(name: str):
    # lazy: tiny/offline/transformers are only imported for the kind of name given (transformers takes seconds)
    if name == "tiny":
        from sftbench.model.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from sftbench.model.offline import OFFLINE_NAMES

    if name in OFFLINE_NAMES:
        from sftbench.model.offline import load_offline_tokenizer

        return load_offline_tokenizer()
    from transformers import AutoTokenizer

    p = Path(name).expanduser()
    if not p.exists() and not looks_like_hub_id(name):
        raise UserError(f"{name}: tokenizer/model path not found.")
    try:
        return AutoTokenizer.from_pretrained(str(p) if p.exists() else name)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{name}: could not load a tokenizer ({type(e).__name__}: {_first_line(e)}).") from None


def load_tokenizer(name_or_path: str, chat_template: str | None = None, *, padding_side: str | None = None,
                   log: Callable[[str], None] | None = None):
    """A tokenizer ready to render chat and to pad batches; `chat_template_of(tok)` says which template it has.

    name_or_path: 'tiny' (sftbench.model.tiny's test tokenizer), an offline name such as
    'smollm2-135m-instruct-offline' (sftbench.model.offline.OFFLINE_NAMES, no network), a local model directory,
    or a Hugging Face hub id.  chat_template: a `--chat_template` value (resolve_chat_template: its own, or plain
    ChatML when it has none -- said through `log` -- , `plain`, `homework` or a Jinja file).
    padding_side: "left" to generate (a decoder pads on the left), None keeps the tokenizer's.
    Pad token: <|im_end|> when in the vocabulary, else EOS.  UserError (naming the path) when nothing loads.
    """
    tok = _from_name(name_or_path)
    ct = resolve_chat_template(chat_template, getattr(tok, "chat_template", None), where=name_or_path)
    tok.chat_template = ct.text
    tok.sftbench_chat_template = ct
    if ct.note and log is not None:
        log(ct.note)
    if padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = IM_END if IM_END in tok.get_vocab() else tok.eos_token
    return tok


def chat_template_of(tok) -> ChatTemplate:
    """The ChatTemplate load_tokenizer chose (the tokenizer's own text for one loaded elsewhere)."""
    ct = getattr(tok, "sftbench_chat_template", None)
    return ct if ct is not None else resolve_chat_template(None, getattr(tok, "chat_template", None))


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Sorted unique ids that end an answer: generation_config.eos_token_id (int or list), the tokenizer's
    eos, and <|im_end|> when the vocabulary has it (a model whose eos is <|endoftext|> would otherwise run every
    answer to the cap, as the homework's vLLM runs did)."""
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


def finish(gen_ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], int, bool]:
    """(answer ids without the stop token, tokens generated including the stop token, hit_cap): the one stop
    rule of every generator."""
    stop = set(stop_ids)
    for i, t in enumerate(gen_ids):
        if int(t) in stop:
            return [int(x) for x in gen_ids[:i]], i + 1, False
    ids = [int(x) for x in gen_ids[:max_new_tokens]]
    return ids, len(ids), True


def load_generation_config(model_path: str):
    """The generation_config a loaded model would have (its generation_config.json, else one made from
    config.json), without loading weights; None when neither can be read (stop ids then come from the tokenizer)."""
    from transformers import AutoConfig, GenerationConfig  # lazy: transformers takes seconds to import

    try:
        return GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        pass
    try:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))
    except (OSError, ValueError):
        return None


def torch_dtype(name: str):
    import torch  # lazy: this module loads tokenizers for torch-free callers too

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a loaded tokenizer's vocabulary/merges and special tokens (the tokenised-data cache key)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model")


def tokenizer_files_fingerprint(model_path: str) -> str | None:
    """sha256 over a local model directory's tokenizer files, before loading anything (None for a hub id): the
    evaluation reuses a loaded tokenizer while this stays the same."""
    p = Path(model_path)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = p / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
