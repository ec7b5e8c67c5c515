"""gpal leaves the process alone: matplotlib's backend, threads of oracle workers."""

from __future__ import annotations

import os

import pytest

from gpal.learning.oracle import OracleSpec, _label_task

from _subprocess import blas_threads as _blas_threads  # noqa: E402
from _subprocess import run_python as _run  # noqa: E402


# ------------------------------------------------------------------------ plots
def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    out = _run(f"""
        import json, sys
        from pathlib import Path
        from types import SimpleNamespace
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        from gpal import calibration, compare
        from gpal.learning.learner import ActiveLearner

        tmp = Path({str(tmp_path)!r})
        rng = np.random.default_rng(0)
        err, std = rng.normal(size=200), np.full(200, 1.0)
        calibration.plot_parity(err, err + 0.1, tmp / "parity.png", std=std)
        calibration.plot_calibration_curve(err, std, tmp / "calib.png")
        calibration.plot_z_histogram(err, std, tmp / "z.png")
        compare._plot_learning_curves({{"a": (np.array([2, 4]), np.array([0.2, 0.1]))}},
                                      tmp / "curves.png")
        (tmp / "log.jsonl").write_text("\\n".join(json.dumps(
            {{"event": "label", "step": s, "oracle_calls": k}}) for k, s in enumerate([3, 9, 20])))
        fake = SimpleNamespace(run_dir=tmp, step=30, stopping=None, validation=None, _calls={{}},
                               md=SimpleNamespace(temperature=(300, 900)))
        fake._log_records = lambda event: ActiveLearner._log_records(fake, event)
        fake._curve_data = lambda: ActiveLearner._curve_data(fake)
        ActiveLearner._plots(fake)
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    assert out.split() == ["svg", "False"]
    for name in ("parity", "calib", "z", "curves", "learning_curve"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ oracle workers
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to see a limit")
def test_oracle_worker_limits_blas_during_the_calculation_only():
    from ase.build import bulk

    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    spec = OracleSpec("_oracles:ThreadProbe")
    before_env, before = dict(os.environ), _blas_threads()
    args = (a.numbers, a.positions, a.cell.array, a.pbc, False, {})
    if before < 2:
        pytest.skip("BLAS already runs one thread")
    assert _label_task(spec, *args, 1)["energy"] == 1.0
    assert _blas_threads() == before and dict(os.environ) == before_env
    moved = (a.numbers, a.positions + 0.01, a.cell.array, a.pbc, False, {})  # no cached result
    assert _label_task(spec, *moved, 0)["energy"] == float(before)  # 0: no limit


# ------------------------------------------------------------------------ import
def test_import_gpal_leaves_the_environment_and_matplotlib_alone():
    out = _run("""
        import os, sys
        before = dict(os.environ)
        import gpal, gpal.cli, gpal.learning, gpal.calibration, gpal.selection, gpal.engines
        print(dict(os.environ) == before, "matplotlib" in sys.modules)
    """)
    assert out.split() == ["True", "False"]


def test_a_star_import_binds_the_entry_points_not_the_submodules():
    """``import io; from gpal import *`` left ``io`` bound to gpal.io (no ``__all__``)."""
    import gpal

    ns: dict = {}
    exec("import io\nfrom gpal import *", ns)
    import io

    assert ns["io"] is io
    assert {"SparseGP", "SOAP", "ActiveLearner", "GPCalculator", "load", "GpalError"} <= set(ns)
    assert not {"model", "calculator", "compare", "baseline", "exceptions", "descriptors"} & set(ns)
    assert all(hasattr(gpal, name) for name in gpal.__all__)

