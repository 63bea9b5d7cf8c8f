"""IFEval prompt sets: where they come from, and their validation.

An IFEval file is JSONL, one prompt per line (Google's `input_data.jsonl` format):
    {"key": 1000, "prompt": "...", "instruction_id_list": ["punctuation:no_comma", ...], "kwargs": [{...}, ...]}
`kwargs` has one dict per instruction id.

Sources, first match wins (`load_prompt_set`):
  1. `--data PATH` (a local IFEval jsonl), or `--data tiny`: `sftbench/tasks/tiny_prompts.jsonl`, 6 prompts of our own
     with real instruction ids, for tests only (its scores mean nothing);
  2. the environment variable SFTBENCH_IFEVAL_DATA (a path);
  3. the hub dataset `google/IFEval` (only when the hub is reachable, or it is in the local HF cache);
  4. the 541 prompts shipped in `sftbench/tasks/prompts/ifeval_input_data.jsonl` (byte-identical to Google's
     input_data.jsonl, see sftbench/tasks/prompts/NOTICE; checked by sha256), so an offline install evaluates the real
     benchmark.  `../shared` is not consulted: it is the project's test data, not a user's install.
`--subset hw100` keeps the homework's 100 prompts (HW100_KEYS) of whatever full set was found.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sftbench.core.errors import UserError
from sftbench.core.io import iter_jsonl

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]  # the repository root (sftbench/tasks/data.py)
TINY_PROMPTS = HERE / "tiny_prompts.jsonl"
TINY = "tiny"  # --data tiny: the 6-prompt test set
ENV_VAR = "SFTBENCH_IFEVAL_DATA"
HUB_ID = "google/IFEval"

# The COMP4901B homework's 100-prompt sample of IFEval (its sampled_100_input_data.jsonl), by key.
HW100_KEYS = frozenset((
    122, 152, 164, 201, 286, 331, 340, 1021, 1129, 1130, 1132, 1139, 1153, 1162, 1187, 1203, 1248, 1258,
    1262, 1322, 1436, 1477, 1481, 1537, 1571, 1591, 1609, 1620, 1629, 1656, 1705, 1713, 1733, 1759, 1793,
    1802, 1857, 1883, 1939, 1967, 1996, 2010, 2023, 2041, 2063, 2107, 2216, 2230, 2243, 2247, 2266, 2273,
    2275, 2292, 2341, 2432, 2436, 2465, 2467, 2471, 2475, 2534, 2605, 2617, 2653, 2683, 2713, 2724, 2749,
    2780, 2798, 2801, 2817, 2820, 2825, 2829, 2870, 2921, 3071, 3188, 3224, 3245, 3263, 3280, 3281, 3323,
    3326, 3369, 3424, 3429, 3439, 3442, 3565, 3606, 3633, 3691, 3709, 3749, 3751, 3752,
))
SUBSETS = ("full", "hw100")


@dataclass
class Example:
    """One IFEval prompt.  kwargs: one dict per instruction id (None values allowed, as on the hub)."""

    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict] = field(default_factory=list)
    line: int | None = field(default=None, compare=False)  # line in its file, for error messages

    def to_json(self) -> dict:
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": list(self.instruction_id_list),
                "kwargs": [dict(k) for k in self.kwargs]}


@dataclass
class PromptSet:
    """The prompts of one evaluation and where they came from.  sha256: of the canonical rows."""

    examples: list[Example]
    source: str  # a file path or "hf://google/IFEval"
    subset: str
    sha256: str
    # prompts left out before generation (IFBench offline): results.DROPPED's {"count", "keys", "missing_nltk_data"}
    dropped: dict = field(default_factory=dict)

    @property
    def by_key(self) -> dict[int, Example]:
        return {e.key: e for e in self.examples}


def validate_row(obj, where: str) -> Example:
    """Check one parsed row; `where` = "file:line" for the error message."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with key, prompt, instruction_id_list, kwargs; got {type(obj).__name__}.")
    missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in obj]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}; every IFEval row needs key, prompt, "
                        f"instruction_id_list and kwargs.")
    key, prompt, ids, kwargs = obj["key"], obj["prompt"], obj["instruction_id_list"], obj["kwargs"]
    if isinstance(key, bool) or not isinstance(key, int):
        raise UserError(f"{where}: `key` must be an integer, got {key!r}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: `prompt` must be a non-empty string.")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and ":" in i for i in ids):
        raise UserError(f"{where}: `instruction_id_list` must be a non-empty list of ids such as \"punctuation:no_comma\".")
    if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
        raise UserError(f"{where}: `kwargs` must be a list of objects, one per instruction.")
    if len(kwargs) != len(ids):
        raise UserError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs objects; they must pair up.")
    return Example(key=key, prompt=prompt, instruction_id_list=list(ids), kwargs=[dict(k) for k in kwargs])


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read and validate an IFEval jsonl; UserError naming file and line on any problem."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the IFEval .jsonl file (e.g. input_data.jsonl).")
    out: list[Example] = []
    seen: dict[int, int] = {}
    for line, obj in iter_jsonl(path):
        ex = validate_row(obj, f"{path}:{line}")
        ex.line = line
        if ex.key in seen:
            raise UserError(f"{path}:{line}: duplicate key {ex.key} (first on line {seen[ex.key]}).")
        seen[ex.key] = line
        out.append(ex)
    if not out:
        raise UserError(f"{path}: no prompts in this file.")
    return out


def sha256_of(examples: list[Example]) -> str:
    """Hash of the canonical rows (sorted keys), so the same prompts hash alike whatever the file layout."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _hub_reachable(timeout: float = 2.0) -> bool:
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub(log=print) -> list[Example] | None:
    """google/IFEval from the hub (or the local HF cache); None when unavailable."""
    if not _hub_reachable():
        return None
    try:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, split="train")
    except Exception as e:  # the hub is optional: fall back to local files
        log(f"[ifeval] {HUB_ID} not loadable ({type(e).__name__}: {str(e)[:120]}); using local prompts")
        return None
    return [validate_row(dict(r), f"hf://{HUB_ID} row {i}") for i, r in enumerate(ds)]


def _resolve_path(p: str) -> Path:
    """A user path: as given (relative to the working directory), else relative to the repository root."""
    path = Path(p).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        return REPO / path
    return path


def _packaged() -> tuple[list[Example], str]:
    """The 541 shipped IFEval prompts (UserError when the file is missing or altered)."""
    from sftbench.tasks.prompts import IFEVAL_FILE, packaged_ifeval_path

    path = packaged_ifeval_path(verify=True)
    if path is None:
        raise UserError(f"{IFEVAL_FILE}: the shipped IFEval prompts are missing or altered (sha256 differs from "
                        f"Google's input_data.jsonl), and no other source was given: reinstall sftbench, pass "
                        f"--data input_data.jsonl or set {ENV_VAR}.")
    return load_jsonl(path), str(path)


def load_prompt_set(subset: str = "full", data_path: str | None = None, log=print, allow_hub: bool = True) -> PromptSet:
    """Resolve the source (see the module docstring), load, validate and take the subset."""
    if subset not in SUBSETS:
        raise UserError(f"--subset {subset!r}: choose one of {', '.join(SUBSETS)}.")
    examples: list[Example] | None = None
    source = None
    explicit = data_path or os.environ.get(ENV_VAR)
    if explicit == TINY:
        examples, source = load_jsonl(TINY_PROMPTS), str(TINY_PROMPTS)
        log(f"[ifeval] --data tiny: the {len(examples)}-prompt test set {TINY_PROMPTS.name}; its scores mean nothing")
        if subset == "hw100":
            raise UserError("--subset hw100 needs the IFEval prompts, not --data tiny: drop --data (the 541 shipped "
                            "prompts are used) or pass Google's input_data.jsonl.")
    elif explicit:
        path = _resolve_path(explicit)
        if not path.exists():
            origin = "--data" if data_path else ENV_VAR
            raise UserError(f"{path}: IFEval data file not found (from {origin}).")
        examples, source = load_jsonl(path), str(path.resolve())
    if examples is None and allow_hub:
        hub = load_hub(log)
        if hub is not None:
            examples, source = hub, f"hf://{HUB_ID}"
    if examples is None:
        examples, source = _packaged()
    if subset == "hw100":
        picked = [e for e in examples if e.key in HW100_KEYS]
        if len(picked) != len(HW100_KEYS):
            missing = sorted(HW100_KEYS - {e.key for e in picked})
            raise UserError(f"{source}: --subset hw100 needs the homework's 100 keys; {len(missing)} are missing "
                            f"(e.g. {missing[:5]}). Use the full IFEval file or --subset full.")
        examples = picked
    return PromptSet(examples=examples, source=source, subset=subset, sha256=sha256_of(examples))
