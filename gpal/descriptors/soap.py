"""SOAP power spectrum with analytic derivatives, reproducing dscribe's SOAP (gto).

``SOAP(species, r_cut, n_max, l_max, sigma, periodic, weighting)`` has exactly the
meaning of ``dscribe.descriptors.SOAP(species=..., r_cut=..., n_max=..., l_max=...,
sigma=..., rbf="gto", periodic=..., weighting=..., compression={"mode": "off"},
average="off")``: same features, same order, same values (checked against dscribe 2.1.2
in the tests). What gpal adds is derivatives on neighbour pairs (memory linear in atoms,
periodic cells and weighting supported), and an adjoint pass
(:meth:`SOAPExpansion.backward`) that gives forces and stress of ``E = sum_i G_i . X_i``
without forming any derivative array (DESIGN.md §2, "force trick").

The prediction of an MD step (``SparseGP.predict``) runs both passes block of centres
by block of centres (``SOAP._fused_step``): the expansion keeps each pair's radial
functions, their gradients and the harmonics (~8 MB per block), the caller forms the
block's kernel gradient, and the back-pass contracts it with the kept terms instead
of recomputing them (the harmonics' gradients follow from the harmonics one degree
lower). Same results as ``expand`` then ``backward`` up to summation order.

Definition (re-derived from dscribe's documentation and source, see gpal/descriptors/_soap_jit.py):

* Radial basis: GTOs ``r^l exp(-alpha_{k,l} r^2)`` with
  ``alpha_{k,l} = -ln(1e-3 / a_k^l) / a_k^2``, ``a_k`` evenly spaced in [1, r_cut],
  Löwdin-orthonormalised per l (``beta = S^{-1/2}``).
* Each neighbour is a Gaussian of width ``sigma`` (``eta = 1 / (2 sigma^2)``), weighted
  by ``weighting``; its projection on GTO x real spherical harmonic is closed-form:
  ``pi^{3/2} eta^l / (eta + alpha)^{l + 3/2} exp(-alpha eta r^2 / (eta + alpha))
  r^l Y_lm``.
* Neighbours: all atoms (periodic images included if ``periodic``) within
  ``r_cut + sigma sqrt(-2 ln 1e-3)`` (inclusive), the central atom included (it only
  adds to l = 0). With ``"poly"`` weighting, neighbours beyond ``r0`` have zero weight
  and are skipped exactly.
* Power spectrum ``p = pi sqrt(8 / (2l + 1)) sum_m c_{Z1 n l m} c_{Z2 n' l m}``, ordered
  by species pair (Z1 <= Z2, atomic-number order), then l, then n, n' (n <= n' when
  Z1 == Z2).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import scipy.linalg
from ase import Atoms
from scipy.special import gamma

from . import _soap_jit as jit
from .._threads import _blas_limit
from .._threads import policy as _thread_policy
from ..exceptions import MissingCellError
from .._validation import check_frame_arrays, periodic_vectors_ok
from .base import Descriptor, PairDerivatives
from .neighbors import PairCache

__all__ = ["SOAP", "SOAPDerivatives", "SOAPExpansion", "pair_forces", "pair_stress"]

#: Largest supported l_max (as dscribe).
L_MAX_SUPPORTED = 20
_WEIGHTING_FUNCTIONS = ("poly", "pow", "exp")
_WEIGHTING_KEYS = ("function", "r0", "c", "m", "d", "threshold", "w0")
# dscribe's cutoff padding: the Gaussians decay to this value at the cutoff
_GAUSS_THRESHOLD = 1e-3
# chunks of centres per thread, handed out dynamically to the numba threads
_CHUNKS_PER_THREAD = 16
# pair derivatives held at once by SOAP.derivative_blocks (the rows of a large cell)
_DERIVATIVE_BLOCK_BYTES = 64e6
# bytes of kept pair terms per block of centres of SOAP._fused_step: 16 MB, ~450 centres
# of fcc Cu at n_max 8, l_max 6, r_cut 5 Å (0.9 kB per pair, 42 pairs per centre), so
# the kernel's products have enough rows for BLAS and the per-block Python is paid
# seldom; measured (4,000 atoms, 500 sparse points, 2 MB L2 and a large L3): one thread
# 30.2 / 29.3 / 28.7 / 28.7 µs/atom for 4 / 8 / 16 / 32 MB, two threads (wall) 16.3 ->
# 15.8 µs/atom for 8 -> 16 MB; a 108-atom cell is one block either way
_FUSED_STORE_BYTES = 16 << 20


# the constructor arguments that the built state (basis, tables, layout) follows from
_PARAMETERS = frozenset({"species", "r_cut", "n_max", "l_max", "sigma", "periodic", "weighting"})


# --- results ---
@dataclass
class SOAPDerivatives(PairDerivatives):
    """SOAP descriptor and its derivatives on neighbour pairs (:class:`PairDerivatives`).

    Pairs ``p`` are (centre ``i``, neighbour image ``j + shift``), sorted by centre,
    without the zero-distance self pair. Then
    ``dX_i / dr_j = sum_{p: c=i, n=j} dX_p - delta_ij sum_{p: c=i} dX_p``.
    """

    def to_dense(self) -> np.ndarray:
        """dscribe's layout, ``[i, j] = dX_i/dr_j`` (``attach=True``).

        Returns
        -------
        ndarray of shape (n_atoms, n_atoms, 3, n_features)
        """
        return jit.pairs_to_dense(self.dX, self.center, self.neighbor, self.n_atoms)


@dataclass
class SOAPExpansion:
    """Forward pass of the SOAP expansion, kept for the adjoint (force trick).

    Attributes
    ----------
    descriptor : ndarray of shape (n_atoms, n_features)
    center, neighbor : ndarray of shape (n_pairs,), int64
    vector : ndarray of shape (n_pairs, 3)
    offsets : ndarray of shape (n_atoms + 1,), int64
    numbers : ndarray of shape (n_atoms,), int64
    volume : float
    coefficients : ndarray of shape (n_atoms, n_species, (l_max + 1)**2, n_max)
        Density expansion coefficients (scaled so that the power spectrum prefactor
        is ``pi sqrt(8 / (2l + 1))``).
    """

    descriptor: np.ndarray
    center: np.ndarray
    neighbor: np.ndarray
    vector: np.ndarray
    offsets: np.ndarray
    numbers: np.ndarray
    volume: float
    coefficients: np.ndarray = field(repr=False)
    _species_index: np.ndarray = field(repr=False)
    _soap: "SOAP" = field(repr=False)

    @property
    def n_atoms(self) -> int:
        return self.descriptor.shape[0]

    def backward(self, G) -> np.ndarray:
        """Gradient of ``E = sum_i G[i] . X[i]`` with respect to every pair vector.

        Parameters
        ----------
        G : array_like of shape (n_atoms, n_features) or (n_atoms, n_features, K)
            With a third axis, K energies ``E_k = sum_i G[i, :, k] . X[i]`` in one
            pass: each pair's radial functions and harmonics are computed once and
            contracted K times (what K kernel columns of a frame need).

        Returns
        -------
        dE_dvec : ndarray of shape (n_pairs, 3) or (n_pairs, 3, K)
            ``dE_dvec[p] = sum_f G[center[p], f] dX[p, :, f]``, computed without
            forming dX. Feed it to :func:`pair_forces` and :func:`pair_stress`.
        """
        G = np.asarray(G, dtype=np.float64)
        if G.ndim not in (2, 3) or G.shape[:2] != self.descriptor.shape:
            raise ValueError(
                f"G must have shape {self.descriptor.shape} (n_atoms, n_features) or "
                f"{self.descriptor.shape + ('K',)}, got {G.shape}."
            )
        if G.ndim == 3:
            return self.backward_stacked(np.moveaxis(G, 2, 1))
        return self._soap._backward(self, np.ascontiguousarray(G))

    def backward_stacked(self, G) -> np.ndarray:
        """:meth:`backward` of K gradients laid out as G[i, k, :] (no transposed copy).

        Parameters
        ----------
        G : array_like of shape (n_atoms, K, n_features)

        Returns
        -------
        dE_dvec : ndarray of shape (n_pairs, 3, K)
        """
        G = np.ascontiguousarray(G, dtype=np.float64)
        N, F = self.descriptor.shape
        if G.ndim != 3 or G.shape[0] != N or G.shape[2] != F:
            raise ValueError(f"G must have shape ({N}, K, {F}) (n_atoms, K, n_features), got {G.shape}.")
        return self._soap._backward(self, G)


# --- module functions ---
def pair_forces(dE_dvec, center, neighbor, n_atoms: int) -> np.ndarray:
    """Forces ``-dE/dr`` from gradients with respect to pair vectors.

    Parameters
    ----------
    dE_dvec : array_like of shape (n_pairs, 3) or (n_pairs, 3, n_outputs)
    center, neighbor : array_like of shape (n_pairs,), int
    n_atoms : int

    Returns
    -------
    forces : ndarray of shape (n_atoms, 3) or (n_atoms, 3, n_outputs)
        ``F_j = -(sum_{p: neighbor=j} dE_dvec_p - sum_{p: center=j} dE_dvec_p)``.
    """
    g = np.asarray(dE_dvec, dtype=np.float64)
    if g.ndim not in (2, 3) or g.shape[1] != 3:
        raise ValueError(f"dE_dvec must have shape (n_pairs, 3[, M]), got {g.shape}.")
    center = np.ascontiguousarray(center, dtype=np.int64)
    neighbor = np.ascontiguousarray(neighbor, dtype=np.int64)
    if center.shape != (g.shape[0],) or neighbor.shape != (g.shape[0],):
        raise ValueError("center and neighbor must have shape (n_pairs,).")
    flat = np.ascontiguousarray(g.reshape(g.shape[0], int(np.prod(g.shape[1:]))))  # 0 pairs too
    out = jit.pair_forces_kernel(flat, center, neighbor, int(n_atoms))
    return out.reshape((int(n_atoms),) + g.shape[1:])


def pair_stress(dE_dvec, vector, volume: float) -> np.ndarray:
    """Virial stress ``(1/V) sum_p dE_dvec_p (x) vector_p``, symmetrised, Voigt order.

    Parameters
    ----------
    dE_dvec : array_like of shape (n_pairs, 3) or (n_pairs, 3, n_outputs)
    vector : array_like of shape (n_pairs, 3)
    volume : float
        Cell volume (Å^3).

    Returns
    -------
    stress : ndarray of shape (6,) or (6, n_outputs)
        (xx, yy, zz, yz, xz, xy), ASE sign: ``stress = (1/V) dE/dstrain``.

    Raises
    ------
    MissingCellError
        If ``volume`` is not a positive finite number (no cell).
    """
    if not (np.isfinite(volume) and volume > 0):
        raise MissingCellError(
            f"Stress needs a periodic cell with a positive volume, got volume={volume}."
        )
    g = np.asarray(dE_dvec, dtype=np.float64)
    v = np.asarray(vector, dtype=np.float64)
    if g.ndim not in (2, 3) or g.shape[1] != 3 or v.shape != (g.shape[0], 3):
        raise ValueError(
            f"dE_dvec must have shape (n_pairs, 3[, M]) and vector (n_pairs, 3); got "
            f"{g.shape} and {v.shape}."
        )
    if g.ndim == 2:
        s = g.T @ v  # [a, b] = sum_p g_pa v_pb
    else:
        s = np.moveaxis(np.tensordot(g, v, axes=([0], [0])), 2, 1)  # one BLAS product
    return virial_stress(s, volume)


def virial_stress(virial, volume: float) -> np.ndarray:
    """Voigt stress (xx, yy, zz, yz, xz, xy) from an unsymmetrised virial.

    Parameters
    ----------
    virial : ndarray of shape (3, 3) or (3, 3, n_outputs)
        ``[a, b] = sum_p dE/dvector[p, a] vector[p, b]``.
    volume : float
        Cell volume (Å^3).

    Returns
    -------
    ndarray of shape (6,) or (6, n_outputs)
        The symmetric part over the volume, ASE sign.
    """
    s = 0.5 * (virial + np.swapaxes(virial, 0, 1)) / volume
    return s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


# --- SOAP ---
def _parse_species(species) -> np.ndarray:
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(species, (str, int, np.integer)):
        species = [species]
    try:
        items = list(species)
    except TypeError:
        raise ValueError(
            f"species must be a list of symbols or atomic numbers, got {species!r}."
        )
    if len(items) == 0:
        raise ValueError("species must contain at least one chemical species.")
    numbers = set()
    for s in items:
        if isinstance(s, (bool, np.bool_)):
            raise ValueError(f"Invalid species {s!r}.")
        if isinstance(s, str):
            if s not in atomic_numbers:
                raise ValueError(f"Unknown chemical symbol {s!r} in species.")
            numbers.add(int(atomic_numbers[s]))
        elif isinstance(s, (int, np.integer)):
            if not 0 < int(s) < len(chemical_symbols):
                raise ValueError(f"Invalid atomic number {s} in species.")
            numbers.add(int(s))
        else:
            raise ValueError(
                f"Invalid species {s!r}: give chemical symbols or atomic numbers."
            )
    return np.array(sorted(numbers), dtype=np.int64)


def _number(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.number)
    ):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    return value


def poly_weighting(r0) -> dict:
    """gpal's smooth cutoff: dscribe's ``poly`` weighting (c = 1, m = 1), which takes every
    neighbour's weight smoothly to zero at ``r0`` (Å), the weighting of gpal's default
    descriptor and of every SOAP the command line and :func:`gpal.compare_kernels` build."""
    return {"function": "poly", "r0": r0, "c": 1, "m": 1}


def _check_weighting(weighting) -> dict | None:
    """Validated copy of the weighting dict (floats), or None."""
    if weighting is None:
        return None
    if not isinstance(weighting, dict):
        raise ValueError(
            f"weighting must be a dict or None, got {type(weighting).__name__}."
        )
    if len(weighting) == 0:
        return None
    unknown = set(weighting) - set(_WEIGHTING_KEYS)
    if unknown:
        raise ValueError(
            f"Unknown weighting keys {sorted(unknown)}; "
            f"valid keys are {list(_WEIGHTING_KEYS)}."
        )
    out: dict[str, Any] = {}
    if "w0" in weighting and weighting["w0"] is not None:
        w0 = _number(weighting["w0"], "weighting['w0']")
        if w0 < 0:
            raise ValueError("Define w0 >= 0 in weighting.")
        out["w0"] = w0
    func = weighting.get("function")
    if func is not None:
        if func not in _WEIGHTING_FUNCTIONS:
            raise ValueError(
                f"Unknown weighting function {func!r}. Valid choices: "
                f"{', '.join(repr(f) for f in _WEIGHTING_FUNCTIONS)}."
            )
        out["function"] = func
        required = {
            "poly": ("r0", "c", "m"),
            "pow": ("r0", "c", "d", "m"),
            "exp": ("r0", "c", "d"),
        }
        for key in required[func]:
            if weighting.get(key) is None:
                raise ValueError(
                    f"Weighting function {func!r} needs the parameters "
                    f"{list(required[func])}; "
                    f"{key!r} is missing."
                )
            out[key] = _number(weighting[key], f"weighting[{key!r}]")
        if out["r0"] <= 0:
            raise ValueError("Define r0 > 0 in weighting.")
        for key in ("c", "m", "d"):
            if key in out and out[key] < 0:
                raise ValueError(f"Define {key} >= 0 in weighting.")
        if func == "pow" and out["d"] == 0 and "w0" not in out:
            raise ValueError("weighting 'pow' with d = 0 gives the centre (distance 0) an infinite "
                             "weight: set d > 0 or w0.")
        if func in ("pow", "exp"):
            out["threshold"] = _number(
                weighting.get("threshold", 1e-2), "weighting['threshold']"
            )
            if out["threshold"] <= 0:
                raise ValueError("Define threshold > 0 in weighting.")
    elif set(weighting) - {"w0"}:
        raise ValueError(
            "weighting parameters were given without 'function'; valid functions: "
            f"{', '.join(repr(f) for f in _WEIGHTING_FUNCTIONS)}."
        )
    return out or None


def _infer_r_cut(weighting: dict | None) -> float:
    func = None if weighting is None else weighting.get("function")
    if func is None:
        raise ValueError(
            "Either weighting (with a function) or r_cut need to be defined."
        )
    r0 = weighting["r0"]
    c = weighting["c"]
    if func == "poly":
        return r0
    t = weighting["threshold"]
    d = weighting["d"]
    if func == "pow":
        m = weighting["m"]
        if c / t - d <= 0 or m == 0:
            raise ValueError(
                "Cannot infer r_cut from this 'pow' weighting; give r_cut."
            )
        return r0 * (c / t - d) ** (1.0 / m)
    if c / t - d <= 1:
        raise ValueError("Cannot infer r_cut from this 'exp' weighting; give r_cut.")
    return r0 * math.log(c / t - d)


def gto_basis(r_cut: float, n_max: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """GTO exponents and Löwdin coefficients of dscribe's radial basis.

    Returns
    -------
    alphas : ndarray of shape (l_max + 1, n_max)
    betas : ndarray of shape (l_max + 1, n_max, n_max)
        ``g_{nl}(r) = sum_k betas[l, n, k] r^l exp(-alphas[l, k] r^2)``, orthonormal on
        ``[0, inf)`` with weight ``r^2``.
    """
    a = np.linspace(1.0, r_cut, n_max)
    alphas = np.zeros((l_max + 1, n_max))
    betas = np.zeros((l_max + 1, n_max, n_max))
    for ell in range(l_max + 1):
        al = -np.log(_GAUSS_THRESHOLD / a**ell) / a**2
        # overlap of r^l e^{-a r^2} functions:
        # Gamma(l + 3/2) / (2 (a_i + a_j)^{l + 3/2})
        s = 0.5 * gamma(ell + 1.5) * np.add.outer(al, al) ** (-ell - 1.5)
        with warnings.catch_warnings():
            # (from r_cut ~20-30 Å on the overlap is singular to working precision: the
            # basis would be noise, so it is an error, once, not a LinAlgWarning per l)
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            try:
                # on one BLAS thread: the overlap is badly conditioned, and a summation
                # order that followed the thread count changed the basis by ~5e-12, so a
                # model saved after a two-thread fit predicted differently once loaded
                with _blas_limit(1):
                    # LAPACK's reciprocal condition estimate of the overlap (1-norm), checked
                    # here: only scipy >= 1.17's inv warns of it itself
                    lu, _, info = scipy.linalg.lapack.dgetrf(s)
                    rcond = scipy.linalg.lapack.dgecon(lu, np.abs(s).sum(axis=0).max())[0] if info == 0 else 0.0
                    if not rcond >= np.finfo(float).eps:
                        raise scipy.linalg.LinAlgWarning(f"the overlap's reciprocal condition number is {rcond:.3g}")
                    b = scipy.linalg.sqrtm(scipy.linalg.inv(s))
            except scipy.linalg.LinAlgWarning as exc:
                raise ValueError(f"the GTO radial basis for r_cut={r_cut} Å, n_max={n_max} is singular to "
                                 f"working precision ({exc}); is r_cut in Å? (lower n_max or r_cut)") from None
        if np.iscomplexobj(b):
            if np.abs(b.imag).max() > 1e-10 * np.abs(b.real).max():
                raise ValueError(
                    "Could not orthonormalise the GTO radial basis in real numbers; "
                    f"lower n_max (={n_max}) or increase r_cut (={r_cut})."
                )
            b = b.real
        if not np.all(np.isfinite(b)):
            raise ValueError(
                f"The GTO radial basis is numerically singular for n_max={n_max}, "
                f"r_cut={r_cut}; lower n_max or increase r_cut."
            )
        alphas[ell] = al
        betas[ell] = b
    return alphas, betas


def _sh_tables(l_max: int):
    """Normalisation and recurrence tables of the real solid harmonics."""
    L1 = l_max + 1
    K = np.zeros((L1, L1))
    qmm = np.ones(L1)
    c1 = np.zeros((L1, L1))
    c2 = np.zeros((L1, L1))
    for m in range(1, L1):
        qmm[m] = qmm[m - 1] * (2 * m - 1)
    for ell in range(L1):
        for m in range(ell + 1):
            norm = math.sqrt(
                (2 * ell + 1)
                / (4 * math.pi)
                * math.exp(math.lgamma(ell - m + 1) - math.lgamma(ell + m + 1))
            )
            K[ell, m] = norm * (math.sqrt(2.0) if m > 0 else 1.0)
            if ell >= m + 2:
                c1[ell, m] = (2 * ell - 1) / (ell - m)
                c2[ell, m] = (ell + m - 1) / (ell - m)
    return K, qmm, c1, c2


class SOAP(Descriptor):
    """Smooth Overlap of Atomic Positions power spectrum (dscribe's gto SOAP), in numba.

    Parameters
    ----------
    species : sequence of str or int
        All chemical species the descriptor will ever see (symbols or atomic numbers).
    r_cut : float or None, default None
        Radial cutoff (Å), > 1. May be None when ``weighting`` has a function, in which
        case it is inferred as dscribe does (``"poly"``: r0). With ``"poly"`` weighting
        the neighbours are also bounded by ``r0`` (``cutoff_``): to change the cutoff,
        change ``weighting["r0"]`` with ``r_cut`` (a grid over ``r_cut`` alone changes
        only the radial basis).
    n_max : int
        Number of radial basis functions, >= 1. Required (the keyword's default None
        follows dscribe's signature).
    l_max : int
        Maximum degree of the spherical harmonics, 0 <= l_max <= 20. Required.
    sigma : float, default 1.0
        Width (Å) of the Gaussian atomic densities.
    periodic : bool, default False
        Respect the periodicity of the atoms (their ``pbc``), as dscribe does; atoms
        with a periodic direction need a non-degenerate cell. Atoms without one are
        isolated, with or without a cell (dscribe asks for a cell here). With False
        the ``pbc`` of the atoms is ignored: every structure is an isolated cluster.
    weighting : dict or None
        dscribe's weighting of the atomic densities:

        * ``{"function": "poly", "r0", "c", "m"}``:
          ``c (1 + 2 (r/r0)^3 - 3 (r/r0)^2)^m`` for r <= r0, else 0 (smooth: the one
          for MD);
        * ``{"function": "pow", "r0", "c", "d", "m"}``: ``c / (d + (r/r0)^m)``;
        * ``{"function": "exp", "r0", "c", "d"}``: ``c / (d + exp(-r/r0))``;
        * and/or ``"w0"``: the weight of the central atom's own density (overrides the
          function there).
    rbf, average, compression, sparse, dtype : optional
        dscribe's other settings, accepted so that the keyword arguments of a
        ``dscribe.descriptors.SOAP`` call build gpal's: only the values gpal computes
        (``"gto"``, ``"off"``, no compression (None or ``{"mode": "off"}``), dense
        rows (False), ``"float64"``) are taken, any other is a ValueError that says so.
        They are not parameters of the descriptor (``get_params`` leaves them out).

    Attributes
    ----------
    species_numbers_ : ndarray of shape (n_species,)
        Sorted atomic numbers (dscribe's order).
    cutoff_ : float
        Neighbour cutoff actually used (Å): ``r_cut + sigma sqrt(-2 ln 1e-3)``, or
        ``min(that, r0)`` with ``"poly"`` weighting (weights beyond r0 are exactly 0).

    Examples
    --------
    >>> import numpy as np
    >>> from ase.build import bulk
    >>> from gpal.descriptors import SOAP, pair_forces
    >>> soap = SOAP(["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5, periodic=True,
    ...             weighting={"function": "poly", "r0": 5.0, "c": 1, "m": 1})
    >>> atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    >>> soap.create(atoms).shape
    (4, 252)
    >>> exp = soap.expand(atoms)
    >>> G = np.ones_like(exp.descriptor)
    >>> g = exp.backward(G)                      # (n_pairs, 3), no dX formed
    >>> pair_forces(g, exp.center, exp.neighbor, len(atoms)).shape
    (4, 3)
    """

    def __init__(
        self,
        species: Sequence[str | int],
        r_cut: float | None = None,
        n_max: int | None = None,
        l_max: int | None = None,
        sigma: float = 1.0,
        periodic: bool = False,
        weighting: dict | None = None,
        *,
        rbf: str = "gto",
        average: str = "off",
        compression: dict | None = None,
        sparse: bool = False,
        dtype: str = "float64",
    ):
        _check_dscribe_settings(rbf, average, compression, sparse, dtype)
        object.__setattr__(self, "_ready", False)  # (parameters set below do not rebuild one by one)
        self.species = species
        self.r_cut = r_cut
        self.n_max = n_max
        self.l_max = l_max
        self.sigma = sigma
        self.periodic = periodic
        self.weighting = weighting
        self._setup()
        object.__setattr__(self, "_ready", True)

    # --- parameters ---
    def __setattr__(self, name: str, value) -> None:
        """A parameter set on a built descriptor (``soap.l_max = 4``) rebuilds what follows
        from it (radial basis, tables, feature layout), as :meth:`set_params` does; a value
        SOAP refuses is a ValueError and leaves the descriptor as it was. (Without this the
        compiled kernels read tables of the old shape: wrong features, or a crash.)"""
        if name not in _PARAMETERS or not self.__dict__.get("_ready", False):
            object.__setattr__(self, name, value)
            return
        old = self.__dict__.get(name)
        object.__setattr__(self, name, value)
        try:
            self._setup()
        except Exception:
            object.__setattr__(self, name, old)
            self._setup()
            raise

    @property
    def species_numbers_(self) -> np.ndarray:
        """Sorted atomic numbers, ndarray of shape (n_species,) (dscribe's order)."""
        return self._species_numbers

    @property
    def r_cut_(self) -> float:
        """The radial basis's cutoff in use (Å): ``r_cut``, or the one the weighting implies."""
        return self._r_cut_used

    @property
    def sigma_(self) -> float:
        """Width of the Gaussian atomic densities in use (Å)."""
        return self._sigma_used

    @property
    def alphas_(self) -> np.ndarray:
        """GTO exponents (Å⁻²), ndarray of shape (l_max + 1, n_max) (:func:`gto_basis`)."""
        return self._alphas

    @property
    def betas_(self) -> np.ndarray:
        """GTO orthonormalisation coefficients, ndarray of shape (l_max + 1, n_max, n_max)."""
        return self._betas

    @property
    def cutoff_(self) -> float:
        """Neighbour cutoff actually used (Å) (see the class docstring)."""
        return self._cutoff

    def _setup(self) -> None:
        self._species_numbers = _parse_species(self.species)
        for name in ("n_max", "l_max"):
            v = getattr(self, name)
            if v is None:
                raise ValueError(f"{name} is required (an integer), as in dscribe's SOAP.")
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}.")
        if self.n_max < 1:
            raise ValueError(
                f"Must have at least one radial basis function: n_max={self.n_max}."
            )
        if self.l_max < 0:
            raise ValueError(f"l_max cannot be negative: l_max={self.l_max}.")
        if self.l_max > L_MAX_SUPPORTED:
            raise ValueError(
                f"The maximum supported l_max is {L_MAX_SUPPORTED}, "
                f"got l_max={self.l_max}."
            )
        sigma = _number(self.sigma, "sigma")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got sigma={self.sigma}.")
        if not isinstance(self.periodic, (bool, np.bool_)):
            raise ValueError(f"periodic must be True or False, got {self.periodic!r}.")
        def checked(r_cut):
            if r_cut <= 1:
                raise ValueError("r_cut must be larger than 1 Å for the GTO radial basis, "
                                 f"got r_cut={r_cut}.")
            return r_cut

        # a given r_cut before the weighting (whose r0 is often r_cut itself)
        r_cut = None if self.r_cut is None else checked(_number(self.r_cut, "r_cut"))
        self._weighting = _check_weighting(self.weighting)
        if r_cut is None:
            r_cut = checked(_infer_r_cut(self._weighting))
        self._r_cut_used = r_cut
        self._sigma_used = sigma
        n, L = int(self.n_max), int(self.l_max)
        self._alphas, self._betas = gto_basis(r_cut, n, L)

        # Gaussian-density projection: A = -alpha eta / (eta + alpha),
        # B = pi^{3/2} eta^{-3/2} beta (1 + alpha/eta)^{-(l + 3/2)}
        eta = 1.0 / (2.0 * sigma**2)
        ls = np.arange(L + 1)[:, None]
        one = 1.0 / (1.0 + self.alphas_ / eta)  # (L+1, n)
        self._A = np.ascontiguousarray((-self.alphas_ * one).ravel())  # [l * n_max + k]
        fac = math.pi**1.5 * eta**-1.5 * one ** (ls + 1.5)  # (L+1, k)
        B = self.betas_ * fac[:, None, :]  # [l, n, k]
        self._BT = np.ascontiguousarray(np.swapaxes(B, 1, 2))  # [l, k, n]
        # B * A of the radial derivative (pair-batched kernels): BAT[l, k, n]
        self._BAT = np.ascontiguousarray(self._BT * self._A.reshape(L + 1, n)[:, :, None])
        self._prel = np.pi * np.sqrt(8.0 / (2.0 * np.arange(L + 1) + 1.0))
        self._shK, self._shQmm, self._shC1, self._shC2 = _sh_tables(L)

        # weighting
        w = self._weighting or {}
        func = w.get("function")
        self._wtype = {
            None: jit.W_NONE,
            "poly": jit.W_POLY,
            "pow": jit.W_POW,
            "exp": jit.W_EXP,
        }[func]
        self._wpar = np.array(
            [w.get("r0", 1.0), w.get("c", 1.0), w.get("m", 0.0), w.get("d", 0.0)]
        )
        if func is None:
            w_func0 = 1.0
        elif func == "poly":
            w_func0 = w["c"]
        elif func == "pow":
            w_func0 = w["c"] / w["d"] if w["d"] > 0 else math.inf
        else:
            w_func0 = w["c"] / (w["d"] + 1.0)
        self._w_zero = float(w.get("w0", w_func0))  # weight of anything at distance 0
        self._self0 = np.ascontiguousarray(B[0].sum(axis=1) * self._shK[0, 0])

        pad = sigma * math.sqrt(-2.0 * math.log(_GAUSS_THRESHOLD))
        cutoff = r_cut + pad
        if func == "poly":
            cutoff = min(cutoff, w["r0"])
        self._cutoff = float(cutoff)
        self._pair_cache = PairCache(self.cutoff_)

        # feature layout
        S = len(self.species_numbers_)
        nsym = n * (n + 1) // 2
        self._pair_off = np.zeros((S, S), dtype=np.int64)
        off = 0
        for s in range(S):
            for t in range(s, S):
                self._pair_off[s, t] = self._pair_off[t, s] = off
                off += (L + 1) * (nsym if s == t else n * n)
        self._n_features = off
        self._tri = np.zeros((n, n), dtype=np.int64)
        k = 0
        for a in range(n):
            for b in range(a, n):
                self._tri[a, b] = self._tri[b, a] = k
                k += 1
        self._z_to_index = np.full(max(self.species_numbers_) + 1, -1, dtype=np.int64)
        self._z_to_index[self.species_numbers_] = np.arange(S)
        # constant arguments of the numba kernels (see gpal/descriptors/_soap_jit.py)
        self._radial_args = (self._A, self._BT, self._wtype, self._wpar, self._w_zero)
        self._layout_args = (
            self._shK, self._shQmm, self._shC1, self._shC2, self._prel,
            self._pair_off, self._tri,
        )  # fmt: skip

    def get_number_of_features(self) -> int:
        """Number of features, ``(S n)(S n + 1)/2 (l_max + 1)`` for S species."""
        return self._n_features

    def get_location(self, species) -> slice:
        """The features of one pair of species, as dscribe's ``SOAP.get_location``.

        Parameters
        ----------
        species : (str or int, str or int)
            Two chemical symbols or atomic numbers, in either order.

        Returns
        -------
        slice
            The columns of ``create``'s output that belong to the pair.
        """
        try:
            if isinstance(species, str):  # ("Cu" unpacked as "C", "u")
                raise TypeError
            s, t = species
        except (TypeError, ValueError):
            raise ValueError(f"species must be a pair of species, e.g. ('Cu', 'Cu'), got {species!r}") from None
        s, t = sorted(self._species_index(x) for x in (s, t))
        n, L = self.n_max, self.l_max
        off = int(self._pair_off[s, t])
        return slice(off, off + (L + 1) * (n * (n + 1) // 2 if s == t else n * n))

    def _species_index(self, z) -> int:
        from ase.data import atomic_numbers

        number = atomic_numbers.get(z, -1) if isinstance(z, str) else int(z)
        if not 0 <= number < len(self._z_to_index) or self._z_to_index[number] < 0:
            raise ValueError(f"species {z!r} is not one of this descriptor's species "
                             f"{[int(x) for x in self.species_numbers_]}")
        return int(self._z_to_index[number])

    def neighbor_columns(self, z: int) -> np.ndarray:
        """The features a neighbour of species ``z`` can change: every pair with ``z``.

        The pair derivatives of a neighbour of species ``z`` are zero outside these
        columns (:meth:`derivatives`), which the training rows use to skip them.

        Returns
        -------
        ndarray of int, shape (n_columns,), sorted
        """
        i = self._species_index(z)
        cols = [np.arange(self._n_features)[self.get_location((self.species_numbers_[i], t))]
                for t in self.species_numbers_]
        return np.sort(np.concatenate(cols))

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments (JSON-serialisable; scikit-learn's protocol).

        ``species`` are atomic numbers and ``sigma`` a float, so ``SOAP(**soap.get_params())``
        is the same descriptor. ``r_cut`` is None when the weighting implies it (the
        value in use is ``r_cut_``), so that a later ``set_params(weighting=...)``, a
        ``clone`` or a grid over ``descriptor__weighting`` moves it with the weighting
        (a resolved number had kept the first weighting's cutoff). ``deep`` is accepted
        for scikit-learn (SOAP has no sub-estimators).
        """
        return {
            "species": [int(z) for z in self.species_numbers_],
            "r_cut": None if self.r_cut is None else float(self.r_cut_),
            "n_max": int(self.n_max),
            "l_max": int(self.l_max),
            "sigma": float(self.sigma_),
            "periodic": bool(self.periodic),
            "weighting": None if self._weighting is None else dict(self._weighting),
        }

    def set_params(self, **params) -> "SOAP":
        """Change constructor arguments (scikit-learn's protocol); returns ``self``.

        Raises
        ------
        ValueError
            An unknown parameter name, or values SOAP refuses (as the constructor).
        """
        valid = self.get_params()
        unknown = set(params) - set(valid)
        if unknown:
            raise ValueError(f"Invalid parameter(s) {sorted(unknown)} for SOAP. Valid parameters are: {sorted(valid)}")
        try:
            self.__init__(**{**valid, **params})
        except Exception:  # (a refused value leaves the descriptor as it was)
            self.__init__(**valid)
            raise
        return self

    @classmethod
    def from_dscribe(cls, soap) -> "SOAP":
        """gpal's SOAP equal to a ``dscribe.descriptors.SOAP`` (same features, same order).

        Parameters
        ----------
        soap : dscribe.descriptors.SOAP
            With ``rbf="gto"``, ``average="off"`` and no compression (the power spectrum
            gpal computes).

        Raises
        ------
        ValueError
            A dscribe setting gpal does not compute (another rbf, averaging, compression).
        """
        rbf, average = getattr(soap, "_rbf", None), getattr(soap, "average", None)
        mode = (getattr(soap, "_compression", None) or {}).get("mode", "off")
        if rbf != "gto" or average != "off" or mode != "off":
            raise ValueError(f"gpal's SOAP is dscribe's rbf='gto', average='off', compression off; "
                             f"got rbf={rbf!r}, average={average!r}, compression {mode!r}")
        weighting = getattr(soap, "_weighting", None)
        return cls(species=[int(z) for z in soap._atomic_numbers], r_cut=float(soap._r_cut),
                   n_max=int(soap._n_max), l_max=int(soap._l_max), sigma=float(soap._sigma),
                   periodic=bool(soap.periodic), weighting=None if weighting is None else dict(weighting))

    def to_dscribe(self, **kwargs):
        """The same descriptor as a ``dscribe.descriptors.SOAP`` (``rbf="gto"``, no averaging).

        ``kwargs`` go to dscribe's constructor (e.g. ``sparse=True``, ``dtype="float32"``)
        and may override a setting: dscribe's ``periodic=True`` asks for a cell even for
        structures without periodic boundaries, where gpal's does not, so for molecules
        without a cell pass ``periodic=False`` (the same features).
        """
        from dscribe.descriptors import SOAP as DscribeSOAP

        p = self.get_params()
        settings = dict(species=p["species"], r_cut=float(self.r_cut_), n_max=p["n_max"], l_max=p["l_max"],
                        sigma=p["sigma"], rbf="gto", periodic=p["periodic"], weighting=p["weighting"],
                        compression={"mode": "off"}, average="off")
        return DscribeSOAP(**{**settings, **kwargs})

    def __sklearn_clone__(self) -> "SOAP":
        return SOAP(**self.get_params())

    def __repr__(self) -> str:
        p = self.get_params()
        return (
            f"SOAP(species={p['species']}, r_cut={'None' if p['r_cut'] is None else format(p['r_cut'], 'g')}, n_max={p['n_max']}, "
            f"l_max={p['l_max']}, sigma={p['sigma']:g}, periodic={p['periodic']}, "
            f"weighting={p['weighting']})"
        )

    # --- atoms ---
    def _prepare(self, atoms, checked: bool = False):
        """Numbers, species indices, pairs (centre-sorted, CSR ``offsets``) and cell
        volume (nan without a non-degenerate cell) of ``atoms``. ``checked``: the caller
        has run :func:`gpal._validation.check_atoms` with this descriptor's species
        (finite positions and cell, known species), which are then not checked again."""
        if not hasattr(atoms, "numbers") or not hasattr(atoms, "cell"):
            raise TypeError(f"atoms must be one ase.Atoms, got {type(atoms).__name__}"
                            + (" (a list: [soap.create(a) for a in frames])" if isinstance(atoms, (list, tuple))
                               else ""))
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        # (read, never written: no copy; the pair cache copies what it keeps)
        pos = np.ascontiguousarray(atoms.positions, dtype=np.float64)
        cell = np.array(atoms.cell.array, dtype=np.float64)
        if not checked:
            check_frame_arrays(pos, cell, numbers, self.species_numbers_)
        volume = self._cell_volume(cell)
        if self.periodic:
            pbc = np.asarray(atoms.get_pbc(), dtype=np.bool_)
            if pbc.any() and not math.isfinite(volume) and not periodic_vectors_ok(cell, pbc):
                raise MissingCellError(
                    f"atoms with periodic boundaries (pbc {pbc.tolist()}) need a non-degenerate "
                    f"cell; got cell {cell.tolist()} (set atoms.cell, or atoms.pbc = False for "
                    "an isolated structure)."
                )
        else:
            pbc = np.zeros(3, dtype=np.bool_)
        spec = self._z_to_index[numbers] if len(numbers) else numbers.copy()
        if len(numbers):
            # consecutive calls on one system (MD steps) reuse a Verlet list
            i, j, D, _, offsets = self._pair_cache.pairs(pos, cell, pbc)
        else:
            i = j = np.zeros(0, np.int64)
            D = np.zeros((0, 3))
            offsets = np.zeros(1, np.int64)
        return numbers, spec, i, j, D, offsets, volume

    def _cell_volume(self, cell: np.ndarray) -> float:
        """``|det(cell)|`` (Å^3), nan for a zero cell vector or a volume below 1e-10 of
        the product of the vector lengths (a degenerate cell); kept for the last cell
        (consecutive MD steps at constant cell)."""
        key = cell.tobytes()
        last = getattr(self, "_last_volume", None)
        if last is not None and last[0] == key:
            return last[1]
        volume = abs(float(np.linalg.det(cell)))
        norms = np.linalg.norm(cell, axis=1)
        if norms.min() == 0.0 or volume <= 1e-10 * float(np.prod(norms)):
            volume = math.nan
        self._last_volume = (key, volume)
        return volume

    def _n_chunks(self, n_atoms: int) -> int:
        threads = numba.get_num_threads()
        if threads == 1:  # nothing to balance: one chunk, one set of scratch arrays
            return 1
        return max(1, min(n_atoms, threads * _CHUNKS_PER_THREAD))

    @staticmethod
    def _dynamic():
        """Dynamic scheduling of the prange chunks (robust when a core is busy); nothing
        on one numba thread (setting the chunk size costs ~10 µs a call)."""
        if numba.get_num_threads() == 1:
            return contextlib.nullcontext()
        return numba.parallel_chunksize(1)

    def _run_create(self, spec, j, D, offsets, reference: bool = False):
        """Coefficients C and descriptor X; ``reference`` runs the per-pair kernel."""
        N = len(spec)
        S = len(self.species_numbers_)
        L2 = (self.l_max + 1) ** 2
        C = np.empty((N, S, L2, self.n_max))  # every kernel zeroes each centre's block
        X = np.empty((N, self._n_features))
        if N:
            with self._dynamic():
                if reference:
                    jit.soap_create(
                        D, spec[j], offsets, spec, S, *self._radial_args, self._w_zero,
                        self._self0, *self._layout_args, C, X, self._n_chunks(N),
                    )  # fmt: skip
                else:
                    A, BT, wtype, wpar, w_zero = self._radial_args
                    jit.soap_create_batched(
                        D, spec[j], offsets, spec, S, A, BT, wtype, wpar,
                        w_zero, self._w_zero, self._self0, *self._layout_args,
                        _max_pairs(offsets), C, X, self._n_chunks(N),
                    )  # fmt: skip
        return C, X

    @_thread_policy()
    def create(self, atoms: Atoms) -> np.ndarray:
        """SOAP of every atom.

        Parameters
        ----------
        atoms : ase.Atoms

        Returns
        -------
        X : ndarray of shape (n_atoms, n_features)
            Equal to dscribe's ``SOAP.create(atoms)`` with the same parameters.
        """
        numbers, spec, i, j, D, offsets, volume = self._prepare(atoms)
        _, X = self._run_create(spec, j, D, offsets)
        return X

    @_thread_policy()
    def derivatives(self, atoms: Atoms, dense: bool = False):
        """Descriptor and its analytic derivatives.

        Parameters
        ----------
        atoms : ase.Atoms
        dense : bool, default False
            False: a :class:`SOAPDerivatives` with derivatives on neighbour pairs
            (memory linear in atoms). True: ``(derivatives, X)`` in dscribe's layout,
            derivatives of shape (n_atoms, n_atoms, 3, n_features) with
            ``[i, j] = dX_i / dr_j`` (dscribe's ``attach=True``), X of shape
            (n_atoms, n_features).

        Returns
        -------
        SOAPDerivatives or tuple of (ndarray, ndarray)
        """
        numbers, spec, i, j, D, offsets, volume = self._prepare(atoms)
        X = np.empty((len(spec), self._n_features))
        dX = np.zeros((len(i), 3, self._n_features))
        self._run_derivatives(D, np.ascontiguousarray(spec[j]), offsets, spec, X, dX)
        res = SOAPDerivatives(
            descriptor=X,
            center=i,
            neighbor=j,
            vector=D,
            dX=dX,
            offsets=offsets,
            volume=volume,
            numbers=numbers,
        )
        if dense:
            return res.to_dense(), X
        return res

    def derivative_blocks(self, atoms, max_bytes: float | None = None):
        """:meth:`derivatives` of consecutive blocks of centres, one block at a time.

        Memory is one block's pair derivatives (at most ``max_bytes``, or one centre's)
        instead of the whole frame's: 1.2 GB for a 4,000-atom fcc cell with 252
        features. The blocks together hold exactly the pairs and rows of
        :meth:`derivatives`.

        Parameters
        ----------
        atoms : ase.Atoms
        max_bytes : float, optional
            Bytes of ``dX`` per block (default ``_DERIVATIVE_BLOCK_BYTES``, 64 MB).

        Yields
        ------
        (i0, i1, SOAPDerivatives)
            Centres ``i0:i1``: ``descriptor`` holds their rows only (``i1 - i0`` of them)
            and ``offsets`` their pairs from 0; ``center``, ``neighbor``, ``numbers``
            and ``volume`` are the frame's (global atom indices).
        """
        numbers, spec, i, j, D, offsets, volume = self._prepare(atoms)
        N, F = len(spec), self._n_features
        max_bytes = _DERIVATIVE_BLOCK_BYTES if max_bytes is None else float(max_bytes)
        per_block = max(1, int(max_bytes // (3 * F * 8)))
        i0 = 0
        while i0 < N:
            i1 = int(np.searchsorted(offsets, offsets[i0] + per_block, side="right")) - 1
            i1 = min(max(i1, i0 + 1), N)
            p0, p1 = int(offsets[i0]), int(offsets[i1])
            off = np.ascontiguousarray(offsets[i0:i1 + 1] - p0)
            X = np.empty((i1 - i0, F))
            dX = np.zeros((p1 - p0, 3, F))
            Db = np.ascontiguousarray(D[p0:p1])
            self._run_derivatives(Db, np.ascontiguousarray(spec[j[p0:p1]]), off,
                                  np.ascontiguousarray(spec[i0:i1]), X, dX)
            yield i0, i1, SOAPDerivatives(
                descriptor=X, center=i[p0:p1], neighbor=j[p0:p1], vector=Db, dX=dX,
                offsets=off, volume=volume, numbers=numbers,
            )
            i0 = i1

    @_thread_policy()
    def _run_derivatives(self, D, nbr_spec, offsets, spec, X, dX) -> None:
        """Fill ``X`` and ``dX`` (zero on entry) for the centres of ``offsets``."""
        N = len(spec)
        if not N:
            return
        max_pairs = int(np.max(np.diff(offsets))) if len(D) else 0
        with self._dynamic():
            jit.soap_derivatives(
                D, nbr_spec, offsets, spec, len(self.species_numbers_),
                *self._radial_args, self._w_zero, self._self0, *self._layout_args,
                max(max_pairs, 1), X, dX, self._n_chunks(N),
            )

    @_thread_policy()
    def expand(self, atoms: Atoms) -> SOAPExpansion:
        """Descriptor plus the expansion kept for :meth:`SOAPExpansion.backward`.

        Parameters
        ----------
        atoms : ase.Atoms

        Returns
        -------
        SOAPExpansion
        """
        numbers, spec, i, j, D, offsets, volume = self._prepare(atoms)
        C, X = self._run_create(spec, j, D, offsets)
        return SOAPExpansion(
            descriptor=X,
            center=i,
            neighbor=j,
            vector=D,
            offsets=offsets,
            numbers=numbers,
            volume=volume,
            coefficients=C,
            _species_index=spec,
            _soap=self,
        )

    def _backward(
        self, exp: SOAPExpansion, G: np.ndarray, reference: bool = False
    ) -> np.ndarray:
        """Adjoint of ``G``: (n_atoms, n_features) -> (n_pairs, 3); K gradients laid out
        (n_atoms, K, n_features) -> (n_pairs, 3, K) in one pass."""
        N, multi = exp.n_atoms, G.ndim == 3
        out = np.zeros((len(exp.center), 3) + G.shape[1:2] * multi)
        if not (N and len(exp.center) and out.size):
            return out
        nbr_spec = exp._species_index[exp.neighbor]
        if reference:
            with self._dynamic():
                jit.soap_backward(
                    exp.vector, nbr_spec, exp.offsets, *self._radial_args,
                    *self._layout_args, exp.coefficients, G, out, self._n_chunks(N),
                )  # fmt: skip
            return out
        A, BT, wtype, wpar, w_zero = self._radial_args
        kernel = jit.soap_backward_multi if multi else jit.soap_backward_batched
        # the multi pass's numba threads share the centres: one BLAS thread in each of
        # its products (the single pass, the MD step's, calls no BLAS)
        with self._dynamic(), _blas_limit(1) if multi else contextlib.nullcontext():
            kernel(
                exp.vector, nbr_spec, exp.offsets, A, BT, self._BAT, wtype, wpar,
                w_zero, *self._layout_args, _max_pairs(exp.offsets),
                exp.coefficients, G, out, self._n_chunks(N),
            )  # fmt: skip
        return out

    def _gradient_map(self):
        """Sparse map T of the harmonics' gradients onto the harmonics one degree lower,
        ``d Y[lm] / d x_a = sum T_a[lm, l'm'] Y[l'm']`` (l' = l - 1), as ``(gc, gv)``
        of shapes (L2, 3, 2): at most two terms ``gv[lm, a, t] * Y[gc[lm, a, t]]`` per
        ``(lm, a)`` (a missing term has coefficient 0).

        The gradient of a harmonic polynomial of degree l is harmonic of degree l - 1,
        so T is exact; its entries are found once per SOAP by least squares on the
        harmonics and gradients of random points (:func:`jit._solid_harmonics`), entries
        below 1e-12 of the largest dropped, and the fit is checked to 1e-12.
        """
        cached = getattr(self, "_gmap", None)  # (l_max, map): set_params may change l_max
        if cached is not None and cached[0] == self.l_max:
            return cached[1]
        L, L1 = self.l_max, self.l_max + 1
        L2 = L1 * L1
        P = 8 * (2 * L + 1) + 16
        pts = np.random.default_rng(12345).normal(size=(P, 3))
        pts /= np.linalg.norm(pts, axis=1)[:, None]  # unit points: no r^l growth
        pts *= np.random.default_rng(54321).uniform(0.5, 1.5, size=(P, 1))
        Ys, dYs = np.empty((P, L2)), np.empty((P, 3, L2))
        Q, Qz, Qr = (np.empty((L1, L1)) for _ in range(3))
        Am, Bm = np.empty(L1), np.empty(L1)
        for k, (x, y, z) in enumerate(pts):
            jit._solid_harmonics(x, y, z, L, self._shK, self._shQmm, self._shC1, self._shC2,
                                 Ys[k], dYs[k], Q, Qz, Qr, Am, Bm, True)
        gc = np.zeros((L2, 3, 2), dtype=np.int64)
        gv = np.zeros((L2, 3, 2))
        for ell in range(1, L1):
            lo, hi = (ell - 1) ** 2, ell * ell
            B = Ys[:, lo:hi]
            for a in range(3):
                target = dYs[:, a, hi:(ell + 1) ** 2]
                T = np.linalg.lstsq(B, target, rcond=None)[0]  # (2l - 1, 2l + 1)
                T[np.abs(T) < 1e-12 * np.abs(T).max()] = 0.0
                err = np.abs(B @ T - target).max() / np.abs(target).max()
                if not err < 1e-12:  # pragma: no cover - a broken harmonic recurrence
                    raise RuntimeError(f"harmonic gradient map of l={ell} off by {err:.1e}")
                for m in range(2 * ell + 1):
                    cols = np.flatnonzero(T[:, m])
                    if len(cols) > 2:  # pragma: no cover - not for real solid harmonics
                        raise RuntimeError(f"harmonic gradient of l={ell} has {len(cols)} terms")
                    gc[hi + m, a, :len(cols)] = lo + cols
                    gv[hi + m, a, :len(cols)] = T[cols, m]
        self._gmap = (L, (gc, gv))
        return self._gmap[1]

    def _fused_step(self, atoms, block_gradient, check_vectors=None, checked: bool = False) -> _FusedStep:
        """Descriptor of ``atoms`` and the adjoint of ``E = sum_i G[i] . X[i]``, block of
        centres by block of centres (the MD step's prediction path).

        Each block of consecutive centres (at most :data:`_FUSED_STORE_BYTES` of kept
        pair terms) is expanded once with the pair radial functions, their gradients and
        the harmonics kept (``jit.soap_create_stored``; the harmonics' gradients follow
        from the harmonics through :meth:`_gradient_map`); ``block_gradient(i0, i1,
        X[i0:i1])`` returns the block's ``G`` (i1 - i0, n_features); the back-pass
        (``jit.soap_backward_stored``) contracts it with the kept terms while they are
        in cache, where :meth:`expand` then ``backward`` computes them twice. Equal to
        ``expand(atoms)`` and ``backward(G)`` up to summation order.

        Parameters
        ----------
        atoms : ase.Atoms
        block_gradient : callable ``(i0, i1, X_block) -> G_block``
        check_vectors : callable ``(vectors (n_pairs, 3)) -> None``, optional
            Called on the pair vectors before any SOAP work (e.g. a minimum-distance
            check that raises).
        checked : bool, default False
            The caller has checked ``atoms`` against this descriptor's species
            (:func:`gpal._validation.check_atoms`).
        """
        numbers, spec, i, j, D, offsets, volume = self._prepare(atoms, checked)
        if check_vectors is not None and len(D):
            check_vectors(D)
        N, F, S = len(spec), self._n_features, len(self.species_numbers_)
        L1, nk = self.l_max + 1, self.n_max
        X = np.empty((N, F))
        out = np.empty((len(i), 3))  # (every pair's row is written by its centre's back-pass)
        if not N:
            return _FusedStep(X, i, j, D, volume, out)
        gmap = self._gradient_map()
        PS = jit.stored_pair_size(L1, nk)
        plan, max_pairs, nb_max, pairs_max = jit.fused_blocks(offsets, _FUSED_STORE_BYTES // (8 * PS))
        blocks = plan.tolist()
        store = np.empty(max(pairs_max, 1) * PS)
        perm = np.empty(max(pairs_max, 1), dtype=np.int64)
        sstart = np.empty((nb_max, S + 1), dtype=np.int64)
        C = np.empty((nb_max, S, L1 * L1, nk))
        nbr_spec = spec[j]
        A, BT, wtype, wpar, w_zero = self._radial_args
        with self._dynamic():
            for i0, i1 in blocks:
                n_chunks = self._n_chunks(i1 - i0)
                jit.soap_create_stored(
                    D, nbr_spec, offsets, spec, S, A, BT, wtype, wpar, w_zero,
                    self._w_zero, self._self0, *self._layout_args, max_pairs, i0, i1,
                    store, perm, sstart, C, X, n_chunks,
                )  # fmt: skip
                G = np.ascontiguousarray(block_gradient(i0, i1, X[i0:i1]), dtype=np.float64)
                if G.shape != (i1 - i0, F):
                    raise ValueError(f"block_gradient returned shape {G.shape}, expected {(i1 - i0, F)}")
                jit.soap_backward_stored(
                    offsets, i0, i1, self._prel, self._pair_off, self._tri, max_pairs, A, BT,
                    store, perm, sstart, *gmap, C, G, out, n_chunks,
                )  # fmt: skip
        return _FusedStep(X, i, j, D, volume, out)


@dataclass
class _FusedStep:
    """What :meth:`SOAP._fused_step` returns: a frame's descriptor, pairs and the adjoint
    ``dE`` (n_pairs, 3) of the block gradients (``SOAPExpansion.backward``'s output)."""

    descriptor: np.ndarray
    center: np.ndarray
    neighbor: np.ndarray
    vector: np.ndarray
    volume: float
    dE: np.ndarray


def _check_dscribe_settings(rbf, average, compression, sparse, dtype) -> None:
    """ValueError for a dscribe SOAP setting other than what gpal's SOAP computes."""
    mode = compression.get("mode", "off") if isinstance(compression, dict) else compression
    extra = set(compression) - {"mode", "species_weighting"} if isinstance(compression, dict) else set()
    weighted = isinstance(compression, dict) and compression.get("species_weighting") is not None
    wrong = [f"{name}={value!r}" for name, value, ok in (
        ("rbf", rbf, rbf == "gto"), ("average", average, average == "off"),
        ("compression", compression, mode in (None, "off") and not extra and not weighted),
        ("sparse", sparse, sparse is False or sparse is np.False_),
        ("dtype", dtype, dtype in ("float64", np.float64)),
    ) if not ok]
    if wrong:
        raise ValueError(f"gpal's SOAP computes dscribe's rbf='gto', average='off', no compression, dense "
                         f"float64 rows; got {', '.join(wrong)} (SOAP.to_dscribe(...) gives dscribe's own "
                         "descriptor with any of them)")


def _max_pairs(offsets) -> int:
    """Largest number of pairs of one centre (scratch size of the batched kernels)."""
    return int(np.max(np.diff(offsets))) if len(offsets) > 1 else 0
