"""`python conversation_func.py DATA`: tokenise a data set exactly as training will, print the counts and show
examples with the supervised tokens wrapped in [[ ]], to check the loss mask by eye.

The settings shared with the trainer (tokenizer, model_max_length, max_rounds, masking, truncation_side,
skip_bad_records) take their defaults and help from sftbench.config.train.TrainConfig, so this view and a
training run agree unless a flag says otherwise.  The flags of earlier versions (--max_length, --mode,
--on_bad_record, dashed spellings) are still accepted, hidden from --help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

from sftbench.core.cli import HelpFormatter, add_config_arguments, config_defaults, config_from_namespace, setting
from sftbench.data.records import BAD_RECORD_POLICIES
from sftbench.core.errors import UserError
from sftbench.config.train import TrainConfig

_TRAIN_DEFAULTS = config_defaults(TrainConfig)
_TRAIN_META = {f.name: dict(f.metadata) for f in dataclasses.fields(TrainConfig)}


def _shared(name: str, help: str | None = None, train_name: str | None = None):
    """A setting whose default (and, unless given, help and choices) is the trainer's field `train_name or name`."""
    meta = dict(_TRAIN_META[train_name or name])
    text = meta.pop("help", "")
    return setting(_TRAIN_DEFAULTS[train_name or name], help or text, **meta)


@dataclass
class InspectConfig:
    data_path: str = _shared("data_path")
    tokenizer: str = _shared(
        "tokenizer", "`smollm2-135m-instruct-offline` (the real SmolLM2 tokenizer, offline), `tiny` (the test "
        "tokenizer), a model directory or a hub id (the trainer's --model_name_or_path default).",
        train_name="model_name_or_path")
    model_max_length: int = _shared("model_max_length")
    max_rounds: int = _shared("max_rounds")
    masking: str = _shared("masking")
    truncation_side: str = _shared("truncation_side")
    chat_template: Optional[str] = _shared(
        "chat_template", "`model` or none (the tokenizer's own; plain ChatML when it has none), `plain` (ChatML, "
        "no system prompt), `homework` (the homework's), or a Jinja template file.")
    skip_bad_records: bool = _shared("skip_bad_records")
    special_tokens_in_content: str = _shared("special_tokens_in_content")
    show: int = setting(1, "How many examples to print with the mask highlighted.")
    index: int = setting(0, "Index of the first example to show.")


def _policy(value: str) -> bool:
    if value not in BAD_RECORD_POLICIES:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BAD_RECORD_POLICIES)} (got {value!r})")
    return value == "skip"


# Earlier spellings -> (field, argparse type); kept working, hidden from --help.
LEGACY_FLAGS = {
    ("--max_length", "--max-length"): ("model_max_length", int),
    ("--max-rounds",): ("max_rounds", int),
    ("--mode",): ("masking", str),
    ("--truncation-side",): ("truncation_side", str),
    ("--chat-template",): ("chat_template", str),
    ("--on_bad_record", "--on-bad-record"): ("skip_bad_records", _policy),
    ("--model_name_or_path",): ("tokenizer", str),
}


def build_parser(prog: str = "conversation_func.py") -> tuple[argparse.ArgumentParser, list[str]]:
    ap = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    meta = {f.name: f.metadata for f in dataclasses.fields(InspectConfig)}
    ap.add_argument("data_path", help=meta["data_path"]["help"])
    names = add_config_arguments(ap, InspectConfig, skip=("data_path",))
    choices = {a.dest: a.choices for a in ap._actions}
    for flags, (dest, conv) in LEGACY_FLAGS.items():
        ap.add_argument(*flags, dest=dest, type=conv, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                        choices=choices.get(dest) if conv is str else None)
    return ap, names


def inspect(cfg: InspectConfig) -> int:
    """Tokenise cfg.data_path as the trainer would; print DataStats, token counts and highlighted examples."""
    from sftbench.model.chat_template import template_from_flag
    from sftbench.data.build import build_examples
    from sftbench.data.masking import IGNORE_INDEX, highlight
    from sftbench.data.tokenizer import load_tokenizer

    template = template_from_flag(cfg.chat_template)
    tok = load_tokenizer(cfg.tokenizer)
    examples, stats = build_examples(
        cfg.data_path, tok, max_length=cfg.model_max_length, max_rounds=cfg.max_rounds, mode=cfg.masking,
        truncation_side=cfg.truncation_side, chat_template=template,
        on_bad_record="skip" if cfg.skip_bad_records else "error", special_tokens=cfg.special_tokens_in_content,
    )
    if stats.records == 0:
        raise UserError(f"{cfg.data_path}: no records (an empty file?). Each line should hold one "
                        f"{{\"messages\": [...]}} object.")
    print(json.dumps(stats.as_dict(), indent=2))
    n_tok = sum(len(e["input_ids"]) for e in examples)
    n_tgt = sum(sum(1 for x in e["labels"][1:] if x != IGNORE_INDEX) for e in examples)
    print(f"tokens: {n_tok}, supervised targets: {n_tgt} ({100.0 * n_tgt / max(n_tok, 1):.1f}%)")
    for e in examples[cfg.index : cfg.index + max(cfg.show, 0)]:
        print("-" * 80)
        print(f"{len(e['input_ids'])} tokens, trained tokens in [[ ]]:")
        print(highlight(e["input_ids"], e["labels"], tok))
    return 0


def main(argv: list[str] | None = None, prog: str = "conversation_func.py") -> int:
    ap, names = build_parser(prog)
    ns = ap.parse_args(argv)
    cfg = config_from_namespace(InspectConfig, ns, names, data_path=ns.data_path)
    try:
        return inspect(cfg)
    except UserError as e:
        from sftbench.core.errors import exit_with_user_error

        exit_with_user_error(e, ap.prog)
