"""Loading the tokenizer that the data stage (and the trainer) render and tokenise conversations with."""

from __future__ import annotations

from pathlib import Path

from sftbench.model.chat_template import IM_END, PLAIN_CHATML
from sftbench.data.records import looks_like_hub_id
from sftbench.core.errors import UserError


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _from_name(name: str):
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
    except Exception as e:
        raise UserError(f"{name}: could not load a tokenizer ({type(e).__name__}: {_first_line(e)}).") from None


def _apply_template_file(tok, path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--chat_template {p}: file not found.")
    tok.chat_template = p.read_text(encoding="utf-8")
    import jinja2

    try:  # a syntax error would otherwise surface as a traceback from the tokenisation
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"--chat_template {p}:{e.lineno}: Jinja syntax error ({e.message}).") from None


def load_tokenizer(name_or_path: str, chat_template: str | None = None):
    """Load a tokenizer, ready to render chat data and to pad batches.

    name_or_path: 'tiny' (sftbench.model.tiny's test tokenizer), an offline name such as
    'smollm2-135m-instruct-offline' (sftbench.model.offline.OFFLINE_NAMES: the real SmolLM2 tokenizer from its GGUF,
    no network), a local model directory, or a Hugging Face hub id.
    chat_template: path of a Jinja file that replaces the tokenizer's own template (checked by rendering one
    message: UserError naming file:line on a syntax error).
    Afterwards the tokenizer always has a chat template (the file's, its own, or PLAIN_CHATML when it had none,
    as for the SmolLM2 base model) and a pad token (<|im_end|> when in the vocabulary, else EOS).
    UserError (naming the path) when nothing loads.
    """
    tok = _from_name(name_or_path)
    if chat_template:
        _apply_template_file(tok, chat_template)
    elif not getattr(tok, "chat_template", None):
        tok.chat_template = PLAIN_CHATML  # the base model has none: plain ChatML, as the homework used
    if tok.pad_token is None:
        tok.pad_token = IM_END if IM_END in tok.get_vocab() else tok.eos_token
    return tok
