"""The one place that decides device and precision, and says why.

Policy: weights and optimizer state stay in fp32 ("master weights"); bf16/fp16 only through
autocast.  fp16 uses a gradient scaler.  CPU runs in fp32 whatever was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: no autocast (fp32)
    use_grad_scaler: bool
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    from sftbench.core.errors import UserError

    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r}: not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested} was asked for but torch sees no CUDA GPU. Use --device cpu or auto.")
    return dev


def auto_precision(device: torch.device) -> str:
    """What `auto` means on `device` (training autocast and generation dtype alike): bf16 on a GPU that has it,
    fp16 on older GPUs (T4, P100: bf16 there is only emulated), fp32 on the CPU."""
    if torch.device(device).type != "cuda":
        return "fp32"
    from sftbench.core.capabilities import native_bf16  # native only: torch's is_bf16_supported() counts emulation

    return "bf16" if native_bf16(device) else "fp16"


def requested_precision(precision: str = "fp32", bf16: bool = False, fp16: bool = False) -> str:
    """The one rule for what was asked: --bf16 / --fp16 (the HF booleans) win over --precision; both is an error."""
    if bf16 and fp16:
        from sftbench.core.errors import UserError

        raise UserError("--bf16 and --fp16 were both set; choose one.")
    return "bf16" if bf16 else "fp16" if fp16 else precision


def pick_precision(device: torch.device, bf16: bool = False, fp16: bool = False, precision: str = "fp32") -> Precision:
    """Decide the autocast dtype for training (the only place that does).

    - CPU: fp32, always (CPU autocast of a 135M model buys nothing and changes numerics).
    - `auto`: bf16 where the GPU supports it, else fp16 with a GradScaler (T4, P100).
    - `bf16` on a GPU that supports it: bf16 autocast, no scaler; on a GPU without bf16: fp16 + scaler, said so.
    - `fp16`: fp16 autocast with a GradScaler; if the GPU has bf16 we still obey but say bf16 is better.
    """
    asked = requested_precision(precision, bf16, fp16)
    if device.type != "cuda":
        why = "CPU: training in fp32" + (f" ({asked} was asked for; it only applies on a GPU)" if asked != "fp32" else "")
        return Precision(device, None, False, why)
    from sftbench.core.capabilities import native_bf16

    has_bf16 = native_bf16(device)
    name = torch.cuda.get_device_name(device)
    if asked == "auto":
        if auto_precision(device) == "bf16":
            return Precision(device, torch.bfloat16, False, f"{name}: bf16 autocast over fp32 master weights (--precision auto)")
        return Precision(device, torch.float16, True, f"{name}: fp16 autocast over fp32 master weights with a gradient "
                                                      f"scaler (--precision auto: this GPU has no bf16)")
    if asked == "fp16":
        extra = "; this GPU supports bf16, which needs no loss scaling and is the better choice (--bf16 True)" if has_bf16 else ""
        return Precision(device, torch.float16, True, f"{name}: fp16 autocast over fp32 master weights with a gradient scaler{extra}")
    if asked == "bf16":
        if has_bf16:
            return Precision(device, torch.bfloat16, False, f"{name}: bf16 autocast over fp32 master weights")
        return Precision(device, torch.float16, True, f"{name} has no bf16: using fp16 autocast with a gradient scaler instead")
    return Precision(device, None, False, f"{name}: fp32 (pass --bf16 True or --precision auto for mixed precision)")


CUDA_WHEEL_COMMAND = "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu124"


def _nvidia_smi_gpus() -> list[str]:
    """GPU names nvidia-smi lists ([] when there is no nvidia-smi or it fails)."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def cpu_torch_note() -> str | None:
    """When an NVIDIA GPU is here (nvidia-smi lists one) but torch is a CPU build: the line to say at start, with the
    command that installs a CUDA build (PyPI's torch wheel on Windows is CPU-only).  None otherwise."""
    if torch.version.cuda is not None or torch.cuda.is_available():
        return None
    gpus = _nvidia_smi_gpus()
    if not gpus:
        return None
    return (f"an NVIDIA GPU is here ({gpus[0]}, nvidia-smi sees it) but this torch {torch.__version__} is a CPU build, "
            f"so this runs on the CPU. Install a CUDA build of torch into this environment: `{CUDA_WHEEL_COMMAND}` "
            f"(the index for your driver's CUDA version: https://pytorch.org/get-started/locally/).")


_SAID: set[str] = set()


def start_notes(device: torch.device) -> list[str]:
    """Facts to say once per process at start (trainer and evaluation; a sweep evaluates many checkpoints): a CPU
    torch next to a GPU, a Windows WDDM driver.  Each note is returned the first time only."""
    notes: list[str] = []
    if device.type != "cuda":
        note = cpu_torch_note()
        if note:
            notes.append(note)
    else:
        from sftbench.core.memory import wddm_note

        note = wddm_note(device.index or 0)
        if note:
            notes.append(note)
    new = [n for n in notes if n not in _SAID]
    _SAID.update(new)
    return new
