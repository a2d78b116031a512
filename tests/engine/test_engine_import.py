"""Importing the engine quiets only bitsandbytes' notice about a hub kernel it cannot fetch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_hub_kernel_notice_is_dropped():
    code = ("import logging, engine\n"
            "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
            "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: refused')\n"
            "log.warning('another bitsandbytes warning')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert "gemm_4bit_forward" not in done.stderr
    assert "another bitsandbytes warning" in done.stderr
