"""`python conversation_func.py DATA`: tokenise a data set exactly as training will, print the counts and show
examples with the supervised tokens wrapped in [[ ]], to check the loss mask by eye.

The data settings are the trainer's own DataConfig (sftbench/data/config.py), composed here as in TrainConfig, so
this view and a training run agree unless a flag says otherwise.  The trainer's flag names are the only ones (the
earlier --max_length, --mode, --on_bad_record and dashed spellings are gone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass

from sftbench.core.cli import ArgumentParser, Composed, add_config_arguments, composed, config_from_namespace, section, setting
from sftbench.data.config import DataConfig
from sftbench.core.errors import UserError
from sftbench.model.offline import DEFAULT_MODEL


@composed
@dataclass
class InspectConfig(Composed):
    data: DataConfig = section(
        DataConfig, "data: read as the trainer reads it (the trainer's flags and defaults)",
        skip=("data_cache_dir", "keep_contaminated"),
        helps={"chat_template": "`model` or none (the tokenizer's own; plain ChatML when it has none), `plain` (ChatML, "
                                "no system prompt), `homework` (the homework's), or a Jinja template file."})
    tokenizer: str = setting(
        DEFAULT_MODEL, "`smollm2-135m-instruct-offline` (the real SmolLM2 tokenizer, offline), `tiny` (the test "
        "tokenizer), a model directory or a hub id (the trainer's --model_name_or_path default).")
    show: int = setting(1, "How many examples to print with the mask highlighted.")
    index: int = setting(0, "Index of the first example to show.")


def build_parser(prog: str = "conversation_func.py") -> tuple[argparse.ArgumentParser, list[str]]:
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("data_path", help=dataclasses.fields(DataConfig)[0].metadata["help"])
    names = add_config_arguments(ap, InspectConfig, skip=("data_path",))
    return ap, names


def inspect(cfg: InspectConfig) -> int:
    """Tokenise cfg.data_path as the trainer would; print DataStats, token counts and highlighted examples."""
    from sftbench.data.build import build_examples
    from sftbench.data.masking import IGNORE_INDEX, highlight
    from sftbench.model.hf import load_tokenizer

    # the trainer's tokenizer and template (sftbench.model.chat_template.resolve_chat_template), said the same way
    tok = load_tokenizer(cfg.tokenizer, cfg.chat_template, log=lambda m: print(m, file=sys.stderr))
    examples, stats = build_examples(
        cfg.data_path, tok, max_length=cfg.model_max_length, max_rounds=cfg.max_rounds, mode=cfg.masking,
        truncation_side=cfg.truncation_side,
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
