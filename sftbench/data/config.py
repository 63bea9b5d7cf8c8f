"""The data stage's settings: what is read, how it is rendered, masked, cut and cached (one default, one help text
and one check per field).  The trainer composes DataConfig (TrainConfig.data, flags unprefixed: `--masking`, ...)
and `python conversation_func.py` composes it too, so both read a data set the same way unless a flag says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sftbench.core.cli import setting
from sftbench.core.errors import UserError
from sftbench.data.demo import DEMO_DATA

# The tokenised-data cache when --data_cache_dir is not given (`none` disables it).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "sftbench" / "tokenized"


@dataclass
class DataConfig:
    data_path: str = setting(
        str(DEMO_DATA),
        "Chat data: a .jsonl/.json file, a directory of them, or a hub dataset id (e.g. PeterV09/smol-smoltalk-6k). "
        "Records hold `messages` or `conversations` ({role, content} or ShareGPT {from, value}). Default: the demo "
        "set shipped in the package (sftbench/data/demo_chat.jsonl), found from any directory.")
    model_max_length: int = setting(
        1024, "Maximum tokens per conversation; longer ones are truncated (see --truncation_side).")
    max_rounds: int = setting(
        6, "Keep the leading system message and the first N user->assistant rounds (-1 = all).")
    truncation_side: str = setting(
        "right", "Cut tokens from the right (end) or left (start) of an over-long conversation, or `rounds`: drop "
        "whole trailing rounds until it fits (never half a turn).", choices=["right", "left", "rounds"])
    masking: str = setting(
        "assistant", "Which tokens carry loss: `assistant` (assistant content + <|im_end|>; recommended) or "
        "`homework` (reproduces the COMP4901B homework's labels exactly, header and newline included).",
        choices=["assistant", "homework"])
    chat_template: Optional[str] = setting(
        None, "Path to a Jinja chat template to use instead of the tokenizer's (plain ChatML is used when the "
        "tokenizer has none).")
    skip_bad_records: bool = setting(False, "Skip and count malformed records instead of stopping with an error.")
    data_cache_dir: Optional[str] = setting(
        None, "Where tokenised data is cached as JSONL (default ~/.cache/sftbench/tokenized; `none` disables).",
        none_is_text=True)
    special_tokens_in_content: str = setting(
        "text", "A message content holding a special token's text (e.g. `<|im_end|>`): `text` tokenises it as plain "
        "characters, never as the control token (counted in the data stats), `refuse` makes it a bad record (an "
        "error, or skipped and counted with --skip_bad_records).", choices=["text", "refuse"])
    keep_contaminated: bool = setting(
        False, "Keep training examples whose user text shares a 13-word n-gram with an IFEval or IFBench prompt (the "
        "start-up guard counts them, writes OUT/contamination.json and drops them unless this is set).")

    def cache_dir(self) -> Optional[Path]:
        """The tokenised-data cache folder, or None when --data_cache_dir is `none`."""
        if (self.data_cache_dir or "").lower() == "none":
            return None
        return Path(self.data_cache_dir).expanduser() if self.data_cache_dir else DEFAULT_CACHE_DIR

    def check(self, prefix: str = "") -> None:
        """UserError naming the flag (`--{prefix}{field}`) for a value no run can use."""
        if self.model_max_length < 1:
            raise UserError(f"--{prefix}model_max_length must be >= 1 (got {self.model_max_length}).")
        cache = self.cache_dir()
        if cache is not None:
            # the first existing folder on the way must be a folder: else mkdir fails mid-start with a traceback
            for p in (cache, *cache.parents):
                if p.exists():
                    if not p.is_dir():
                        what = "is" if p == cache else f"lies under {p}, which is"
                        raise UserError(f"--{prefix}data_cache_dir {self.data_cache_dir}: {what} an existing file, "
                                        f"not a folder. Give a folder for the tokenised-data cache (it is created "
                                        f"if missing), or `none` to disable the cache.")
                    break
