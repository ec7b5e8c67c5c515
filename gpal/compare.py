"""Compare kernel and descriptor choices on the same data.

>>> table = gpal.compare_kernels(train, test)         # doctest: +SKIP
>>> table                                              # a table in a notebook or terminal

Each candidate is fitted on growing subsets of ``train`` (a learning curve) and on all of
it; errors, negative log-likelihood of the forces and timings are measured on ``test``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .calibration import uncertainty_metrics
from .descriptors import SOAP
from .kernels import NormalizedDotProduct, SquaredExponential
from .potential import SparseGP

__all__ = ["Candidate", "ComparisonTable", "compare_kernels", "default_candidates"]


@dataclass
class Candidate:
    """One model choice: a name, a kernel and SOAP settings (dscribe's names)."""

    name: str
    kernel: object
    soap: dict = field(default_factory=lambda: {"r_cut": 5.0, "n_max": 8, "l_max": 6, "sigma": 0.5})


def default_candidates() -> list[Candidate]:
    """Dot product ζ = 1, 2, 4; squared exponential; smaller and larger SOAP bases."""
    return [
        Candidate("dot ζ=1", NormalizedDotProduct(zeta=1)),
        Candidate("dot ζ=2", NormalizedDotProduct(zeta=2)),
        Candidate("dot ζ=4", NormalizedDotProduct(zeta=4)),
        Candidate("SE ℓ=0.3", SquaredExponential(length_scale=0.3)),
        Candidate("dot ζ=4, n6 l4", NormalizedDotProduct(zeta=4),
                  {"r_cut": 5.0, "n_max": 6, "l_max": 4, "sigma": 0.5}),
    ]


@dataclass
class ComparisonTable:
    """Results of :func:`compare_kernels`; prints as text, renders as HTML in notebooks."""

    rows: list[dict]
    curves: dict  # name -> (sizes, force RMSE)

    COLUMNS = (
        ("name", "candidate", "{}"),
        ("energy_rmse", "E RMSE meV/atom", "{:.2f}"),
        ("force_rmse", "F RMSE eV/Å", "{:.4f}"),
        ("force_nll", "F NLL", "{:.3f}"),
        ("force_zms", "F ZMS", "{:.2f}"),
        ("fit_time", "fit s", "{:.2f}"),
        ("predict_us_per_atom", "predict µs/atom", "{:.0f}"),
    )

    def __str__(self) -> str:
        heads = [h for _, h, _ in self.COLUMNS]
        cells = [[fmt.format(r[k]) for k, _, fmt in self.COLUMNS] for r in self.rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
        line = "  ".join(h.ljust(w) for h, w in zip(heads, widths))
        out = [line, "-" * len(line)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        return "\n".join(out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for _, h, _ in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{fmt.format(r[k])}</td>" for k, _, fmt in self.COLUMNS) + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def best(self, key: str = "force_rmse") -> dict:
        return min(self.rows, key=lambda r: r[key])


def _evaluate(model, test):
    t0 = time.perf_counter()
    for a in test:  # timed: the plain prediction an MD step makes
        model.predict(a)
    t_pred = time.perf_counter() - t0
    n_atoms = sum(len(a) for a in test)
    res = model.residuals(test)
    e_err, f_err, f_std = res["energy_error"], res["force_error"], res["force_std"]
    m = uncertainty_metrics(f_err, f_std)
    return {
        "energy_rmse": 1000 * float(np.sqrt(np.mean(np.square(e_err)))),
        "force_rmse": float(np.sqrt(np.mean(f_err**2))),
        "force_nll": float(m["nll"]),
        "force_zms": float(m["zms"]),
        "predict_us_per_atom": 1e6 * t_pred / n_atoms,
    }


def compare_kernels(
    train,
    test,
    candidates: list[Candidate] | None = None,
    *,
    n_sparse: int = 200,
    sizes=(0.25, 0.5, 1.0),
    optimize: bool = True,
    plot: str | None = "kernel_comparison.png",
    progress: bool = True,
) -> ComparisonTable:
    """Fit every candidate on ``train`` (and on growing subsets) and score it on ``test``.

    Parameters
    ----------
    train, test : list of ase.Atoms
        Labelled frames (energy and forces).
    candidates : list of Candidate, optional
        Default :func:`default_candidates`.
    n_sparse : int, default 200
    sizes : sequence of float
        Fractions of ``train`` for the learning curve (the last should be 1.0).
    optimize : bool, default True
        Optimise the kernel's hyperparameters (log marginal likelihood) for each fit.
    plot : str or None
        Path of a learning-curve PNG (force RMSE against training-set size).
    progress : bool, default True

    Returns
    -------
    ComparisonTable
    """
    import sys

    candidates = candidates or default_candidates()
    train, test = list(train), list(test)
    if not train or not test:
        raise ValueError("compare_kernels needs non-empty train and test sets")
    species = sorted({int(z) for a in train + test for z in a.numbers})
    periodic = any(a.pbc.any() for a in train)
    rows, curves = [], {}
    for k, cand in enumerate(candidates):
        soap = dict(cand.soap)
        soap.setdefault("weighting", {"function": "poly", "r0": soap["r_cut"], "c": 1, "m": 1})
        desc = SOAP(species=species, periodic=periodic, **soap)
        counts, errs = [], []
        for frac in sizes:
            sub = train[: max(1, int(round(frac * len(train))))]
            t0 = time.perf_counter()
            model = SparseGP(desc, cand.kernel, n_sparse=n_sparse).fit(sub)
            if optimize:
                model.optimize_hyperparameters(optimize_noise=False)
            fit_time = time.perf_counter() - t0
            res = _evaluate(model, test)
            counts.append(len(sub))
            errs.append(res["force_rmse"])
            if progress:
                print(f"[gpal] {cand.name}: {len(sub)} frames, force RMSE {res['force_rmse']:.4f} eV/Å",
                      file=sys.stderr)
        rows.append({"name": cand.name, "kernel": repr(model.kernel_), "fit_time": fit_time, **res})
        curves[cand.name] = (np.array(counts), np.array(errs))
    table = ComparisonTable(rows, curves)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.0))
        for name, (n, e) in curves.items():
            ax.plot(n, e, "o-", label=name)
        ax.set_xlabel("training frames")
        ax.set_ylabel("force RMSE on test (eV/Å)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("learning curves")
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        plt.close(fig)
    return table
