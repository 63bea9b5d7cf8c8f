"""Chat templates the project ships.

PLAIN_CHATML is the homework's template: ChatML with no injected system prompt.  It is used when a
tokenizer has no template (the SmolLM2 *base* model has none) and for the offline demo model, so
training and IFEval see the same format.  Special tokens: <|im_start|> opens a turn, <|im_end|> ends it.
"""

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


def template_from_flag(value: str | None) -> str | None:
    """The template text a `--chat_template` value names.

    None or 'model' -> None (the tokenizer's own), 'plain' -> PLAIN_CHATML, 'homework' -> HOMEWORK_CHATML,
    anything else -> the text of that Jinja file (syntax-checked; UserError naming file:line).
    """
    if value is None or value == "model":
        return None
    if value == "plain":
        return PLAIN_CHATML
    if value == "homework":
        return HOMEWORK_CHATML
    from pathlib import Path

    from sftbench.core.errors import UserError

    p = Path(value).expanduser()
    if not p.is_file():
        raise UserError(f"--chat_template {value}: not 'model', 'plain', 'homework' or an existing Jinja template file.")
    text = p.read_text(encoding="utf-8")
    import jinja2

    try:  # syntax only (HF's extra tags are unknown to a plain Environment, so only plain Jinja is checked here)
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        if "generation" not in str(e.message):
            raise UserError(f"--chat_template {value}:{e.lineno}: Jinja syntax error ({e.message}).") from None
    return text
