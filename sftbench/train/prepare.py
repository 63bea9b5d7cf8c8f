"""What the trainer does to the records before the data stage tokenises them (issue 13).

1. The contamination guard, always: every training example whose user text shares a 13-word n-gram with an
   IFEval or IFBench prompt (sftbench/data/contamination.py) is counted, listed in OUT/contamination.json and dropped
   unless --keep_contaminated.  The prompts are the ones shipped in sftbench/tasks/prompts/ (no network).
2. --augment_fraction F > 0: verifiable constraints added to a share of the conversations (sftbench/data/augment.py),
   cached in the tokenised-data cache folder (augment-<key>.jsonl); stats in OUT/augment_stats.json.

When either changes the records, the data stage reads a content-addressed JSONL of them instead of
--data_path, so the tokenised cache key (which hashes the data file's name and bytes) includes the
augmentation's cache key.  Untouched data is read from --data_path as before (same cache key as ever).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sftbench.config.train import TrainConfig
from sftbench.core.io import atomic_write_json, atomic_write_jsonl
from sftbench.data.augment import augment_cached, cache_key
from sftbench.data.build import DataStats, normalise_all
from sftbench.data.contamination import DEFAULT_N, drop_contaminated, find_contaminated
from sftbench.data.contamination import installed_prompts as read_installed_prompts
from sftbench.data.normalise import rounds_limit, truncate_rounds
from sftbench.data.records import Loaded, read_records
from sftbench.model.offline import resolve_model_path
from sftbench.train.dist import Dist, log


@dataclass
class Prepared:
    """data_path: what the data stage reads; reports: {file name in OUT: JSON object} for open_run_dir."""

    data_path: str
    reports: dict = field(default_factory=dict)
    tmp_dir: str | None = None

    def done(self) -> None:
        """Remove the temporary copy (only made when the tokenised cache is off)."""
        if self.tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None


def augment_config(cfg: TrainConfig, model_path: str | None):
    """The trainer's AugmentConfig (cfg.augment), its `model` the starting model for --augment_targets self."""
    return dataclasses.replace(cfg.augment, model=model_path if cfg.augment.targets == "self" else None)


def checked_augment_config(cfg: TrainConfig, model_path: str | None = None):
    """augment_config, validated; its errors name the trainer's --augment_* flags."""
    acfg = augment_config(cfg, model_path or _resolved(cfg))
    acfg.check(prefix="augment_")
    return acfg


@functools.lru_cache(maxsize=1)
def installed_prompts() -> dict[str, dict]:
    """sftbench.data.contamination.installed_prompts, once per process (a recipe search trains many runs in one)."""
    return read_installed_prompts(log=lambda m: print(f"[train] {m}", flush=True))


def read_conversations(cfg: TrainConfig, loaded: Loaded) -> tuple[list[dict], str, dict]:
    """([{"messages": [...]}] normalised, the data fingerprint, bad records skipped by reason) of the records
    read once at the start (read_records(lenient=True): every bad line counted, then the policy)."""
    policy = "skip" if cfg.skip_bad_records else "error"
    stats = DataStats()
    convs = normalise_all(loaded, policy, stats)
    return [{"messages": m} for m in convs], loaded.fingerprint, stats.skipped_bad


def guard(records: list[dict], keep: bool, d: Dist) -> tuple[list[dict], dict]:
    """(records left, the OUT/contamination.json report)."""
    t0 = time.monotonic()
    prompts = installed_prompts()
    hits = find_contaminated(records, prompts)
    bad = sorted({h[0] for h in hits})
    sizes = {b: len(v) for b, v in prompts.items()}
    report = {"n": DEFAULT_N, "prompts_checked": sizes, "records": len(records), "contaminated": len(bad),
              "dropped": 0 if keep else len(bad), "kept_by_flag": bool(keep and bad),
              "hits": [{"record": i + 1, "benchmark": b, "key": k, "ngram": g} for i, b, k, g in hits],
              "seconds": round(time.monotonic() - t0, 3)}
    what = "kept (--keep_contaminated)" if keep else "dropped (--keep_contaminated True keeps them)"
    log(d, f"contamination guard: {len(bad)} of {len(records)} examples share a {DEFAULT_N}-word n-gram with a "
           f"benchmark prompt ({', '.join(f'{b} {n}' for b, n in sizes.items())} prompts checked, "
           f"{report['seconds']} s)" + (f"; {what}; list in OUT/contamination.json" if bad else ""))
    return (records if keep else drop_contaminated(records, hits)), report


def _resolved(cfg: TrainConfig) -> str | None:
    """The starting model's local path, for --augment_targets self only (else unused)."""
    if cfg.augment_targets != "self":
        return None
    return resolve_model_path(cfg.model_name_or_path)


def _cache_dir(cfg: TrainConfig) -> str | None:
    cache = cfg.data.cache_dir()
    return None if cache is None else str(cache)


def prepare_data(cfg: TrainConfig, d: Dist, model_path: str | None = None, loaded: Loaded | None = None) -> Prepared:
    """Guard (and augment) the records; the path the data stage reads and the reports for the run directory.
    loaded: cfg.data_path's records when read already (read here otherwise)."""
    acfg = checked_augment_config(cfg, model_path) if cfg.augment_fraction > 0 else None
    if loaded is None:
        loaded = read_records(cfg.data_path, lenient=True)
    records, fingerprint, skipped = read_conversations(cfg, loaded)
    records, contamination = guard(records, cfg.keep_contaminated, d)
    prep = Prepared(cfg.data_path, {"contamination.json": contamination})
    dropped = contamination["dropped"] > 0
    if not dropped and cfg.augment_fraction <= 0:
        return prep
    if skipped:
        log(d, f"bad records skipped before the guard: {json.dumps(skipped, sort_keys=True)}")
    cache = _cache_dir(cfg)
    if cache is None:
        prep.tmp_dir = cache = tempfile.mkdtemp(prefix="sftbench-data-")
    Path(cache).mkdir(parents=True, exist_ok=True)
    dropped_ids = [h["record"] for h in contamination["hits"]] if dropped else []
    fingerprint = f"{fingerprint}:dropped={sorted(set(dropped_ids))}"
    if cfg.augment_fraction > 0:
        # the augmented turn is the last one kept: cut to --max_rounds first, or the data stage would cut it off
        keep_rounds = rounds_limit(cfg.max_rounds)
        records = [{"messages": truncate_rounds(r["messages"], keep_rounds)} for r in records]
        prep.data_path, prep.reports["augment_stats.json"] = augment(
            records, acfg, f"{fingerprint}:rounds={keep_rounds}",
            cache, d)
        return prep
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    path = Path(cache) / f"decontaminated-{key}.jsonl"
    if not path.is_file():
        atomic_write_jsonl(path, records)
    prep.data_path = str(path)
    return prep


def augment(records: list[dict], acfg, fingerprint: str, cache: str, d: Dist) -> tuple[str, dict]:
    """(the augmented JSONL the data stage reads, the OUT/augment_stats.json report)."""
    out, stats, hit = augment_cached(records, acfg, fingerprint, cache, log=lambda m: log(d, m))
    key = cache_key(fingerprint, acfg)[:16]
    report = {**stats.as_dict(), "config": {k: v for k, v in vars(acfg).items()}, "cache_key": key, "cache_hit": hit}
    variants = f", {stats.kept} records: up to {stats.variants} variants each" if stats.variants > 1 else ""
    log(d, f"augmentation ({'cached' if hit else f'{stats.seconds} s'}): {stats.conversations} of {stats.records} "
           f"conversations got constraints ({stats.selected} selected{variants}; dropped "
           f"{json.dumps(stats.dropped, sort_keys=True)}); "
           f"held out: {', '.join(stats.held_out) or 'none'}")
    return str(Path(cache) / f"augment-{key}.jsonl"), report


def write_reports(out: Path, prep: Prepared | None) -> None:
    """OUT/contamination.json and OUT/augment_stats.json (rank 0, once the run directory is opened)."""
    for name, obj in (prep.reports if prep else {}).items():
        atomic_write_json(out / name, obj)
