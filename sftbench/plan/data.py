"""How much data a run sees: conversations counted in a chat file, tokens estimated by chars/4."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sftbench.core.errors import UserError

@dataclass
class DataSize:
    examples: int
    avg_tokens: float     # per conversation, before truncation
    source: str


def _record_chars(rec) -> tuple[int, int]:
    """(characters of text, number of turns) in one chat record."""
    if isinstance(rec, dict):
        msgs = rec.get("messages") or rec.get("conversations")
        if isinstance(msgs, list):
            chars = 0
            for m in msgs:
                if isinstance(m, dict):
                    c = m.get("content", m.get("value", ""))
                    chars += len(c) if isinstance(c, str) else len(json.dumps(c))
            return chars, len(msgs)
        return sum(len(v) for v in rec.values() if isinstance(v, str)), 1
    return len(json.dumps(rec)), 1


def measure_data(data: str, avg_tokens: float | None = None) -> DataSize:
    """--data_path: an integer N (conversations) or a .jsonl/.json file (counted; tokens ~ chars/4 + 5 per turn)."""
    s = str(data).strip()
    if re.fullmatch(r"\d+", s):
        n = int(s)
        if n < 1:
            raise UserError("--data_path: the number of examples must be >= 1.")
        return DataSize(n, float(avg_tokens or 512), f"{n} examples (given)")
    p = Path(s).expanduser()
    repo_p = Path(__file__).resolve().parents[2] / p
    if not p.exists() and not p.is_absolute() and repo_p.exists():
        p = repo_p  # e.g. the default data/demo_chat.jsonl when run from outside the repository
    if not p.exists():
        raise UserError(f"--data_path {s}: no such file, and not a number of examples. Give a .jsonl/.json chat file or an integer.")
    if p.is_dir():
        raise UserError(f"--data_path {p}: is a directory; give one .jsonl/.json file or a number of examples.")
    chars = turns = 0
    if p.suffix == ".json":
        from sftbench.core.io import read_json

        obj = read_json(p)
        recs = obj if isinstance(obj, list) else obj.get("data", obj.get("train", [])) if isinstance(obj, dict) else []
        if not isinstance(recs, list) or not recs:
            raise UserError(f"{p}: expected a JSON list of chat records.")
        for r in recs:
            c, t = _record_chars(r)
            chars, turns = chars + c, turns + t
        n = len(recs)
    else:
        from sftbench.core.io import iter_jsonl

        n = 0
        for _, r in iter_jsonl(p):
            c, t = _record_chars(r)
            chars, turns, n = chars + c, turns + t, n + 1
        if n == 0:
            raise UserError(f"{p}: no records (empty file).")
    est = (chars / 4 + 5 * turns) / n  # ~4 characters per token; <|im_start|>role\n ... <|im_end|>\n per turn
    return DataSize(n, float(avg_tokens) if avg_tokens else est,
                    f"{p} ({n} records, ~{est:.0f} tokens each by chars/4" + (f"; --avg_tokens {avg_tokens} used)" if avg_tokens else ")"))
