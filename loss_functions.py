"""The homework's loss module: masked token cross-entropy, normalised over the whole accumulation window.

A thin, homework-compatible layer: every cross-entropy of the project lives in `sftbench/loss.py` (why sums
and one divisor, shapes, the chunked and fused variants); this file keeps the names the homework imports.

Labels use -100 for "not a target" and are shifted inside: logits[:, t] predict labels[:, t + 1].
"""

from __future__ import annotations

from sftbench.loss import (  # noqa: F401  (re-exported)
    IGNORE_INDEX,
    CausalLMLossSum,
    chunked_ce_sum,
    count_targets,
    fused_linear_ce_sum,
    masked_ce_sum,
    normalized_loss,
    packed_ce_sum,
)

__all__ = ["IGNORE_INDEX", "CausalLMLossSum", "chunked_ce_sum", "count_targets", "fused_linear_ce_sum",
           "masked_ce_sum", "normalized_loss", "packed_ce_sum"]
