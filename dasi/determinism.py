"""Pin the CPU kernels every stage dispatches to, so that two hosts give the same bits.

PyTorch (ATen), MKL and oneDNN pick their kernels from the CPU's features: an AVX-512 host and
an AVX2 host round differently, and the tiny pretrain loss moved in its 6th digit between two
machines of the same kind. Pinning all three to AVX2 (which every x86-64 server since 2015 has)
makes the choice a property of the code, not of the host. Measured on the AVX2 host that made
the published release: pinning changes nothing there (same kernels, same bits, same speed);
``ATEN_CPU_CAPABILITY=default`` or ``MKL_CBWR=COMPATIBLE`` instead change the final loss.

vLLM's CPU backend chooses its own library (``_C_AVX2`` / ``_C_AVX512``) and attention kernels
from ``torch.cpu._is_avx512_supported()`` and friends, not from these variables;
:func:`pin_vllm_cpu_isa` makes those answer as an AVX2 host would.

Not every kernel follows the pins. Measured on an Intel Xeon host (AVX-512, AMX): every pin in
effect and vLLM's AVX2 library loaded, the ``generate`` stage's Gemma-3 text (bfloat16) differs
from what the AMD EPYC (AVX2) host made (SmolLM2's English kept the same curation counts; its
text was not compared, the earlier files were not at hand). A likely cause is a kernel
whose blocking follows the host's cache sizes (oneDNN's matmul, which vLLM's CPU linear layers
call): no ISA pin covers that. Outputs downstream of ``generate`` are therefore equal across
hosts of one CPU model, not across vendors; the release test reports the files that differ.

Set a variable yourself to override its pin (e.g. ``ATEN_CPU_CAPABILITY=avx512`` for speed on a
host where bit-identity with the release does not matter); :func:`cpu_kernel_env` records what
was in effect in every run's ``env.json``.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

# Read by each library when it loads, so they must be set before torch is imported.
PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
X86 = {"x86_64", "amd64"}


def is_x86() -> bool:
    return platform.machine().lower() in X86


def pin_cpu_kernels() -> dict[str, str]:
    """Set the pins that the environment does not set already; returns what is in effect.
    Call before anything imports torch (``dasi.cli`` does, first thing)."""
    if not is_x86():
        return {}
    if "torch" in sys.modules:
        # ATen has read its variable already: a pin set now would only be claimed, not used.
        missing = [k for k in PINS if k not in os.environ]
        if missing:
            raise RuntimeError(f"torch was imported before dasi pinned {', '.join(missing)}; "
                               "import dasi.determinism first")
    for key, value in PINS.items():
        os.environ.setdefault(key, value)
    return cpu_kernel_env()


def cpu_kernel_env() -> dict[str, Any]:
    """The pins in effect and whether each is dasi's default (for env.json)."""
    env = {k: os.environ.get(k) for k in PINS}
    return {"vars": env, "pinned": all(env[k] == v for k, v in PINS.items()),
            "machine": platform.machine()}


def pin_vllm_cpu_isa() -> bool:
    """Make vLLM's CPU backend load its AVX2 kernels when ATen is pinned to AVX2; returns
    whether anything had to change (False on an AVX2 host, where the answers are already so)."""
    import torch

    if not is_x86() or os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        return False
    probes = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported")
    changed = [name for name in probes if getattr(torch.cpu, name, lambda: False)()]
    for name in probes:
        if hasattr(torch.cpu, name):
            setattr(torch.cpu, name, lambda: False)
    return bool(changed)
