"""The data stage end to end: a data path -> [{"input_ids", "labels"}] and the counts for the training log.

records (sftbench.data.records) -> normalised messages, all validated before any tokenising
(sftbench.data.normalise) -> the first `max_rounds` rounds -> rendered, tokenised once with character offsets,
masked and truncated (sftbench.data.masking); examples left with no target are dropped and counted.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from sftbench.data import cache as _cache
from sftbench.data import masking
from sftbench.data.normalise import normalize_messages, rounds_limit, truncate_rounds
from sftbench.data.records import BadRecord, Loaded, apply_bad_record_policy, check_bad_record_policy, read_records, where_of
from sftbench.core.errors import UserError

ENCODE_BATCH = 256  # tokenise in batches: the fast tokenizer's batch call is several times faster per text


@dataclass
class DataStats:
    """Counts reported in the training log.

    records: records read (good and bad).  examples: examples returned.
    dropped_no_target: examples with no trainable token left after truncation (not returned).
    truncated: examples longer than max_length (cut).  rounds_cut: conversations shortened by max_rounds.
    skipped_bad: bad records skipped (on_bad_record="skip"), by reason.
    normalised: conversations trained after a documented adjustment, by kind (docs/GUARANTEES.md):
      "merged_user_turns" (consecutive user turns merged into one), "special_token_text" (a content holds a
      special token's text, such as "<|im_end|>", and was tokenised as plain text).  Left out of as_dict() when
      empty.
    """

    records: int = 0
    examples: int = 0
    dropped_no_target: int = 0
    truncated: int = 0
    rounds_cut: int = 0
    skipped_bad: dict[str, int] = field(default_factory=dict)
    normalised: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        if not d["normalised"]:
            del d["normalised"]
        return d


def check_options(mode: str, truncation_side: str, on_bad_record: str, max_length: int | None,
                  special_tokens: str = "text") -> None:
    """UserError for a setting no data could satisfy (before anything is read)."""
    masking.check_mode(mode)
    masking.check_special_token_policy(special_tokens)
    masking.check_truncation_side(truncation_side)
    check_bad_record_policy(on_bad_record)
    if max_length is None or max_length <= 1:
        raise UserError(f"max_length must be at least 2, got {max_length}.")


def check_special_text(msgs: list[dict], where: str, specials: list[str], policy: str, stats: DataStats) -> None:
    """A content holding a special token's text: BadRecord (policy "refuse"), else counted (tokenised as text)."""
    hit = masking.special_in_content(msgs, specials)
    if hit is None:
        return
    if policy == "refuse":
        raise BadRecord(f"{where}: turn {hit[0]} ({msgs[hit[0] - 1]['role']}) contains the text {hit[1]!r} of a special "
                        f"token. Remove it, or pass --special_tokens_in_content text to train it as plain text.",
                        "special_token_in_content")
    stats.normalised["special_token_text"] = stats.normalised.get("special_token_text", 0) + 1


def normalise_all(loaded: Loaded, on_bad_record: str, stats: DataStats, specials: list[str] | None = None,
                  special_tokens: str = "text") -> list[list[dict]]:
    """Every record's messages; bad records raise (on_bad_record="error") or are counted in stats.skipped_bad.

    Conversations adjusted on the way (merged user turns, special-token text) are counted in stats.normalised."""
    bad = list(loaded.bad)
    convs: list[list[dict]] = []
    for source, idx, rec in loaded.records:
        where = where_of(source, idx)
        try:
            counts: dict[str, int] = {}
            msgs = normalize_messages(rec, where, counts)
            check_special_text(msgs, where, specials or [], special_tokens, stats)
            convs.append(msgs)
            for k, v in counts.items():
                stats.normalised[k] = stats.normalised.get(k, 0) + v
        except BadRecord as e:
            bad.append(e)
    stats.skipped_bad.update(apply_bad_record_policy(bad, on_bad_record))
    return convs


@dataclass
class _Masker:
    """The settings that turn one conversation into one example."""

    tokenizer: object
    template: str
    mode: str
    max_length: int
    truncation_side: str
    max_rounds: int | None

    def batch(self, convs: list[list[dict]], stats: DataStats) -> list[dict]:
        chunk = []
        for msgs in convs:
            cut = truncate_rounds(msgs, self.max_rounds)
            stats.rounds_cut += len(cut) < len(msgs)
            chunk.append(cut)
        rendered = [masking.char_spans(m, self.tokenizer, self.template, self.mode) for m in chunk]
        literal = [masking.literal_spans(text, m, self.tokenizer, self.template) for m, (text, _) in zip(chunk, rendered)]
        encoded = masking.encode(self.tokenizer, [text for text, _ in rendered], literal)
        out = []
        for msgs, (_, spans), (ids, offs) in zip(chunk, rendered, encoded):
            ex = self.fit(msgs, ids, masking.labels_from_offsets(ids, offs, spans), stats)
            if ex is not None:
                out.append(ex)
        return out

    def fit(self, msgs: list[dict], ids: list[int], labels: list[int], stats: DataStats) -> dict | None:
        """Truncate one example to max_length; None (counted) when no target is left."""
        if len(ids) > self.max_length:
            stats.truncated += 1
            if self.truncation_side == "rounds":
                ids, labels = masking.fit_rounds(msgs, self.tokenizer, self.template, self.mode, self.max_length)
            ids, labels = masking.truncate_example(ids, labels, self.max_length, self.truncation_side)
        if not masking.has_target(labels):
            stats.dropped_no_target += 1
            return None
        return {"input_ids": ids, "labels": labels}


def _progress_bar(total: int, progress: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="tokenizing", unit="conv", disable=not progress, file=sys.stderr)


def mask_all(convs: list[list[dict]], masker: _Masker, stats: DataStats, progress: bool) -> list[dict]:
    bar = _progress_bar(len(convs), progress)
    examples: list[dict] = []
    for b0 in range(0, len(convs), ENCODE_BATCH):
        examples.extend(masker.batch(convs[b0 : b0 + ENCODE_BATCH], stats))
        if bar:
            bar.update(len(convs[b0 : b0 + ENCODE_BATCH]))
    if bar:
        bar.close()
    return examples


def _cached(path, key) -> tuple[list[dict], DataStats] | None:
    hit = _cache.read_cache(path, key)
    if hit is None:
        return None
    try:
        return hit[0], DataStats(**hit[1])
    except TypeError:  # written by a version with other counters: rebuild
        return None


def build_examples(
    data_path: str,
    tokenizer,
    *,
    max_length: int,
    max_rounds: int | None,
    mode: str = "assistant",
    truncation_side: str = "right",
    chat_template: str | None = None,
    on_bad_record: str = "error",
    special_tokens: str = "text",
    cache_dir: str | None = None,
    progress: bool = True,
    loaded: Loaded | None = None,
) -> tuple[list[dict], DataStats]:
    """Load, validate (all records, before any tokenising), render, mask and truncate a data set.

    Returns ([{"input_ids": list[int], "labels": list[int]}], DataStats).  Examples with no trainable token after
    truncation are dropped and counted in stats.dropped_no_target.  max_rounds: ALL_ROUNDS (-1; also None or 0)
    keeps every round.  on_bad_record="error" raises a UserError for the first bad record (saying how many there
    are); "skip" counts them in stats.skipped_bad[reason].
    truncation_side: "right" (keep the start), "left" (keep the end), or "rounds" (drop whole trailing rounds
    until the conversation fits; cut on the right only when even the first round is too long).
    special_tokens: a content holding a special token's text ("<|im_end|>", ...) is tokenised as plain text
    ("text", counted in stats.normalised["special_token_text"]) or is a bad record ("refuse").
    Consecutive user turns are merged (counted); a system message after the first turn, or an assistant turn
    before any user turn, is a bad record (normalise.check_order).
    With cache_dir, the result is stored as JSONL keyed by a sha256 of everything that determines it.
    loaded: read_records(data_path, lenient=True) when the caller has read it already (a training start reads
    the data file once).
    """
    check_options(mode, truncation_side, on_bad_record, max_length, special_tokens)
    if loaded is None:
        loaded = read_records(data_path, lenient=True)  # every bad line is counted; the policy decides below
    template = masking.resolve_template(tokenizer, chat_template, mode)
    path = key = None
    if cache_dir:
        key = _cache.cache_key(
            loaded.fingerprint, tokenizer, template, max_length=max_length, max_rounds=rounds_limit(max_rounds),
            mode=mode, truncation_side=truncation_side, on_bad_record=on_bad_record, special_tokens=special_tokens,
        )
        path = _cache.cache_path(cache_dir, key)
        hit = _cached(path, key)
        if hit is not None:
            return hit
    stats = DataStats(records=len(loaded.records) + len(loaded.bad))
    convs = normalise_all(loaded, on_bad_record, stats, masking.special_strings(tokenizer), special_tokens)
    masker = _Masker(tokenizer, template, mode, max_length, truncation_side, max_rounds)
    examples = mask_all(convs, masker, stats, progress)
    stats.examples = len(examples)
    if path is not None:
        _cache.write_cache(path, key, examples, stats.as_dict())
    return examples, stats
