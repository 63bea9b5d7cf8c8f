"""Chat templates the project ships.

PLAIN_CHATML is the homework's template: ChatML with no injected system prompt.  It is used when a
tokenizer has no template (the SmolLM2 *base* model has none) and for the offline demo model, so
training and IFEval see the same format.  Special tokens: <|im_start|> opens a turn, <|im_end|> ends it.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from sftbench.core.errors import UserError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

PLAIN_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The COMP4901B homework's template: plain ChatML preceded by one stray "\n" (its golden labels include it).
HOMEWORK_CHATML = "\n" + PLAIN_CHATML


# What evaluation records in summary.json settings["chat_template"] and training logs, per case.
MODEL = "model"                               # the tokenizer's own template
FALLBACK = "chatml (tokenizer has none)"      # no --chat_template and the tokenizer has none: PLAIN_CHATML
PLAIN = "plain_chatml"                        # --chat_template plain (or plain_chatml)
HOMEWORK = "homework"                         # --chat_template homework
NAMED = {"plain": (PLAIN_CHATML, PLAIN), "plain_chatml": (PLAIN_CHATML, PLAIN), "homework": (HOMEWORK_CHATML, HOMEWORK)}
CHOICES = "`model` (default: the tokenizer's own), `plain` (= `plain_chatml`), `homework` or a Jinja file"


@dataclass(frozen=True)
class ChatTemplate:
    """The template a run uses.  text: the Jinja source; name: MODEL, FALLBACK, PLAIN, HOMEWORK or a file's
    resolved path (what evaluation records); note: the one log line to print when the fallback was taken."""

    text: str
    name: str
    note: str | None = None

    @property
    def sha256(self) -> str | None:
        """None for the model's own template (recorded as `model` since the first results; keeps their hash)."""
        return None if self.name == MODEL else hashlib.sha256(self.text.encode()).hexdigest()


def resolve_chat_template(value: str | None, own: str | None, where: str = "the tokenizer") -> ChatTemplate:
    """The ONE reading of `--chat_template`, for training, evaluation and augmentation alike.

    value: None or `model` -> `own` (the tokenizer's template), or PLAIN_CHATML when it has none (with a `note`
    to log: never a silent fallback); `plain`/`plain_chatml` -> PLAIN_CHATML; `homework` -> HOMEWORK_CHATML;
    anything else -> the text of that Jinja file (UserError naming file[:line] when missing, empty or not Jinja).
    own: the tokenizer's chat_template (None or "" when it has none); where: names it in the note.
    """
    if value is None or value == MODEL:
        if own:
            return ChatTemplate(own, MODEL)
        return ChatTemplate(PLAIN_CHATML, FALLBACK,
                            f"chat template: {where} has none; using the project's plain ChatML (ChatML, no system "
                            f"prompt), the same in training and evaluation (--chat_template PATH gives another)")
    if value in NAMED:
        return ChatTemplate(*NAMED[value])
    p = Path(value).expanduser()
    if not p.is_file():
        raise UserError(f"--chat_template {value}: file not found (give {CHOICES}).")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"--chat_template {value}: the file is empty.")
    try:  # syntax only, with HF's own environment (it knows the `generation` tag)
        # lazy: transformers takes seconds to import; only a template file needs it
        from transformers.utils.chat_template_utils import _compile_jinja_template

        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"--chat_template {value}:{e.lineno}: Jinja syntax error ({e.message}).") from None
    return ChatTemplate(text, str(p.resolve()))
