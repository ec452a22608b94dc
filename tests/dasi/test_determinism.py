"""The CPU kernel pins: set before torch loads, recorded, and applied to vLLM's kernel choice."""

import os
import subprocess
import sys

import torch

from dasi import determinism
from tests.conftest import REPO


def test_dasi_pins_before_torch_loads_and_respects_an_override():
    probe = ("import os; from dasi.determinism import pin_cpu_kernels; pin_cpu_kernels(); import torch; "
             "print(os.environ['ATEN_CPU_CAPABILITY'], torch.backends.cpu.get_cpu_capability())")
    env = {k: v for k, v in os.environ.items() if k not in determinism.PINS}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env,
                         check=True).stdout.split()
    assert out == ["avx2", "AVX2"]  # ATen really dispatches the pinned kernels
    env["ATEN_CPU_CAPABILITY"] = "default"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env,
                         check=True).stdout.split()
    assert out == ["default", "DEFAULT"]


def test_pinning_after_torch_was_imported_is_refused():
    code = ("import os, torch\nfor k in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA'):\n"
            "    os.environ.pop(k, None)\nfrom dasi.determinism import pin_cpu_kernels\npin_cpu_kernels()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0 and "torch was imported before dasi pinned" in out.stderr


def test_vllm_is_told_the_host_has_no_avx512(monkeypatch):
    """On an AVX-512 host vLLM would load _C_AVX512 and other attention kernels."""
    for name in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: True)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert determinism.pin_vllm_cpu_isa() is True
    assert not torch.cpu._is_avx512_supported() and not torch.cpu._is_amx_tile_supported()
    assert determinism.pin_vllm_cpu_isa() is False  # already answering as an AVX2 host
