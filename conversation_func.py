"""Conversations -> (input_ids, labels) for supervised fine-tuning: the homework-compatible entry point.

The work is done in sftbench/data/, one module per step:
  records.py    records (JSONL / JSON / a folder / a HF dataset id), file:line, the bad-record policy
  normalise.py  -> [{"role": "system"|"user"|"assistant", "content": str}] (all validated first),
                   the first `max_rounds` user->assistant rounds (ALL_ROUNDS = -1 keeps all)
  masking.py    rendered with a chat template, tokenised once with character offsets, labels = -100 except
                the supervised tokens ("assistant" or the homework's "homework" mode), truncated to max_length
  build.py      the whole stage (build_examples, DataStats); cache.py: the tokenised-data cache
  collate.py    right-padded batches; cli.py: this file's command line
(load_tokenizer and the chat template: sftbench/model/hf.py and chat_template.py)

Run `python conversation_func.py --help` to tokenise a file and eyeball the mask (defaults: the trainer's).
"""

from __future__ import annotations

from sftbench.model.chat_template import HOMEWORK_CHATML, resolve_chat_template
from sftbench.data.build import DataStats, build_examples
from sftbench.data.cache import MASKING_VERSION, cache_key
from sftbench.data.collate import collate
from sftbench.data.masking import (
    IGNORE_INDEX,
    MODES,
    TRUNCATION_SIDES,
    has_target,
    highlight,
    render_and_mask,
    resolve_template,
    truncate_example,
)
from sftbench.data.normalise import ALL_ROUNDS, ROLE_ALIASES, normalize_messages, rounds_limit, truncate_rounds
from sftbench.data.records import CONVERSATION_KEYS, DATA_SUFFIXES, BadRecord, load_records, where_of
from sftbench.model.hf import load_tokenizer

__all__ = [
    "ALL_ROUNDS", "BadRecord", "CONVERSATION_KEYS", "DATA_SUFFIXES", "DataStats", "HOMEWORK_CHATML", "IGNORE_INDEX",
    "MASKING_VERSION", "MODES", "ROLE_ALIASES", "TRUNCATION_SIDES", "build_examples", "cache_key", "collate",
    "has_target", "highlight", "load_records", "load_tokenizer", "main", "normalize_messages", "render_and_mask",
    "resolve_chat_template", "resolve_template", "rounds_limit", "truncate_example", "truncate_rounds", "where_of",
]


def main(argv: list[str] | None = None) -> int:
    """The command line (sftbench.data.cli): tokenise DATA as training will and show the mask."""
    from sftbench.data.cli import main as cli_main

    return cli_main(argv, prog="conversation_func.py")


if __name__ == "__main__":
    raise SystemExit(main())
