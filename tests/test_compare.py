"""compare_kernels: a table and a learning-curve plot from a few fits."""

from __future__ import annotations

from gpal import NormalizedDotProduct, SquaredExponential, compare_kernels
from gpal.compare import Candidate

from conftest import SMALL_SOAP, cu_frames


def test_compare_kernels_table_and_plot(tmp_path):
    train = cu_frames(6, seed=1)
    test = cu_frames(2, seed=2)
    cands = [
        Candidate("dot ζ=2", NormalizedDotProduct(zeta=2), dict(SMALL_SOAP)),
        Candidate("SE", SquaredExponential(length_scale=0.5), dict(SMALL_SOAP)),
    ]
    png = tmp_path / "curves.png"
    table = compare_kernels(train, test, cands, n_sparse=30, sizes=(0.5, 1.0), plot=str(png), progress=False)
    text = str(table)
    assert "dot ζ=2" in text and "F RMSE" in text
    assert "<table>" in table._repr_html_()
    assert len(table.rows) == 2 and all(r["force_rmse"] > 0 for r in table.rows)
    n, err = table.curves["SE"]
    assert list(n) == [3, 6]
    assert png.stat().st_size > 1000
    assert table.best()["name"] in ("dot ζ=2", "SE")
