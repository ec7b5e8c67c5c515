"""Every example runs as a script (in fast mode: GPAL_FAST=1) and exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gpal

EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    root = str(Path(gpal.__file__).parents[1])
    env = dict(os.environ, GPAL_FAST="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(script.parent), root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
