"""The fast path of a run: bf16 autocast and channels-last, where the device makes them pay.

bf16 means the networks under bf16 autocast and the selectors' first-layer products on bf16
inputs (``ClassSelectors(product_dtype=...)``); losses, the bank and batch-norm statistics stay
float32.

``amp`` and ``channels_last`` are ``True``, ``False`` or ``"auto"`` in the config. ``"auto"`` is
decided here, once, when a trainer starts on its device, and the decision goes into every record
of the run (``precision`` and ``channels_last`` columns), since the same config trains in bf16 on
one node and in fp32 on another.

Measured on a 2-core Xeon with AVX-512-bf16 (docs/benchmarks.md, ``benchmarks/step.py``): the
digits step is 1.35x faster under bf16 autocast and 1.60x with channels-last on top, and val and
test mIoU stay within seed noise (``benchmarks/precision_quality.py``). Without bf16 units a CPU
emulates bf16 and is slower than fp32, and channels-last alone was not found to pay, so ``"auto"``
turns channels-last on only together with bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")  # where a torch without CPU probes learns the flags (Linux)


@dataclass(frozen=True)
class FastPath:
    """What a run does: bf16 autocast of the networks or not, channels-last or not, and why."""

    bf16: bool
    channels_last: bool
    reason: str  # one line: the device's bf16 support that "auto" went by, or "set in the config"

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> str:
        memory = " + channels-last" if self.channels_last else ""
        return f"{self.precision}{memory} ({self.reason})"


def choose_fast_path(amp: bool | str, channels_last: bool | str, device: torch.device) -> FastPath:
    """Resolve the config's ``amp`` and ``channels_last`` (each True, False or "auto") for ``device``."""
    support = bf16_support(device)
    bf16 = bool(support) if amp == "auto" else bool(amp)
    memory = bf16 if channels_last == "auto" else bool(channels_last)
    if "auto" in (amp, channels_last):
        reason = f"auto: {support}" if support else f"auto: no bf16 units on this {device.type}"
    else:
        reason = "set in the config"
    return FastPath(bf16=bf16, channels_last=memory, reason=reason)


def bf16_support(device: torch.device) -> str:
    """What computes bf16 natively on ``device`` ("" when nothing does, and bf16 would be emulated)."""
    if device.type == "cuda":
        return "bf16 tensor cores" if torch.cuda.is_bf16_supported(including_emulation=False) else ""
    if device.type != "cpu":
        return ""
    units = [name for name, present in (("AMX", _cpu_flag("_is_amx_tile_supported", "amx_bf16")),
                                        ("AVX-512-bf16", _cpu_flag("_is_avx512_bf16_supported", "avx512_bf16")))
             if present]
    return " and ".join(units)


def _cpu_flag(torch_probe: str, cpuinfo_flag: str) -> bool:
    # torch's probes ask the CPU itself (cpuinfo can hide flags in a VM); they are private, so a
    # torch without them falls back to /proc/cpuinfo (Linux) and then to "not there".
    probe = getattr(torch.cpu, torch_probe, None)
    if probe is not None:
        return bool(probe())
    try:
        return cpuinfo_flag in CPUINFO.read_text().split()
    except OSError:
        return False
