"""The one sampling function of the project (temperature, top-p, per-row seeds), used by the fast generator's
decode step and by the HF/CPU path (a logits processor), so both draw the same token from the same logits.

Randomness is counter-based: the noise of vocabulary entry v for a row is a hash of (the row's seed, the row's
generation step, v), computed with integer tensor ops.  So
- there is no RNG state: the function is a pure function of its inputs and can sit inside a captured CUDA graph;
- a row's tokens depend only on its own seed and logits, never on which other rows share the batch, nor on
  which slot it decodes in;
- the same (seed, step) on CPU and GPU gives the same noise.
A token is drawn with the Gumbel-max trick: argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T).
Rows with temperature 0 take argmax(logits) exactly.  Top-p (nucleus) keeps the smallest set of most likely
tokens whose probability reaches top_p (the most likely token is always kept); top_p >= 1 keeps everything.
top_k > 0 (HF generate's semantics) first keeps the k most likely tokens, then applies top-p among them renormalised;
it only touches those k columns (torch.topk, noise for k columns), which avoids sorting the whole vocabulary.
"""

from __future__ import annotations

import hashlib

import torch

M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values in [0, 2^32).  Multipliers are below 2^31 so no
    product overflows int64."""
    x = x & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    return (x >> 16) ^ x


def uniform_noise(seeds: torch.Tensor, step: torch.Tensor, vocab: "int | torch.Tensor") -> torch.Tensor:
    """Float32 uniforms in (0, 1), a pure function of (seeds [B] int64, step [B] int64, column).

    vocab: an int V (every column: [B, V]) or an int64 tensor of column indices, [B, k] (per row) or [k]
    (shared): [B, k].  A column's value is the same either way."""
    base = _mix32(_mix32(seeds) ^ _mix32(step * 0x2545F491 + 0x6A09E667))  # step < 2^32: product < 2^62
    if isinstance(vocab, torch.Tensor):
        cols = vocab.to(torch.int64) * 0x27D4EB2D
        cols = cols if cols.dim() == 2 else cols[None, :]
    else:
        cols = (torch.arange(vocab, device=seeds.device, dtype=torch.int64) * 0x27D4EB2D)[None, :]
    h = _mix32(_mix32(base[:, None] + cols) + 0x3C6EF372)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def top_p_keep(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[B, V] bool: the tokens the nucleus keeps for each row of temperature-scaled float32 logits.  A token is
    dropped when the probability of the tokens ranked above it already reaches top_p; rows with top_p >= 1 keep all."""
    sorted_p, idx = torch.sort(torch.softmax(scaled, dim=-1), dim=-1, descending=True)
    drop_sorted = _nucleus_drop(sorted_p, top_p)
    drop = torch.zeros_like(drop_sorted).scatter(1, idx, drop_sorted)
    return ~drop


def _nucleus_drop(sorted_p: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[B, n] bool over probabilities sorted descending: the nucleus rule (dropped when the probability ranked
    above already reaches top_p; rows with top_p >= 1 drop nothing)."""
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    return (before >= top_p[:, None]) & (top_p[:, None] < 1.0)


def checked_top_k(top_k) -> int:
    """top_k as an int; ValueError unless it is an integer >= 0 (0: no limit)."""
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k}")
    return int(top_k)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, seeds: torch.Tensor,
                  step: torch.Tensor, use_top_p: bool = True, top_k: int = 0) -> torch.Tensor:
    """Next tokens [B] int64.

    logits [B, V] (any float dtype; computed in float32), temperature [B] (0 = greedy), top_p [B] in (0, 1],
    seeds [B] int64 in [0, 2^32) (one per (prompt, sample)), step [B] int64 (tokens the row generated so far).
    use_top_p=False skips the nucleus's sort (a caller that knows every top_p is 1); graph-capturable either way.
    top_k (a Python int, static): 0 < top_k < V draws only among the k most likely tokens (then top-p within those,
    renormalised), computing the noise for those k columns only; 0 or >= V: no limit (the full-vocabulary path).
    """
    logits = logits.float()
    greedy = torch.argmax(logits, dim=-1)
    hot = temperature > 0
    scaled = logits / torch.where(hot, temperature, torch.ones_like(temperature))[:, None]
    top_k = int(top_k)
    if 0 < top_k < logits.shape[-1]:
        vals, cols = torch.topk(scaled, top_k, dim=-1, largest=True, sorted=True)  # [B, k], descending
        if use_top_p:
            vals = vals.masked_fill(_nucleus_drop(torch.softmax(vals, dim=-1), top_p), float("-inf"))
        gumbel = -torch.log(-torch.log(uniform_noise(seeds, step, cols)))
        drawn = cols.gather(1, torch.argmax(vals + gumbel, dim=-1, keepdim=True))[:, 0]
        return torch.where(hot, drawn, greedy)
    if use_top_p:
        scaled = scaled.masked_fill(~top_p_keep(scaled, top_p), float("-inf"))
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, step, logits.shape[-1])))
    drawn = torch.argmax(scaled + gumbel, dim=-1)
    return torch.where(hot, drawn, greedy)


def row_seed(seed: int, prompt_key, sample: int) -> int:
    """The 32-bit seed of one (prompt, sample): from the run's seed, a per-prompt key (its index, or any
    str/int the caller keeps stable) and the sample number."""
    blob = f"{int(seed)}\x1f{prompt_key}\x1f{int(sample)}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


class SampleLogitsProcessor:
    """For HF `generate()` with greedy decoding: puts all the mass on the token `sample_tokens` draws, so HF
    generate samples exactly as the fast generator does.  Rows are (prompt, sample) in generate's order;
    `prompt_width` is the padded prompt length (the step = tokens generated so far)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, prompt_width: int, top_k: int = 0):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.temperature, self.top_p, self.prompt_width = float(temperature), float(top_p), int(prompt_width)
        self.top_k = checked_top_k(top_k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        B, dev = scores.shape[0], scores.device
        step = torch.full((B,), input_ids.shape[1] - self.prompt_width, dtype=torch.int64, device=dev)
        tok = sample_tokens(scores, torch.full((B,), self.temperature, device=dev),
                            torch.full((B,), self.top_p, device=dev), self.seeds.to(dev), step,
                            use_top_p=self.top_p < 1.0 or self.top_k > 0, top_k=self.top_k)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, tok[:, None], 0.0)
