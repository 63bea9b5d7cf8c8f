"""What this machine can really run, probed once, and the speed path chosen from it (said in one line).

    caps = probe(device)                       # Triton, flash varlen, native bf16, CUDA graphs: each "why not" or None
    path = decide_train_path(caps, precision="bf16", compile="auto", attention="auto", cuda_graphs=True)
    log(path.line())                           # path: fast engine, eager layers (no Triton: import failed), ...
    cfg_dict["resolved_path"] = path.to_dict()

Each feature falls back on its own, never to a traceback: no Triton (PyTorch's Windows wheels, sm < 7.0 such as
a P100) -> the fast engine's layers run eagerly; no flash varlen (sm < 8.0: T4, P100; a torch without
torch.nn.attention.varlen; fp32) -> attention in length buckets (SDPA); bf16 only emulated (T4, P100: torch's
`is_bf16_supported()` says True there) -> fp16 with a gradient scaler; CUDA graphs only where the row is
compiled with varlen attention.  A forced choice that cannot run (`--compile on` without Triton, `--attention
varlen` on a T4) is a UserError naming the flag, before any weights load.

The probes are module functions (`_cuda_capability`, `_gpu_name`, `_import_triton`, `_triton_usable`,
`_import_varlen`, `_bf16_query`) so tests inject a missing capability by monkeypatching one of them.
SFTBENCH_DISABLE_TRITON=1 makes the Triton probe fail (to try the Windows path on a Linux GPU box).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

DISABLE_TRITON_ENV = "SFTBENCH_DISABLE_TRITON"
COMPILE_CHOICES = ("auto", "on", "off")


# ----------------------------------------------------------------------------- probes (monkeypatched in tests)

def _cuda_capability(device) -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def _gpu_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device)


def _import_triton() -> None:
    """Raises when Triton cannot be imported (PyTorch's Windows wheels ship without it)."""
    if os.environ.get(DISABLE_TRITON_ENV, "").lower() in ("1", "true", "yes"):
        raise ImportError(f"disabled by {DISABLE_TRITON_ENV}=1")
    import triton  # noqa: F401


def _triton_usable() -> bool:
    """torch's own check (it also looks at the device); True when torch has no such check."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - older torch
        return True
    return bool(has_triton())


def _import_varlen() -> None:
    from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.10)


def _bf16_query(device, capability: tuple[int, int]) -> bool:
    """Native bf16 (not torch's emulation, which `is_bf16_supported()` counts by default)."""
    import torch

    try:
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the keyword
        return capability >= (8, 0)


# ----------------------------------------------------------------------------- what the machine has

def sm(capability: tuple[int, int] | None) -> str:
    return "CPU" if capability is None else f"sm{capability[0]}{capability[1]}"


@dataclass(frozen=True)
class Capabilities:
    """Each `*_missing` field: None when the feature runs here, else why not (short, for the path line)."""
    device_type: str  # "cuda" | "cpu" | ...
    gpu: str  # the GPU's name, or "CPU"
    capability: tuple[int, int] | None
    triton_missing: str | None
    varlen_missing: str | None
    bf16_native: bool
    graphs_missing: str | None

    @property
    def sm(self) -> str:
        return sm(self.capability)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["capability"] = self.sm
        return d


def triton_missing(device_type: str, capability: tuple[int, int] | None) -> str | None:
    if device_type != "cuda":
        return "CPU"
    try:
        _import_triton()
    except Exception as e:  # ImportError, or a broken install raising anything at import
        msg = str(e)
        return msg if msg.startswith("disabled by") else "import failed"
    if capability is not None and capability < (7, 0):
        return f"Triton needs sm70+, this GPU is {sm(capability)}"
    if not _triton_usable():
        return "torch reports Triton unusable here"
    return None


def varlen_missing(device_type: str, capability: tuple[int, int] | None) -> str | None:
    if device_type != "cuda":
        return "not a CUDA device"
    try:
        _import_varlen()
    except ImportError:
        import torch

        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if capability is not None and capability < (8, 0):
        return f"flash needs sm80+, this GPU is {sm(capability)}"
    return None


def probe(device) -> Capabilities:
    """What `device` can run (cheap: imports and the compute capability, no kernel compile)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return Capabilities(dev.type, "CPU", None, "CPU", "not a CUDA device", False, "CPU")
    cap = _cuda_capability(dev)
    return Capabilities("cuda", _gpu_name(dev), cap, triton_missing("cuda", cap), varlen_missing("cuda", cap),
                        _bf16_query(dev, cap), None)


def native_bf16(device) -> bool:
    """bf16 in hardware (sm80+), not emulated: what `--precision auto` means by 'the GPU has bf16'."""
    return probe(device).bf16_native


def compile_works(device) -> bool:
    """torch.compile of CUDA kernels can run here (Triton importable and supported by this GPU)."""
    return probe(device).triton_missing is None


# ----------------------------------------------------------------------------- the chosen path

@dataclass
class TrainPath:
    engine: str  # "fast" | "reference"
    compile: bool
    attention: str | None  # None: the reference engine (HF attention)
    precision: str  # "bf16" | "fp16" | "fp32"
    grad_scaler: bool
    cuda_graphs: bool
    why: dict = field(default_factory=dict)  # feature -> reason
    capabilities: dict = field(default_factory=dict)

    def line(self) -> str:
        w = self.why
        parts = [f"{self.engine} engine"]
        if self.engine == "fast":
            parts.append(f"{'compiled' if self.compile else 'eager'} layers ({w['compile']})")
            parts.append(f"attention {self.attention} ({w['attention']})")
        prec = self.precision + ("+scaler" if self.grad_scaler else "")
        parts.append(f"{prec} ({w['precision']})")
        if self.engine == "fast":
            parts.append(f"CUDA graphs {'on' if self.cuda_graphs else 'off'} ({w['cuda_graphs']})")
        return "path: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self) | {"line": self.line()}


def precision_why(caps: Capabilities, precision: str, asked: str) -> str:
    """Why `precision` (already resolved by sftbench.core.device.pick_precision) was chosen, short."""
    if caps.device_type != "cuda":
        return "CPU"
    if precision == "bf16":
        return f"native on {caps.sm}"
    if precision == "fp16" and not caps.bf16_native and asked in ("auto", "bf16"):
        return f"bf16 not native on {caps.sm}"
    return f"--precision {asked}"


def choose_attention(caps: Capabilities, asked: str, half_precision: bool) -> tuple[str, str]:
    """(attention, short why) for the fast engine; UserError when a forced kernel cannot run here."""
    from sftbench.core.errors import UserError

    if asked == "auto":
        if caps.device_type != "cuda":
            return "sdpa", "CPU"
        if not half_precision:
            return "buckets", "no flash varlen in fp32"
        if caps.varlen_missing is None:
            return "varlen", f"flash, {caps.sm}"
        return "buckets", f"no flash varlen: {caps.varlen_missing}"
    why_not = None
    if asked == "varlen":
        why_not = caps.varlen_missing or (None if half_precision else "flash attention needs --bf16 or --fp16")
    elif asked == "flex" and caps.device_type != "cuda":
        why_not = "FlexAttention has no backward pass on the CPU"
    if why_not:
        raise UserError(f"--attention {asked} cannot run here ({why_not}); use --attention auto.")
    return asked, f"--attention {asked}"


def choose_compile(caps: Capabilities, asked: str) -> tuple[bool, str]:
    """(compile the fast engine's layers?, short why); UserError for `--compile on` where Triton cannot run."""
    from sftbench.core.errors import UserError

    if asked not in COMPILE_CHOICES:
        raise UserError(f"--compile {asked!r}: choose auto, on or off.")
    if asked == "off":
        return False, "--compile off"
    if caps.device_type != "cuda":
        return (True, "--compile on") if asked == "on" else (False, "CPU")
    if caps.triton_missing is not None:
        if asked == "on":
            raise UserError(f"--compile on cannot run here (no Triton: {caps.triton_missing}); use --compile auto "
                            f"or off (PyTorch's Windows wheels ship without Triton; `pip install triton-windows` adds it).")
        return False, f"no Triton: {caps.triton_missing}"
    return True, "Triton" if asked == "auto" else "--compile on"


def choose_graphs(caps: Capabilities, asked: bool, compile: bool, attention: str | None) -> tuple[bool, str]:
    """CUDA graphs replay a compiled varlen row; every other path runs eagerly."""
    if not asked:
        return False, "--cuda_graphs False"
    if caps.graphs_missing is not None:
        return False, caps.graphs_missing
    if not compile:
        return False, "eager layers"
    if attention != "varlen":
        return False, f"attention {attention}"
    return True, "compiled varlen rows"


def decide_train_path(caps: Capabilities, *, engine: str = "fast", precision: str, asked_precision: str = "auto",
                      grad_scaler: bool | None = None, compile: str = "auto", attention: str = "auto",
                      cuda_graphs: bool = True) -> TrainPath:
    """The training path from the capabilities and the flags (`precision`: the resolved autocast dtype name)."""
    scaler = precision == "fp16" if grad_scaler is None else grad_scaler
    why = {"precision": precision_why(caps, precision, asked_precision)}
    if engine != "fast":
        return TrainPath(engine, False, None, precision, scaler, False, why, caps.to_dict())
    att, why["attention"] = choose_attention(caps, attention, precision in ("bf16", "fp16"))
    comp, why["compile"] = choose_compile(caps, compile)
    graphs, why["cuda_graphs"] = choose_graphs(caps, cuda_graphs, comp, att)
    return TrainPath(engine, comp, att, precision, scaler, graphs, why, caps.to_dict())


def assumed(gpu_name: str, capability: tuple[int, int], triton: bool = True) -> Capabilities:
    """What a GPU of `capability` would report (the planner's table; `triton`: importable, as on Linux wheels)."""
    return Capabilities("cuda", gpu_name, capability,
                        (None if capability >= (7, 0) else f"Triton needs sm70+, this GPU is {sm(capability)}")
                        if triton else "import failed",
                        None if capability >= (8, 0) else f"flash needs sm80+, this GPU is {sm(capability)}",
                        capability >= (8, 0), None)


def short_label(path: TrainPath) -> str:
    """"varlen bf16, compiled, graphs" -- the planner's path column."""
    if path.engine != "fast":
        return f"reference {path.precision}{'+scaler' if path.grad_scaler else ''}"
    return (f"{path.attention} {path.precision}{'+scaler' if path.grad_scaler else ''}, "
            f"{'compiled' if path.compile else 'eager'}{', graphs' if path.cuda_graphs else ''}")


# ----------------------------------------------------------------------------- generation

def generation_path(caps: Capabilities, backend: str, dtype: str) -> dict:
    """How answers are generated (recorded in every summary.json as "path"; sftbench.eval.results.PATH): the fast
    generator compiles its layers and uses its Triton decode attention where Triton runs (and the weights are
    bf16/fp16), else torch attention, eager; it replays CUDA graphs on any CUDA GPU.  `hf`: transformers'
    generate().  The same rule as sftbench.engine.fast_generate.FastGenerator's `auto`."""
    if backend != "fast":
        return {"backend": backend, "attention": "hf", "compile": False, "cuda_graphs": False, "dtype": dtype,
                "why": "transformers generate()"}
    cuda = caps.device_type == "cuda"
    triton = cuda and caps.triton_missing is None
    attention = "triton" if triton and dtype in ("bf16", "fp16") else "torch"
    why = ("Triton" if triton else caps.gpu if not cuda else f"no Triton: {caps.triton_missing}") + \
        ("" if attention == "triton" or not triton else f"; torch attention in {dtype}")
    return {"backend": "fast", "attention": attention, "compile": triton, "cuda_graphs": cuda, "dtype": dtype,
            "why": why}


def generation_line(path: dict) -> str:
    return (f"generation path: {path['backend']} backend, {path['attention']} attention, "
            f"{'compiled' if path['compile'] else 'eager'}, CUDA graphs {'on' if path['cuda_graphs'] else 'off'}, "
            f"{path['dtype']} ({path['why']})")
