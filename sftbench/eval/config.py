"""The typed configs of the eval stage: one IFEval evaluation (EvalConfig) and a sweep's own options
(SweepConfig).  Every default is written here once; the CLIs of sftbench/eval/run.py and sftbench/eval/sweep.py are
generated from these fields by sftbench/core/cli.py, and other stages read defaults with
`sftbench.core.cli.config_defaults(EvalConfig)`.  No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from sftbench.core.cli import setting


@dataclass
class EvalConfig:
    """All options of one IFEval evaluation (the CLI is generated from these fields)."""

    benchmark: Literal["ifeval", "ifbench"] = setting(
        "ifeval", "`ifeval` (Google's 541 prompts, lm-eval's checkers) or `ifbench` (Allen AI's 294 IFBench test "
                  "prompts, 58 other constraint types; prompts whose checkers need NLTK data that is not installed "
                  "are dropped before generation and listed in summary.json).")
    subset: Literal["full", "hw100"] = setting(
        "full", "IFEval prompt set: `full` (541 prompts) or `hw100` (the homework's 100-prompt sample).")
    data: Optional[str] = setting(
        None, "A local IFEval jsonl (Google's input_data.jsonl format), or `tiny` for the 6-prompt set of the tests. "
              "Default: $SFTBENCH_IFEVAL_DATA, else the hub's google/IFEval when reachable, else the 541 prompts "
              "shipped in sftbench/tasks/prompts/ (offline). With --benchmark ifbench: an IFBench jsonl (default "
              "$SFTBENCH_IFBENCH_DATA, else its shipped copy); a sweep's IFBench always takes that default.")
    limit: Optional[int] = setting(None, "Evaluate only the first N prompts (smoke tests; scores are then not comparable).")
    max_new_tokens: int = setting(1280, "Generation cap per answer (the default is lm-eval's; 1024 reproduces the homework).")
    batch_size: Optional[int] = setting(
        None, "Prompts decoded together. Default: hf backend 64 on a GPU, 8 on CPU (prompts sorted by length); fast "
              "backend: as many decode slots as fit the memory budget (continuous batching). Greedy scores can move "
              "with batch size and padding: keep it fixed across a sweep; it is recorded.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", "Model weights dtype for generation: auto = bf16 on a GPU with bf16 (fp16 otherwise), fp32 on CPU.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    backend: Literal["auto", "fast", "hf"] = setting(
        "auto", "Generator: `fast` (sftbench/engine/fast_generate.py, CUDA) or `hf` (transformers model.generate). "
                "auto = fast on CUDA when available, hf on CPU.")
    chat_template: Optional[str] = setting(
        None, "`model` (default): the tokenizer's own, or plain ChatML when it has none (said in the log, recorded in "
              "summary.json as `chatml (tokenizer has none)`), as training does; `plain` / `plain_chatml`: ChatML "
              "without a system prompt; `homework`: the homework's; or a Jinja template file.")
    system_prompt: str = setting(
        "default", "`default`: only the user turn, the template decides (SmolLM2-Instruct's injects its SmolLM "
                   "system prompt); `none`: no system turn at all; any other text: used as the system message.")
    seed: int = setting(0, "Seed for the checkers' random choices (keys 1122, 1129) and the bootstrap CIs.")
    memory_cap_gib: Optional[float] = setting(
        None, "Cap device memory (NVML total, GiB) by limiting torch's allocator, e.g. 7.5 to emulate an 8 GB GPU.")
    score_only: Optional[str] = setting(
        None, "Score an existing responses.jsonl (ours, or Google's {prompt, response} format) without a model; "
              "MODEL may then be omitted.")


@dataclass
class SweepConfig:
    """A sweep's own options (sftbench/eval/sweep.py); the eval options come from EvalConfig."""

    include_base: Optional[str] = setting(
        None, "also evaluate the starting model as step 0; without PATH, the model_name_or_path recorded in "
              "RUN_DIR/sft_config.json", cli=False)  # `--include_base [PATH]`: an optional value, added by the sweep
    watch: bool = setting(
        False, "keep polling RUN_DIR and evaluate checkpoints as training writes them; stops when the final model "
               "appears and is evaluated and no trainer holds RUN_DIR's lock (a run being extended is followed), "
               "or after --watch_timeout")
    poll_s: float = setting(30.0, "seconds between polls with --watch")
    watch_timeout: Optional[float] = setting(
        None, "stop watching after this many seconds (default: wait for the final model)")
    force: bool = setting(False, "re-evaluate checkpoints that already have results (needed when the settings changed)")
    dry_run: bool = setting(False, "list what would be evaluated or skipped, then exit")
    benchmarks: str = setting(
        "ifeval", "comma-separated benchmarks to run on every checkpoint, in one process with the generator reused: "
                  "ifeval (results in RESULTS_DIR/), ifbench (results in RESULTS_DIR/ifbench/), or ifeval,ifbench")
