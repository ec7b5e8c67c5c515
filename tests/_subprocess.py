"""Helpers for tests that need a fresh interpreter or the process's BLAS thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from threadpoolctl import threadpool_info

import gpal

ROOT = Path(gpal.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_python(code: str, **env_changes) -> str:
    """Run ``code`` in a fresh interpreter (gpal and tests/ importable); return stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MPLBACKEND"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env.update(env_changes)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def blas_threads() -> int:
    """The largest thread count of the BLAS libraries loaded in this process."""
    return max(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas")
