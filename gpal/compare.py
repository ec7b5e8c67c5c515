"""Compare kernel and descriptor choices on the same data.

>>> table = gpal.compare_kernels(train, test)         # doctest: +SKIP
>>> table               # shown as a table in a notebook or terminal  # doctest: +SKIP

Each candidate is fitted on growing subsets of ``train`` (a learning curve) and on all of
it; errors, negative log-likelihood of the forces and timings are measured on ``test``.

Without a test set, :func:`select_kernel_by_evidence` chooses among kernels (e.g. the
integer exponent ζ of the dot-product kernel, which no gradient can optimise) by the
log marginal likelihood of the training data itself, each at its optimised
hyperparameters and noises (type-II maximum likelihood).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Callable

import numpy as np
from ase import Atoms

from .calibration import uncertainty_metrics
from .descriptors import SOAP
from .descriptors.soap import poly_weighting
from .kernels import NormalizedDotProduct, SquaredExponential
from .model import SparseGP

__all__ = [
    "Candidate",
    "ComparisonTable",
    "EvidenceSelection",
    "compare_kernels",
    "default_candidates",
    "scorer",
    "select_kernel_by_evidence",
]

#: the metrics :func:`scorer` knows
SCORERS = ("force_rmse", "energy_rmse", "stress_rmse", "force_r2")


def scorer(metric: str = "force_rmse") -> Callable:
    """A scikit-learn scorer for :class:`gpal.SparseGP` on lists of labelled frames.

    scikit-learn's named scorers (``scoring="r2"``, ``"neg_root_mean_squared_error"``)
    compare ``predict(X)`` with a separate ``y``, which frames do not have (their labels
    are inside them), and fail. Pass ``scoring=gpal.scorer(...)`` instead, e.g.
    ``cross_val_score(gpal.SparseGP(), frames, scoring=gpal.scorer("force_rmse"))``.

    Parameters
    ----------
    metric : {"force_rmse", "energy_rmse", "stress_rmse", "force_r2"}, default "force_rmse"
        Held-out RMSE of the force components (eV/Å), of the energy per atom (eV/atom)
        or of the Voigt stress components (eV/Å^3), returned negated (scikit-learn
        maximises scores); or the R² of the force components (:meth:`SparseGP.score`,
        the default ``scoring``, which stays within 1e-5 of 1 for most potentials and
        separates models less clearly than an RMSE).

    Returns
    -------
    callable
        ``f(estimator, frames, y=None) -> float``.
    """
    if metric not in SCORERS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(SCORERS)}")

    def score(estimator, frames, y=None) -> float:
        if y is not None:
            raise TypeError(f"gpal.scorer takes the labels from the frames; y must be None, got {type(y).__name__}")
        if metric == "force_r2":
            return estimator.score(frames)
        from ._validation import check_frames, frame_labels

        key = metric.split("_")[0]
        err = []
        for a in check_frames(frames):
            lab = frame_labels(a)
            ref = {"force": lab.forces, "energy": lab.energy, "stress": lab.stress}[key]
            if ref is None:
                continue
            p = estimator.predict(a)
            pred = {"force": p["forces"], "energy": p["energy"], "stress": p.get("stress")}[key]
            if pred is None:
                continue
            d = np.ravel(np.asarray(pred, dtype=float) - np.asarray(ref, dtype=float))
            err.append(d / len(a) if key == "energy" else d)
        if not err:
            raise ValueError(f"scorer({metric!r}): no frame has a {key} label")
        return -float(np.sqrt(np.mean(np.concatenate(err) ** 2)))

    score.__name__ = score.__qualname__ = f"neg_{metric}" if metric != "force_r2" else metric
    return score


@dataclass
class Candidate:
    """One model choice: a name, a kernel and SOAP settings (dscribe's names).

    :func:`compare_kernels` adds a smooth polynomial cutoff weighting to ``soap`` unless it
    sets its own ``weighting`` (see there for the whole recipe of a row's model).
    """

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
        ("energy_rmse", "E RMSE meV/atom", "{:.3g}"),
        ("force_rmse", "F RMSE eV/Å", "{:.4g}"),  # (significant digits: 6.9e-4 and 7.4e-4 differ)
        # raw stds (a candidate is not calibrated; raw force stds run 5-8x small, so ZMS >> 1)
        ("force_nll", "F NLL raw", "{:.4g}"),
        ("force_zms", "F ZMS raw", "{:.3g}"),  # (bounded widths: a z² of 2e5 broke the columns)
        ("fit_time", "fit s", "{:.2f}"),
        ("predict_us_per_atom", "predict µs/atom", "{:.0f}"),
    )

    @classmethod
    def column_widths(cls, rows=(), names=()) -> list[int]:
        """Column widths fitting the headings, ``rows`` and the candidate ``names``, if given."""
        cells = [[fmt.format(r[k]) for k, _, fmt in cls.COLUMNS] for r in rows]
        widths = [max(len(h), 8, *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(cls.COLUMNS)]
        widths[0] = max(widths[0], *(len(n) for n in names)) if names else widths[0]
        return widths

    @classmethod
    def header(cls, widths=None) -> str:
        """The heading line and a rule below it."""
        widths = widths or cls.column_widths()
        line = "  ".join(h.ljust(w) for (_, h, _), w in zip(cls.COLUMNS, widths))
        return line + "\n" + "-" * len(line)

    @classmethod
    def format_row(cls, row: dict, widths=None) -> str:
        """One table line for ``row`` (a dict with the COLUMNS keys)."""
        widths = widths or cls.column_widths([row])
        return "  ".join(fmt.format(row[k]).ljust(w) for (k, _, fmt), w in zip(cls.COLUMNS, widths))

    def __str__(self) -> str:
        widths = self.column_widths(self.rows)
        return "\n".join([self.header(widths)] + [self.format_row(r, widths) for r in self.rows])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for _, h, _ in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{fmt.format(r[k])}</td>" for k, _, fmt in self.COLUMNS) + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def best(self, key: str = "force_rmse") -> dict:
        """The row (a dict: ``name``, ``kernel``, errors, times) with the smallest ``key``.

        Parameters
        ----------
        key : str, default "force_rmse"
            A column where smaller is better: ``force_rmse`` (eV/Å), ``energy_rmse``
            (meV/atom), ``force_nll``, ``fit_time`` (s), ``predict_us_per_atom``.
        """
        return min(self.rows, key=lambda r: r[key])


def _evaluate(model, test):
    model.predict(test[0])  # untimed: a first call's one-off costs (compiling, caches)
    t0 = time.perf_counter()
    for a in test:  # timed: the plain prediction an MD step makes
        model.predict(a)
    t_pred = time.perf_counter() - t0
    n_atoms = sum(len(a) for a in test)
    res = model.residuals(test)
    e_err, f_err, f_std = res["energy_error"], res["force_error"], res["force_std"]
    m = uncertainty_metrics(f_err, f_std)
    return {
        "energy_rmse": 1000 * float(np.sqrt(np.mean(np.square(e_err)))) if len(e_err) else float("nan"),
        "force_rmse": float(np.sqrt(np.mean(f_err**2))),
        "force_nll": float(m["nll"]),
        "force_zms": float(m["zms"]),
        "predict_us_per_atom": 1e6 * t_pred / n_atoms,
    }


def compare_kernels(
    train: Sequence[Atoms],
    test: Sequence[Atoms],
    candidates: list[Candidate] | None = None,
    *,
    n_sparse: int = 200,
    sizes: Sequence[float] = (0.25, 0.5, 1.0),
    optimize: bool = True,
    plot: str | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    overwrite: bool | None = None,
) -> ComparisonTable:
    """Fit every candidate on ``train`` (and on growing subsets) and score it on ``test``.

    Each row's model is, to reproduce it by hand::

        soap = dict(cand.soap)
        soap.setdefault("weighting", {"function": "poly", "r0": soap["r_cut"], "c": 1, "m": 1})
        model = SparseGP(SOAP(species=<train's species>, periodic=True, **soap), cand.kernel,
                         n_sparse=n_sparse).fit(train)
        model.optimize_hyperparameters(optimize_noise=False)   # with optimize=True

    (the smooth polynomial cutoff unless the candidate sets a ``weighting``;
    ``periodic=True`` lets each frame's own ``pbc`` decide; the noises are the fit's).

    Parameters
    ----------
    train, test : list of ase.Atoms
        Labelled frames (energy and forces).
    candidates : list of Candidate, optional
        Default :func:`default_candidates`.
    n_sparse : int, default 200
    sizes : sequence of float in (0, 1]
        Fractions of ``train`` for the learning curve (fractions that round to the same
        number of frames are one fit); the table's row is the fit on
        the largest.
    optimize : bool, default True
        Optimise the kernel's hyperparameters (log marginal likelihood) for each fit.
    plot : str or None, default None
        Path of a learning-curve PNG (force RMSE against training-set size; another
        format if its suffix names one matplotlib writes); None writes no file (the
        curves are in the returned table; ``gpal compare-kernels`` writes
        ``kernel_comparison.png``). An existing file is replaced only if it is a gpal
        plot (a cell run again), else ``FileExistsError`` before any fit.
    overwrite : bool or None, default None
        True: ``plot`` replaces whatever file is there; False: no existing file.
    progress : bool, default True
        A progress bar (tqdm, on stderr) over the fits.
    on_row : callable, optional
        Called with each candidate's row (a dict with the ``ComparisonTable.COLUMNS``
        keys) as soon as it is measured, e.g. to print the table line by line.

    Returns
    -------
    ComparisonTable
    """
    from tqdm.auto import tqdm

    from ._validation import check_frames, frame_labels
    from .exceptions import UnknownSpeciesError

    candidates = default_candidates() if candidates is None else list(candidates)
    if not candidates:
        raise ValueError("candidates is empty (None: gpal's default candidates)")
    sizes = sorted(float(f) for f in sizes)
    if not sizes or not all(0 < f <= 1 for f in sizes):
        raise ValueError(f"sizes must be fractions of the training set in (0, 1], got {sizes}")
    # (a path, an Atoms, unlabelled or no frames fail here, before any fit)
    train, test = check_frames(train, what="train"), check_frames(test, what="test")
    if plot:  # (a file it may not replace: now, not after the fits)
        from .calibration import _check_replace

        _check_replace(plot, overwrite, what="plot: ")
    if not any(frame_labels(a).forces is not None for a in test):
        raise ValueError("no test frame has force labels: compare_kernels measures force errors")
    species = sorted({int(z) for a in train for z in a.numbers})
    unseen = sorted({int(z) for a in test for z in a.numbers} - set(species))
    if unseen:  # (no model of the training frames can predict them)
        raise UnknownSpeciesError(unseen, species, "the test frames hold {unknown}, which no training frame "
                                  "has (the training frames hold {known}): no model fitted on them can "
                                  "predict it; add training frames with it, or leave those test frames out")
    periodic = True  # each structure's pbc decides
    names = [c.name for c in candidates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # (the curves are keyed by name: one would replace the other)
        raise ValueError(f"candidate names must differ: {', '.join(map(repr, twice))} given more than once")
    descs = []  # (each candidate's SOAP built now: a bad setting fails before any fit)
    for cand in candidates:
        if not isinstance(cand.soap, dict):
            raise ValueError(f"candidate {cand.name!r}: soap must be a dict of SOAP settings (dscribe's names), "
                             f"got {type(cand.soap).__name__}")
        soap = dict(cand.soap)
        own = sorted({"species", "periodic"} & set(soap))
        if own:
            raise ValueError(f"candidate {cand.name!r}: soap sets {', '.join(own)}, which compare_kernels sets "
                             "itself (the training frames' species; each frame's pbc)")
        if "weighting" not in soap:
            if soap.get("r_cut") is None:
                raise ValueError(f"candidate {cand.name!r}: soap needs r_cut (Å), or a weighting that implies it")
            soap["weighting"] = poly_weighting(soap["r_cut"])
        try:
            descs.append(SOAP(species=species, periodic=periodic, **soap))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"candidate {cand.name!r}: {exc}") from None
    rows, curves = [], {}
    # the training-set sizes (fractions that round to the same count: one fit, one point)
    counts_of = sorted({max(1, int(round(frac * len(train)))) for frac in sizes})
    bar = tqdm(total=len(candidates) * len(counts_of), desc="compare-kernels", disable=not progress,
               leave=False, dynamic_ncols=True)
    for k, (cand, desc) in enumerate(zip(candidates, descs)):
        counts, errs = [], []
        for size in counts_of:
            sub = train[:size]
            bar.set_postfix_str(f"{cand.name}, {len(sub)} frames", refresh=True)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:  # said again with the candidate's name
                warnings.simplefilter("always")
                model = SparseGP(desc, cand.kernel, n_sparse=n_sparse).fit(sub)
                if optimize:
                    model.optimize_hyperparameters(optimize_noise=False)
            fit_time = time.perf_counter() - t0
            for w in caught:
                warnings.warn(f"{cand.name} ({len(sub)} frames): {w.message}", w.category, stacklevel=2)
            res = _evaluate(model, test)
            counts.append(len(sub))
            errs.append(res["force_rmse"])
            bar.update(1)
        rows.append({"name": cand.name, "kernel": repr(model.kernel_), "fit_time": fit_time, **res})
        curves[cand.name] = (np.array(counts), np.array(errs))
        if on_row is not None:
            bar.clear()
            on_row(rows[-1])
    bar.close()
    table = ComparisonTable(rows, curves)
    if plot:
        _plot_learning_curves(curves, plot, overwrite)
    return table


def _plot_learning_curves(curves: dict, path, overwrite=None) -> None:
    """PNG of force RMSE against training frames, one line per candidate."""
    from .calibration import _new_figure, _save  # no pyplot, no backend change

    fig = _new_figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    for name, (n, e) in curves.items():
        ax.plot(n, e, "o-", label=name)
    ax.set_xlabel("training frames")
    ax.set_ylabel("force RMSE on test (eV/Å)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    sizes = sorted({int(v) for n, _ in curves.values() for v in n})
    ax.set_xticks(sizes)  # (the sizes fitted, as plain numbers: not 2×10⁰)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    from .calibration.plots import _plain_log_ticks

    _plain_log_ticks(ax.yaxis, [v for _, e in curves.values() for v in e])
    ax.legend(fontsize=8)
    ax.set_title("learning curves")
    _save(fig, path, overwrite)


# --------------------------------------------------------------------------------------
# model selection by the evidence
# --------------------------------------------------------------------------------------
def _at_bound(kernel, tol: float = 1e-3) -> list[str]:
    """Names of the kernel's free hyperparameters within ``tol`` (in log) of a bound."""
    names = [h.name for h in kernel.hyperparameters if not h.fixed]
    if not names:
        return []
    theta, bounds = kernel.theta, kernel.bounds
    out = []
    for name, t, (lo, hi) in zip(names, theta, bounds):
        if abs(t - lo) <= tol or abs(t - hi) <= tol:
            out.append(name)
    return out


@dataclass
class EvidenceSelection:
    """Result of :func:`select_kernel_by_evidence`.

    Attributes
    ----------
    model : SparseGP
        The fitted model of the kernel with the largest log marginal likelihood, at its
        optimised hyperparameters.
    rows : list of dict
        One per candidate kernel, in the given order: ``kernel`` (repr after
        optimisation), ``log_marginal_likelihood``, ``noise`` (dict), ``at_bound`` (names
        of hyperparameters stuck at a bound), ``fit_time`` (s), ``l_max`` and ``sigma``
        (Å) of the candidate's SOAP.
    best_index : int
    """

    model: SparseGP
    rows: list[dict]
    best_index: int

    def __str__(self) -> str:
        w = max([len("kernel")] + [len(r["kernel"]) for r in self.rows])  # whole names, aligned
        lines = [f"{'':2s}{'kernel':{w}s} {'l_max':>5s} {'sigma':>5s} {'log evidence':>14s} {'F noise':>9s}  at bound"]
        for k, r in enumerate(self.rows):
            mark = "* " if k == self.best_index else "  "
            soap = f"{r.get('l_max', '-')!s:>5s} {r.get('sigma', '-')!s:>5s}"
            lines.append(
                f"{mark}{r['kernel']:{w}s} {soap} {r['log_marginal_likelihood']:14.2f} "
                f"{r['noise'].get('force', float('nan')):9.4g}  {', '.join(r['at_bound']) or '-'}"
            )
        return "\n".join(lines)

    __repr__ = __str__


def select_kernel_by_evidence(
    model: SparseGP,
    frames: Sequence[Atoms],
    kernels: Sequence | None = None,
    *,
    optimize_noise: bool = True,
    progress: bool = False,
) -> EvidenceSelection:
    """Fit ``model`` with each kernel and keep the one the training data prefer.

    Every candidate is fitted on the same ``frames`` with ``model``'s other settings
    (descriptor, noises, sparse set size and selection, ``random_state``; a template
    without a descriptor lets each candidate choose its own SOAP l_max and width by the
    evidence, as :meth:`SparseGP.fit` does (for a ``NormalizedDotProduct`` with its
    signal variance free; another kernel keeps its given variance while the SOAP is
    chosen), so the rows compare kernels each with their best SOAP, shown in the table;
    give the template a descriptor to compare them at one SOAP), its
    hyperparameters (and, with ``optimize_noise``, the label noises) are set by
    maximising the log marginal likelihood, and the candidate with the largest
    maximised log marginal likelihood wins. The targets (after the per-species energy
    baseline, which does not depend on the kernel) are identical for every candidate,
    so the evidences are comparable. Use it for choices no gradient reaches, such as
    the integer exponent ζ of :class:`~gpal.kernels.NormalizedDotProduct`.

    Parameters
    ----------
    model : SparseGP
        A template; it is not modified (each candidate is a new SparseGP with the same
        constructor parameters and another kernel).
    frames : list of ase.Atoms
        Labelled training frames.
    kernels : sequence of kernels, optional
        Default: ``NormalizedDotProduct(zeta=z)`` for z = 1, 2, 3, 4, 6, their signal
        variance free within ``SparseGP.fit``'s own range (1e-3 to 1e5).
    optimize_noise : bool, default True
        Also maximise over the energy/force/stress noise levels (recommended for a
        deterministic oracle: the noises then measure how far the model family is from
        the oracle's surface, which is what an honest predictive variance needs).
    progress : bool, default False
        Print one line per candidate to stderr.

    Returns
    -------
    EvidenceSelection
        ``.model`` is the fitted winner, its chosen kernel (and, with
        ``optimize_noise``, its chosen noises) set as its parameters, so a clone
        refitted on ``frames`` is the same model; ``.rows`` the evidences of all
        candidates.

    Warns
    -----
    UserWarning
        When the winner's hyperparameters sit at a bound (the evidence would rise further
        beyond it; widen the bound).
    """
    import sys

    if not isinstance(model, SparseGP):
        raise TypeError(f"model must be a SparseGP, got {type(model).__name__}")
    frames = list(frames)
    if not frames:
        raise ValueError("select_kernel_by_evidence needs at least one training frame")
    if kernels is None:  # (the signal variance free over fit's own range, not the kernel's default one)
        from .model.defaults import SIGNAL_VARIANCE_BOUNDS

        kernels = [NormalizedDotProduct(zeta=z, signal_variance_bounds=SIGNAL_VARIANCE_BOUNDS) for z in (1, 2, 3, 4, 6)]
    kernels = list(kernels)
    if not kernels:
        raise ValueError("kernels is empty")
    for k, kernel in enumerate(kernels):
        if not (hasattr(kernel, "clone") and hasattr(kernel, "theta")):
            raise TypeError(f"kernels[{k}] is not a gpal kernel (e.g. gpal.NormalizedDotProduct(zeta=2)), "
                            f"got {type(kernel).__name__}")
    params = model.get_params(deep=False)
    rows, best, best_model = [], None, None
    for k, kernel in enumerate(kernels):
        t0 = time.perf_counter()
        if (type(kernel) is NormalizedDotProduct and params.get("descriptor") is None
                and params.get("hyperparameters") == "evidence"):
            # its SOAP is chosen as SparseGP.fit chooses it for this ζ: with the signal
            # variance free (a given kernel's stays as given while the SOAP is chosen)
            cand = SparseGP(**{**params, "kernel": None})
            cand._zetas = (int(kernel.zeta),)
        else:
            cand = SparseGP(**{**params, "kernel": kernel.clone() if hasattr(kernel, "clone") else kernel})
        cand.fit(frames)
        cand.optimize_hyperparameters(optimize_noise=optimize_noise)
        lml = float(cand.log_marginal_likelihood())
        rows.append({
            "kernel": repr(cand.kernel_),
            "log_marginal_likelihood": lml,
            "noise": dict(cand.noise_),
            "at_bound": _at_bound(cand.kernel_),
            "fit_time": time.perf_counter() - t0,
            "l_max": getattr(cand.descriptor_, "l_max", None),
            "sigma": getattr(cand.descriptor_, "sigma", None),
        })
        if progress:
            print(f"[gpal] {rows[-1]['kernel']}: log evidence {lml:.2f}", file=sys.stderr)
        if best is None or lml > rows[best]["log_marginal_likelihood"]:
            best, best_model = k, cand
    if rows[best]["at_bound"]:
        warnings.warn(
            f"the selected kernel {rows[best]['kernel']} has "
            f"{', '.join(rows[best]['at_bound'])} at a bound of its range; the evidence "
            "may rise beyond it (widen the bound)",
            UserWarning,
            stacklevel=2,
        )
    if getattr(best_model, "_zetas", None) is not None:
        # the winner's ζ becomes its kernel parameter (signal variance free from the fitted
        # value, as chosen), so get_params, clone, a saved file and select_hyperparameters
        # keep it instead of choosing ζ again
        (zeta,) = best_model._zetas
        del best_model._zetas
        best_model.kernel = NormalizedDotProduct(zeta=zeta, signal_variance=float(best_model.kernel_.signal_variance))
    elif hasattr(best_model.kernel_, "clone"):
        # the optimised kernel becomes the parameter too (its signal variance was the
        # candidate's starting value): a clone refitted, or the saved file, is this model
        best_model.kernel = best_model.kernel_.clone()
    if optimize_noise:
        # so are the noises the evidence chose (a clone, a cross-validation or a refit of
        # the saved file had evaluated the template's noises instead)
        for group, value in best_model.noise_.items():
            setattr(best_model, f"{group}_noise", float(value))
    return EvidenceSelection(best_model, rows, best)
