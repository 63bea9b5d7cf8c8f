"""Normalising records: one validated list of {"role", "content"} messages, cut to its first rounds.

"All rounds" has one spelling, ALL_ROUNDS (-1, the trainer's `--max_rounds -1`); `rounds_limit` is the one
place that reads a max_rounds value and also accepts the legacy spellings None and 0 (and any negative).
"""

from __future__ import annotations

from sftbench.data.records import CONVERSATION_KEYS, BadRecord

ALL_ROUNDS = -1

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


def _turns(record, where: str) -> list:
    """The record's list of turns (under "messages" or "conversations"), or BadRecord."""
    if not isinstance(record, dict):
        raise BadRecord(f"{where}: expected a JSON object with a \"messages\" list, found {type(record).__name__}.", "not_an_object")
    key = next((k for k in CONVERSATION_KEYS if k in record), None)
    if key is None:
        raise BadRecord(
            f"{where}: no conversation found: a record needs a \"messages\" (or ShareGPT \"conversations\") list; "
            f"this one has keys {sorted(record)[:8]}.",
            "no_conversation",
        )
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise BadRecord(f"{where}: \"{key}\" must be a non-empty list of turns, found {type(turns).__name__ if not isinstance(turns, list) else 'an empty list'}.", "no_conversation")
    return turns


def _role(turn: dict, raw_role, where: str, t_i: int) -> str:
    if raw_role is None:
        raise BadRecord(f"{where}: turn {t_i} has no \"role\" (or ShareGPT \"from\"); keys: {sorted(turn)[:8]}.", "bad_turn")
    role = ROLE_ALIASES.get(str(raw_role).strip().lower()) if isinstance(raw_role, str) else None
    if role is None:
        raise BadRecord(
            f"{where}: turn {t_i} has unknown role {raw_role!r}. Known roles: {', '.join(sorted(ROLE_ALIASES))} "
            f"(case-insensitive).",
            "unknown_role",
        )
    return role


def normalize_turn(turn, where: str, t_i: int) -> dict:
    """One turn ({"role", "content"} or ShareGPT {"from", "value"}) -> {"role", "content"}, or BadRecord."""
    if not isinstance(turn, dict):
        raise BadRecord(f"{where}: turn {t_i} must be an object with \"role\" and \"content\", found {type(turn).__name__}.", "bad_turn")
    role_key, content_key = ("role", "content") if ("role" in turn or "content" in turn) else ("from", "value")
    role = _role(turn, turn.get(role_key), where, t_i)
    content = turn.get(content_key)
    if not isinstance(content, str):
        got = "missing" if content is None and content_key not in turn else type(content).__name__
        raise BadRecord(
            f"{where}: turn {t_i} ({role}) \"{content_key}\" must be a string, found {got}. "
            f"(Lists of content parts are not supported; join them into one string.)",
            "non_string_content",
        )
    if not content.strip():
        raise BadRecord(f"{where}: turn {t_i} ({role}) has empty \"{content_key}\". Remove the turn or the record.", "empty_content")
    bad = lone_surrogate(content)
    if bad is not None:
        raise BadRecord(f"{where}: turn {t_i} ({role}) \"{content_key}\" is not valid Unicode: a lone surrogate "
                        f"\\u{ord(content[bad]):04x} at character {bad + 1} (half of a UTF-16 pair, written as a JSON "
                        f"escape). Fix or remove that text.", "invalid_unicode")
    return {"role": role, "content": content}


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate (U+D800..U+DFFF: `"\\ud800"` in JSON decodes to one, and no tokenizer or
    UTF-8 writer accepts it), or None.  The fast path is one encode."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def normalize_messages(record: dict, where: str, counts: dict[str, int] | None = None) -> list[dict]:
    """Validate one record and return [{"role": "system"|"user"|"assistant", "content": str}].

    The conversation is under "messages" or "conversations"; each turn is {"role", "content"} (OpenAI style)
    or {"from", "value"} (ShareGPT).  Roles are mapped through ROLE_ALIASES (case-insensitive).  Raises
    BadRecord (a UserError) naming `where` for: no conversation key, unknown role, empty or non-string
    content, no assistant turn, and the odd orders of `check_order` (a system message after the first turn,
    an assistant turn before any user turn).  Consecutive user turns are merged into one (joined by a blank
    line) and counted in counts["merged_user_turns"] (one per conversation).
    """
    out = [normalize_turn(turn, where, t_i) for t_i, turn in enumerate(_turns(record, where), start=1)]
    if not any(m["role"] == "assistant" for m in out):
        raise BadRecord(f"{where}: no assistant turn, so nothing to train on. Each conversation needs at least one assistant reply.", "no_assistant_turn")
    check_order(out, where)
    merged = merge_user_turns(out)
    if len(merged) < len(out) and counts is not None:
        counts["merged_user_turns"] = counts.get("merged_user_turns", 0) + 1
    return merged


def check_order(messages: list[dict], where: str) -> None:
    """BadRecord for a system message that is not the first turn, or an assistant turn before any user turn.

    Both are refused rather than guessed at: chat templates place (or reject) a mid-conversation system
    message differently, and a reply with no prompt teaches the model to talk unprompted."""
    for t_i, m in enumerate(messages, start=1):
        if m["role"] == "system" and t_i > 1:
            raise BadRecord(f"{where}: turn {t_i} is a system message after the first turn; a system message may only "
                            f"open a conversation. Move it to the start (or merge it into the first one), or remove the "
                            f"record.", "system_not_first")
    first = next(m for m in messages if m["role"] != "system")
    if first["role"] == "assistant":
        t_i = messages.index(first) + 1
        raise BadRecord(f"{where}: turn {t_i} is an assistant turn before any user turn (a reply with no prompt). "
                        f"Add the user turn it answers, or remove the record.", "starts_with_assistant")


def merge_user_turns(messages: list[dict]) -> list[dict]:
    """Consecutive user turns -> one user turn, contents joined by a blank line (a new list)."""
    out: list[dict] = []
    for m in messages:
        if out and m["role"] == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(dict(m))
    return out


def rounds_limit(max_rounds: int | None) -> int | None:
    """The number of rounds to keep, or None for all: ALL_ROUNDS (-1), None, 0 and any negative mean all."""
    if max_rounds is None or max_rounds <= 0:
        return None
    return int(max_rounds)


def round_starts(messages: list[dict]) -> list[int]:
    """Indices where user->assistant rounds start (each user message after the leading system message)."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def truncate_rounds(messages: list[dict], max_rounds: int | None) -> list[dict]:
    """Keep the leading system message (if any) and the first `max_rounds` user->assistant rounds.

    A round starts at a user message and runs until the next user message.  ALL_ROUNDS (-1) keeps everything,
    as do the legacy None and 0 (see rounds_limit).  Returns a new list; the input is not modified.
    """
    limit = rounds_limit(max_rounds)
    starts = round_starts(messages)
    if limit is None or len(starts) <= limit:
        return list(messages)
    return list(messages[: starts[limit]])
