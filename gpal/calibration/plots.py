"""Calibration and parity plots (PNG; a matplotlib ``Figure`` on an Agg canvas: no pyplot,
no backend change)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from scipy import stats

from ._checks import _check_error_std, _check_positive_int, _finite_array
from .metrics import _area_between, binned_rmse_rmv, calibration_curve

__all__ = ["plot_parity", "plot_calibration_curve", "plot_error_vs_uncertainty",
           "plot_z_histogram", "plot_learning_curve"]


def _new_figure(figsize=(4.5, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: the PNG text entry gpal's plots carry: a file with it is gpal's to replace
_SOFTWARE = "gpal"


def _plain_log_ticks(axis, values) -> None:
    """Label a log ``axis`` as plain numbers (``0.002``) at 1, 2 and 5 times the powers
    of ten (at the powers alone where ``values`` span more than three decades), and
    its minor ticks not at all: matplotlib labels the minor ticks of a log axis
    spanning one or two decades in scientific notation, which ran together
    (``2×10⁻³3×10⁻³4×10⁻³``)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    wide = v.size and v.max() > 1e3 * v.min()
    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def is_gpal_plot(path) -> bool:
    """True if ``path`` is a file a gpal plot function wrote: a PNG with its ``Software``
    text entry (within the header chunks before the image data), or a PDF, SVG, EPS or
    PS file whose creator is gpal (the formats whose metadata gpal writes; see
    :func:`_save`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - 4096, 0))
            tail = fh.read()
    except OSError:
        return False
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"tEXtSoftware\x00" + _SOFTWARE.encode() in head.split(b"IDAT", 1)[0]
    if head.startswith(b"%PDF-"):  # (the document information dictionary: near the end)
        mark = b"/Creator (" + _SOFTWARE.encode() + b")"
        return mark in tail or mark in head
    if head.startswith(b"%!PS"):
        return b"%%Creator: " + _SOFTWARE.encode() + b"\n" in head
    if b"<svg" in head:
        return re.search(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>" + _SOFTWARE.encode() + rb"</dc:title>",
                         head) is not None
    return False


#: formats whose files carry gpal's mark (:func:`is_gpal_plot`) and its metadata key
_MARKS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "eps": "Creator", "ps": "Creator"}


def _check_replace(path, overwrite: bool | None, what: str = "") -> Path:
    """``path`` as a Path; ``FileExistsError`` if it exists and may not be replaced: a
    file no gpal plot function wrote (``overwrite=None``), any (``False``)."""
    from ..io import check_replace

    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(os.fspath(path)).suffix[1:].lower()
    # (a suffix matplotlib does not write is written as PNG, marked)
    marked = fmt in _MARKS or fmt not in FigureCanvasBase.get_supported_filetypes()
    return check_replace(path, overwrite, is_gpal_plot,
                         "a plot gpal wrote" if marked else
                         f"a plot gpal can recognise (it marks the {', '.join(f.upper() for f in _MARKS)} files "
                         f"it writes, not {fmt.upper()})", prefix=what)


def _save(fig, path, overwrite: bool | None = None) -> Path:
    """Write ``fig`` to ``path`` whole (a temporary file, renamed): PNG, or the format its
    suffix names if matplotlib writes it (``.pdf``, ``.svg``). An existing file is
    replaced if gpal wrote it (:func:`is_gpal_plot`: a notebook cell run again; gpal
    marks PNG, PDF, SVG, EPS and PS files, not the bitmap formats, which need
    ``overwrite=True`` to be replaced) or with ``overwrite=True``; any other file (or
    any with ``overwrite=False``) raises ``FileExistsError`` and is left as it is."""
    from ..io import atomic_write

    path = _check_replace(path, overwrite)
    fmt = path.suffix[1:].lower()  # (the path as given: no suffix added)
    if fmt not in fig.canvas.get_supported_filetypes():
        fmt = "png"
    key = _MARKS.get(fmt)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, dpi=120, format=fmt, **({"metadata": {key: _SOFTWARE}} if key else {}))
    return path


def plot_parity(
    true,
    pred,
    path,
    *,
    std=None,
    label: str = "",
    units: str = "",
    title: str | None = None,
    overwrite: bool | None = None,
) -> Path:
    """Parity plot (predicted vs reference) with the y = x line, RMSE and MAE.

    Parameters
    ----------
    true, pred : array_like of the same shape (flattened)
    path : str or path-like
        PNG file to write. An existing file is replaced if a gpal plot function wrote
        it, else ``FileExistsError`` (``overwrite=True``: replaced whatever it is).
    std : array_like, optional
        Predicted std; drawn as error bars.
    label, units : str
        Axis label and units, e.g. ``"force component"``, ``"eV/Å"``.
    title : str, optional
    overwrite : bool or None, default None
        Whether an existing ``path`` is replaced (see ``path``).

    Returns
    -------
    pathlib.Path
    """
    t = _finite_array("true", true).ravel()
    p = _finite_array("pred", pred).ravel()
    if t.shape != p.shape:
        raise ValueError(
            f"true and pred must have the same size, got {t.size} and {p.size}"
        )
    if t.size == 0:
        raise ValueError("true and pred are empty: nothing to plot")
    if std is not None:
        _check_error_std(p - t, np.asarray(std).ravel())
    fig = _new_figure()
    ax = fig.add_subplot()
    if std is not None:
        ax.errorbar(
            t,
            p,
            yerr=np.asarray(std, dtype=float).ravel(),
            fmt="none",
            ecolor="0.7",
            lw=0.5,
            zorder=1,
        )
    ax.scatter(t, p, s=6, alpha=0.6, zorder=2)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
    err = p - t
    u = f" {units}" if units else ""
    ax.text(
        0.03,
        0.97,
        f"RMSE {np.sqrt(np.mean(err**2)):.3g}{u}\nMAE {np.mean(np.abs(err)):.3g}{u}",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )
    unit_txt = f" ({units})" if units else ""
    ax.set_xlabel(f"reference {label}{unit_txt}".replace("  ", " "))
    ax.set_ylabel(f"predicted {label}{unit_txt}".replace("  ", " "))
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path, overwrite)


def plot_calibration_curve(error, std, path, *, title: str | None = None, overwrite: bool | None = None) -> Path:
    """Observed vs expected coverage of central Gaussian intervals (ideal: diagonal).

    The legend gives the miscalibration area between the curve and the diagonal
    (:func:`gpal.calibration.calibration_curve`, 100 levels from 0.01 to 0.99).

    Parameters
    ----------
    error : array_like, any shape (flattened)
        ``prediction - reference``, e.g. force components in eV/Å.
    std : array_like, same shape as ``error``
        Predicted stds, same unit, > 0.
    path : str or path-like
        PNG file to write. An existing file is replaced if a gpal plot function wrote
        it, else ``FileExistsError`` (``overwrite=True``: replaced whatever it is).
    title : str, optional
    overwrite : bool or None, default None
        Whether an existing ``path`` is replaced (see ``path``).

    Returns
    -------
    pathlib.Path
        ``path``, written.

    Raises
    ------
    ValueError
        Shapes differ, ``error`` is empty, a value is NaN or infinite, or a std is not
        strictly positive.
    """
    expected, observed = calibration_curve(error, std)
    area = _area_between(expected, observed - expected)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.plot(expected, observed, lw=1.5, label=f"model (miscal. area {area:.3f})")
    ax.fill_between(expected, expected, observed, alpha=0.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected fraction in central interval")
    ax.set_ylabel("observed fraction")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path, overwrite)


def plot_error_vs_uncertainty(
    error, std, path, *, n_bins: int = 10, units: str = "", title: str | None = None,
    overwrite: bool | None = None,
) -> Path:
    """Binned RMSE vs RMV (equal-count std bins) with the ideal y = x line, log-log when
    the values span a decade or more, else linear from 0.

    The legend gives the ENCE, ``mean(|RMV - RMSE| / RMV)`` over the bins
    (:func:`gpal.calibration.binned_rmse_rmv`).

    Parameters
    ----------
    error : array_like, any shape (flattened)
        ``prediction - reference``, e.g. force components in eV/Å.
    std : array_like, same shape as ``error``
        Predicted stds, same unit, > 0.
    path : str or path-like
        PNG file to write. An existing file is replaced if a gpal plot function wrote
        it, else ``FileExistsError`` (``overwrite=True``: replaced whatever it is).
    n_bins : int, default 10
        Bins of equal count (at most one per sample).
    units : str, default ""
        Of ``error`` and ``std``, for the axis labels, e.g. ``"eV/Å"``.
    title : str, optional
    overwrite : bool or None, default None
        Whether an existing ``path`` is replaced (see ``path``).

    Returns
    -------
    pathlib.Path
        ``path``, written.

    Raises
    ------
    ValueError
        Shapes differ, ``error`` is empty, a value is NaN or infinite, a std is not
        strictly positive, or ``n_bins`` is not an integer >= 1.
    """
    rmv, rmse, count = binned_rmse_rmv(error, std, n_bins)
    ence = float(np.mean(np.abs(rmv - rmse) / rmv))
    fig = _new_figure()
    ax = fig.add_subplot()
    pos = rmse > 0
    lo = float(min(rmv.min(), rmse[pos].min() if pos.any() else rmv.min()))
    hi = float(max(rmv.max(), rmse.max()))
    ax.plot(
        [lo / 1.5, hi * 1.5],
        [lo / 1.5, hi * 1.5],
        "k--",
        lw=1,
        label="ideal (RMSE = RMV)",
    )
    ax.plot(
        rmv, np.where(pos, rmse, np.nan), "o-", ms=4, label=f"binned (ENCE {ence:.3f})"
    )
    if hi / lo >= 10:  # log axes over a decade or more; linear below (a log axis spanning
        ax.set_xscale("log")  # less than a decade had one labelled tick, or overlapping ones)
        ax.set_yscale("log")
        _plain_log_ticks(ax.xaxis, [lo / 1.5, hi * 1.5])
        _plain_log_ticks(ax.yaxis, [lo / 1.5, hi * 1.5])
    else:
        ax.lines[-1].set_ydata(rmse)  # (a bin of RMSE 0 has a place on a linear axis)
        ax.set_xlim(0, hi * 1.1)
        ax.set_ylim(0, hi * 1.1)
    u = f" ({units})" if units else ""
    ax.set_xlabel(f"RMV = sqrt(mean σ²){u}")
    ax.set_ylabel(f"RMSE{u}")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path, overwrite)


def plot_z_histogram(
    error, std, path, *, bins: int = 50, title: str | None = None, overwrite: bool | None = None,
) -> Path:
    """Histogram of z = error/std with the standard normal density overlaid (|z| beyond
    the 99.5 % quantile, or 4, is drawn in the edge bins; the legend says how many).

    The histogram spans ``±max(4, 99.5 % quantile of |z|)``; the legend also gives
    the ZMS, ``mean(z²)`` (1 when calibrated).

    Parameters
    ----------
    error : array_like, any shape (flattened)
        ``prediction - reference``, e.g. force components in eV/Å.
    std : array_like, same shape as ``error``
        Predicted stds, same unit, > 0.
    path : str or path-like
        PNG file to write. An existing file is replaced if a gpal plot function wrote
        it, else ``FileExistsError`` (``overwrite=True``: replaced whatever it is).
    bins : int, default 50
        Number of histogram bins.
    title : str, optional
    overwrite : bool or None, default None
        Whether an existing ``path`` is replaced (see ``path``).

    Returns
    -------
    pathlib.Path
        ``path``, written.

    Raises
    ------
    ValueError
        Shapes differ, ``error`` is empty, a value is NaN or infinite, a std is not
        strictly positive, or ``bins`` is not an integer >= 1.
    """
    e, s = _check_error_std(error, std)
    bins = _check_positive_int("bins", bins)
    z = e / s
    fig = _new_figure()
    ax = fig.add_subplot()
    lim = max(4.0, float(np.quantile(np.abs(z), 0.995)))
    beyond = int(np.count_nonzero(np.abs(z) > lim))
    ax.hist(
        np.clip(z, -lim, lim),
        bins=bins,
        range=(-lim, lim),
        density=True,
        alpha=0.6,
        label=f"z (ZMS {np.mean(z**2):.3g})"
        + (f"; {beyond} with |z| up to {np.abs(z).max():.3g} in the edge bins" if beyond else ""),
    )
    grid = np.linspace(-lim, lim, 400)
    ax.plot(grid, stats.norm.pdf(grid), "k-", lw=1.2, label="N(0, 1)")
    ax.set_xlabel("z = error / std")
    ax.set_ylabel("density")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path, overwrite)


def plot_learning_curve(
    steps,
    val_error,
    oracle_calls,
    path,
    *,
    tolerance: float | None = None,
    units: str = "",
    title: str | None = None,
    call_steps=None,
    error_label: str = "validation error",
    last_step: float | None = None,
    error_name: str | None = None,
    overwrite: bool | None = None,
) -> Path:
    """An error (log scale) and the cumulative oracle calls against MD step.

    Parameters
    ----------
    steps, val_error : array_like of shape (n_checks,)
        Where the error was measured and its value (may be empty when ``call_steps``
        gives the calls).
    oracle_calls : array_like
        Cumulative oracle calls, at ``steps`` or, if given, at ``call_steps`` (same
        length as the array it pairs with).
    path : str or path-like
        PNG file to write. An existing file is replaced if a gpal plot function wrote
        it, else ``FileExistsError`` (``overwrite=True``: replaced whatever it is).
    tolerance : float, optional
        Drawn as a horizontal line.
    units : str
        Of the error, e.g. "eV/Å".
    title : str, optional
    overwrite : bool or None, default None
        Whether an existing ``path`` is replaced (see ``path``).
    call_steps : array_like, optional
        Steps of the oracle-call counts when they are not the error's (the active
        learner: one per label).
    error_label : str, default "validation error"
        What the error is, in the legend.
    last_step : float, optional
        The calls' step line runs on to here (the run's last step).
    error_name : str, optional
        The error axis' name (default: ``error_label``).

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.ticker import MaxNLocator

    st = _finite_array("steps", steps).ravel()
    ve = _finite_array("val_error", val_error).ravel()
    oc = _finite_array("oracle_calls", oracle_calls).ravel()
    cs = st if call_steps is None else _finite_array("call_steps", call_steps).ravel()
    if st.size != ve.size or cs.size != oc.size or (ve.size == 0 and oc.size == 0) or (
            call_steps is None and st.size == 0):
        raise ValueError(
            f"steps and val_error, and the calls and their steps, must have the same lengths, and not all be "
            f"empty; got {st.size}, {ve.size}, {oc.size} calls at {cs.size} steps"
        )
    if np.any(ve < 0):
        raise ValueError("val_error must be non-negative")
    fig = _new_figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    ax.set_xlabel("MD step (per walker)")
    if ve.size:
        ax.plot(st, ve, "o-", color="C0", ms=3, label=error_label)
        if tolerance is not None:
            ax.axhline(float(tolerance), color="C0", ls=":", lw=1, label="tolerance")
        if np.all(ve > 0):
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis, ve)
        ax.set_ylabel(f"{error_name or error_label}{f' ({units})' if units else ''}", color="C0")
    ax2 = ax.twinx() if ve.size else ax
    if oc.size:
        x, y = list(cs), list(oc)
        if last_step is not None and last_step > x[-1]:
            x, y = x + [last_step], y + [y[-1]]
        ax2.step(x, y, where="post", color="C1", label="oracle calls")
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("oracle calls (cumulative)", color="C1")
    handles = [h for a in ([ax] if ax2 is ax else [ax, ax2]) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="upper center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path, overwrite)
