"""The gpal potential: SOAP descriptor + kernel + sparse GP, on ASE frames.

Model
-----
The total energy of a structure is a sum of local atomic energies plus per-species
baselines (size-extensive by construction)::

    E = sum_i [ e0(Z_i) + eps(x_i) ],   eps(x) = sum_m alpha_m k(x, z_m)

with ``x_i`` the SOAP vector of atom ``i``'s environment and ``z_m`` the sparse
(inducing) environments. Environments of different central species never interact:
``k(x, z) = 0`` when the central species differ, so ``K_mm`` is block-diagonal by species.

Observations are total energies, force components and stress components. Their rows of
``K_nm`` are the corresponding linear functionals of ``k(., z_m)``:

* energy row:  sum_i k(x_i, z_m)
* force row:   -d/dr_jk sum_i k(x_i, z_m)            (pair derivatives of SOAP)
* stress row:  (1/V) d/d(strain) sum_i k(x_i, z_m)   (ASE sign, Voigt order)

Noise: energies ``energy_noise * sqrt(n_atoms)`` (``energy_noise`` is per atom, eV/atom),
forces ``force_noise`` (eV/Å), stress ``stress_noise`` (eV/Å^3).

Uncertainty
-----------
``energies_std`` is the DTC posterior std of each local energy,
``k(x,x) - k^T K_mm^-1 k + k^T Sigma k``. ``energy_std`` is the std of the total energy
under the same model, with the (small) residual prior term ``k - Q`` treated as
independent between atoms (the FITC assumption); the projected part keeps all
correlations between atoms. ``forces_std``/``stress_std`` (on request, they cost one
explicit derivative pass) are the projected-process part of the force/stress
variance, ``a^T Sigma a`` with ``a`` the force/stress row: they omit the residual term,
so calibrate them (gpal.calibration) before trusting their scale.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.linalg
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from ._validation import (
    DEFAULT_MIN_DISTANCE,
    Labels,
    as_rng,
    check_atoms,
    check_frames,
    check_is_fitted,
    check_min_distance,
    frame_labels,
)
from .descriptors import SOAP, pair_forces, pair_stress
from .kernels import NormalizedDotProduct
from .sparse_gp import SparseGPSolver, _jittered_cholesky
from ._threads import policy as _thread_policy
from . import baseline as _baseline

log = logging.getLogger(__name__)


def _block_size(model, atoms) -> int | None:
    """Elements of the (n_atoms x n_sparse) kernel block of a prediction (None if unknown)."""
    try:
        return len(atoms) * len(getattr(model, "sparse_X_", ()))
    except TypeError:  # not an Atoms: predict's own checks say so
        return None


__all__ = ["SparseGP", "default_descriptor", "ZETA_CANDIDATES", "L_MAX_CANDIDATES", "NOISE_BOUNDS"]

_SPARSE_SELECTIONS = ("fps", "random", "cur")
# observation groups
_E, _F, _S = 0, 1, 2
_GROUP_NAMES = ("energy", "force", "stress")
_HYPERPARAMETER_MODES = ("evidence", "fixed")
#: exponents of the dot-product kernel the evidence chooses from when no kernel is given
ZETA_CANDIDATES = (2, 3, 4)
#: SOAP l_max the evidence chooses from when no descriptor is given (at most the default's)
L_MAX_CANDIDATES = (3, 6)
#: range of the default kernel's signal variance (eV²) when the evidence chooses it: in a
#: crystal all cosines are close to 1 and the varying part of σ² c^ζ is a small fraction
#: of σ², so σ² itself can exceed the kernel's own default bound of 1e3
SIGNAL_VARIANCE_BOUNDS = (1e-3, 1e5)
#: the noise levels a model starts from (and keeps with ``hyperparameters="fixed"``)
DEFAULT_NOISE = {"energy": 0.002, "force": 0.05, "stress": 0.005}
#: physical ranges of the noise levels: energy eV/atom (0.1 meV/atom .. 1 eV/atom),
#: force eV/Å (1 meV/Å .. 10 eV/Å), stress eV/Å^3 (about 1.6 MPa .. 16 GPa)
NOISE_BOUNDS = {"energy": (1e-4, 1.0), "force": (1e-3, 10.0), "stress": (1e-5, 0.1)}
_UNITS = {"energy": "eV/atom", "force": "eV/Å", "stress": "eV/Å^3"}
#: memory (GB) a model may hold in observation rows when ``memory_budget_gb`` is None
DEFAULT_MEMORY_BUDGET_GB = 2.0
#: new sparse points up to which stored frames get their new kernel columns from the
#: SOAP adjoint (one backward pass per point, no descriptor derivatives); beyond it, from
#: one descriptor-derivative pass per frame (measured crossover on 108-atom Cu, n_max 8,
#: l_max 6, one thread under load: 4-5 points)
_ADJOINT_MAX_COLUMNS = 4


def default_descriptor(frames) -> SOAP:
    """gpal's default SOAP for ``frames``: r_cut 5 Å, n_max 8, l_max 6, sigma 0.5, smooth cutoff.

    The ``poly`` weighting with ``r0 = r_cut`` makes the descriptor go smoothly to zero at
    the cutoff, which MD needs for energy conservation.
    """
    species = sorted({int(z) for a in frames for z in np.unique(a.numbers)})
    periodic = any(bool(np.any(a.pbc)) for a in frames)
    return SOAP(
        species=species,
        r_cut=5.0,
        n_max=8,
        l_max=6,
        sigma=0.5,
        periodic=periodic,
        weighting={"function": "poly", "r0": 5.0, "c": 1, "m": 1},
    )


def _l_max_subset(soap: SOAP, l_max: int) -> np.ndarray:
    """Columns of ``soap``'s features that form ``SOAP(..., l_max=l_max)``'s, in its order.

    gpal's (dscribe's) layout is, per species pair, l-major: the features of degrees
    0..l_max are the first ``(l_max + 1) * size`` of each pair block, and the radial
    basis of each degree does not depend on l_max.
    """
    n, L, S = int(soap.n_max), int(soap.l_max), len(soap.species_numbers_)
    if not 0 <= l_max <= L:
        raise ValueError(f"l_max must lie in [0, {L}], got {l_max}")
    nsym = n * (n + 1) // 2
    cols = []
    for s in range(S):
        for t in range(s, S):
            off = int(soap._pair_off[s, t])
            size = nsym if s == t else n * n
            cols.append(np.arange(off, off + (l_max + 1) * size))
    return np.concatenate(cols)


def _labelled_copy(atoms: Atoms, labels: Labels) -> Atoms:
    """A bare copy of ``atoms`` carrying only its labels (in a SinglePointCalculator)."""
    copy = Atoms(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
    )
    res = {}
    if labels.energy is not None:
        res["energy"] = labels.energy
        res["free_energy"] = labels.energy
    if labels.forces is not None:
        res["forces"] = labels.forces.copy()
    if labels.stress is not None:
        res["stress"] = labels.stress.copy()
    copy.calc = SinglePointCalculator(copy, **res)
    return copy


class SparseGP:
    """Sparse Gaussian-process interatomic potential on SOAP environments.

    Parameters
    ----------
    descriptor : gpal.SOAP, optional
        Environment descriptor. Default: :func:`default_descriptor` of the training frames.
    kernel : gpal.kernels kernel, optional
        Kernel between environments, used as given (its ζ and signal variance are not
        changed by :meth:`fit`). Default: ``NormalizedDotProduct(zeta)`` with ζ among
        :data:`ZETA_CANDIDATES` (2, 3, 4) and its signal variance chosen by the evidence
        (``hyperparameters="evidence"``), or ``NormalizedDotProduct(zeta=4)``
        (``hyperparameters="fixed"``).
    energy_noise : float or None, default None
        Energy noise per atom, eV/atom; a frame of N atoms gets ``energy_noise*sqrt(N)``.
        ``None``: chosen by the evidence within :data:`NOISE_BOUNDS` (from 0.002), or
        0.002 with ``hyperparameters="fixed"``. A number is kept as given.
    force_noise : float or None, default None
        Force-component noise, eV/Å (``None``: as above, from 0.05).
    stress_noise : float or None, default None
        Stress-component noise, eV/Å^3 (``None``: as above, from 0.005).
    hyperparameters : {"evidence", "fixed"}, default "evidence"
        ``"evidence"``: :meth:`fit` chooses what the user left unset (``kernel=None``:
        ζ and the signal variance; a noise ``None``: that noise) by maximising the log
        marginal likelihood of the training data (type-II maximum likelihood; see
        :meth:`select_hyperparameters`). ``"fixed"``: nothing is chosen; unset values
        take gpal's earlier defaults (ζ = 4, signal variance 1, noises 0.002, 0.05,
        0.005), i.e. the behaviour of gpal before the evidence became the default.
    n_sparse : int or dict, default 200
        Number of sparse environments: a total shared between species in proportion to
        their numbers of environments, or ``{species: count}``.
    sparse_selection : {"fps", "random", "cur"}, default "fps"
        How the sparse environments are chosen from the training environments
        (farthest-point sampling in cosine distance, per species).
    e0 : "fit" or dict, default "fit"
        Per-species baseline energies (eV): fitted by least squares to the training
        energies, or given as ``{symbol or Z: value}`` (missing species get 0).
    min_distance : float, default 0.5
        Atoms closer than this (Å) raise :class:`gpal.OverlappingAtomsError`.
    jitter : float, default 1e-8
        Relative jitter added to the diagonal of K_mm.
    random_state : int, Generator or None, default 0
        Seed for sparse selection.
    memory_budget_gb : float or None, default None
        Memory (GB) the fit may hold in observation rows: the stacked matrix is built
        and factorised in blocks of at most 1/8 of it, and the ``n_obs x n_sparse``
        kernel rows are kept (for cheap sparse-set updates, leave-one-out residuals
        and likelihood gradients) only while they take at most half of it; beyond that
        they are recomputed frame by frame when needed. ``None``:
        :data:`DEFAULT_MEMORY_BUDGET_GB`. The descriptors of the training frames, one
        frame's SOAP derivatives and O(n_sparse²) factors come on top. The evidence
        (``hyperparameters="evidence"``) keeps every candidate kernel's rows within the
        same half, else only per-group whitened sums (n_groups x n_sparse² floats per
        candidate) and then refits the chosen one in a second pass over the frames.
    baseline : str, dict, OracleSpec, ASE calculator or None, default None
        Δ-learning: a cheap model under the GP, as ``"module:Name"`` with
        ``baseline_kwargs`` (e.g. ``"tblite.ase:TBLite"`` with ``{"method": "GFN1-xTB"}``)
        or a live ASE calculator. The GP fits the labels minus the
        baseline and :meth:`predict` returns baseline + GP for energy, forces and stress;
        the stds are the GP's. See :mod:`gpal.baseline`.
    baseline_kwargs : dict or None, default None
        Keyword arguments of a baseline given as ``"module:Name"``.

    Attributes
    ----------
    descriptor_, kernel_ : the fitted descriptor and kernel.
    zeta_ : int or None, the exponent of the fitted dot-product kernel.
    noise_ : dict, the noise levels in use (energy eV/atom, force eV/Å, stress eV/Å^3).
    evidence_ : list of dict or None
        The candidates weighed by the evidence in the last :meth:`fit` or
        :meth:`select_hyperparameters` (None if nothing was chosen): ``zeta``,
        ``signal_variance``, ``noise`` and ``log_marginal_likelihood`` of each at its
        optimum, and ``selected`` (True for the one in use).
    log_marginal_likelihood_value_ : float, the log evidence of the fitted model (set
        when hyperparameters were chosen or optimised).
    sparse_X_ : ndarray of shape (n_sparse, n_features)
    sparse_species_ : ndarray of shape (n_sparse,)
    alpha_ : ndarray of shape (n_sparse,)
    e0_ : dict mapping atomic number to baseline energy (eV).
    frames_ : list of ase.Atoms, the training frames with their labels.
    solver_ : gpal.sparse_gp.SparseGPSolver
    calibration_ : dict, std scale factors and conformal quantiles set by
        :meth:`set_calibration` (see gpal.calibration).
    baseline_ : ASE calculator or None, the Δ-model's baseline in use. With a baseline,
        ``frames_`` hold the residual labels (oracle − baseline) that the GP fits.

    Examples
    --------
    >>> model = SparseGP(n_sparse=100).fit(frames)             # doctest: +SKIP
    >>> res = model.predict(atoms, return_std=True)            # doctest: +SKIP
    >>> res["energy"], res["forces"].shape, res["energies_std"].shape  # doctest: +SKIP
    """

    def __init__(
        self,
        descriptor: SOAP | None = None,
        kernel=None,
        *,
        energy_noise: float | None = None,
        force_noise: float | None = None,
        stress_noise: float | None = None,
        n_sparse: int | dict = 200,
        sparse_selection: str = "fps",
        e0: str | dict = "fit",
        min_distance: float = DEFAULT_MIN_DISTANCE,
        jitter: float = 1e-8,
        random_state=0,
        hyperparameters: str = "evidence",
        memory_budget_gb: float | None = None,
        baseline: str | dict | None = None,
        baseline_kwargs: dict | None = None,
    ):
        self.descriptor = descriptor
        self.kernel = kernel
        self.energy_noise = energy_noise
        self.force_noise = force_noise
        self.stress_noise = stress_noise
        self.n_sparse = n_sparse
        self.sparse_selection = sparse_selection
        self.e0 = e0
        self.min_distance = min_distance
        self.jitter = jitter
        self.random_state = random_state
        self.hyperparameters = hyperparameters
        self.memory_budget_gb = memory_budget_gb
        self.baseline = baseline
        self.baseline_kwargs = baseline_kwargs
        self.alpha_ = None

    # ------------------------------------------------------------------ params
    def get_params(self, deep: bool = False) -> dict:
        """Constructor parameters (scikit-learn convention)."""
        return {
            k: getattr(self, k)
            for k in (
                "descriptor",
                "kernel",
                "energy_noise",
                "force_noise",
                "stress_noise",
                "n_sparse",
                "sparse_selection",
                "e0",
                "min_distance",
                "jitter",
                "random_state",
                "hyperparameters",
                "memory_budget_gb",
                "baseline",
                "baseline_kwargs",
            )
        }

    def set_params(self, **params) -> "SparseGP":
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"Invalid parameter {k!r}; valid: {sorted(valid)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        fitted = self.alpha_ is not None

        def noise(name):
            if fitted:
                return f"{self.noise_[name]:.3g}"
            given = getattr(self, name + "_noise")
            return "auto" if given is None and self.hyperparameters == "evidence" else (
                f"{DEFAULT_NOISE[name] if given is None else given:.3g}")

        kernel = self.kernel_ if fitted else (
            "auto" if self.kernel is None and self.hyperparameters == "evidence" else self.kernel)
        tail = ""
        if fitted:
            tail = f", fitted: {len(self.frames_)} frames, {len(self.alpha_)} sparse"
            table = getattr(self, "evidence_", None)
            if table:
                several_l = len({r.get("l_max") for r in table}) > 1
                tail += ", chosen by evidence (log evidence " + ", ".join(
                    f"ζ={r['zeta']}" + (f" l_max={r['l_max']}" if several_l else "")
                    + f": {r['log_marginal_likelihood']:.1f}" for r in table) + ")"
        return (
            f"SparseGP(kernel={kernel if isinstance(kernel, str) else repr(kernel)}, energy_noise={noise('energy')}, "
            f"force_noise={noise('force')}, stress_noise={noise('stress')}{tail})"
        )

    # ------------------------------------------------------------------ fit
    @property
    def species_(self) -> np.ndarray:
        return np.asarray(self.descriptor_.species_numbers_, dtype=np.int64)

    def _check(self, atoms, what="atoms"):
        check_atoms(
            atoms,
            species=self.species_,
            periodic=self.descriptor_.periodic,
            what=what,
        )

    @_thread_policy()
    def fit(self, frames) -> "SparseGP":
        """Fit to labelled frames.

        Parameters
        ----------
        frames : list of ase.Atoms
            Each with at least one of energy, forces or stress, as ``ase.io.read``
            returns them from an extxyz file (or with a finished calculator attached).
            Molecules simply carry no stress.

        Returns
        -------
        self
        """
        if self.sparse_selection not in _SPARSE_SELECTIONS:
            raise ValueError(
                f"Invalid sparse_selection {self.sparse_selection!r}; "
                f"choose from {_SPARSE_SELECTIONS}"
            )
        if self.hyperparameters not in _HYPERPARAMETER_MODES:
            raise ValueError(
                f"Invalid hyperparameters {self.hyperparameters!r}; choose from "
                f"{_HYPERPARAMETER_MODES}"
            )
        for name in ("energy_noise", "force_noise", "stress_noise"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        self._budget_bytes()  # a bad memory_budget_gb fails before any work
        frames = check_frames(frames)
        self.descriptor_ = self.descriptor if self.descriptor is not None else (
            default_descriptor(frames)
        )
        self.kernel_ = (self.kernel if self.kernel is not None else NormalizedDotProduct(zeta=4)).clone()
        self.evidence_ = None
        labels = [frame_labels(a) for a in frames]
        for k, a in enumerate(frames):
            self._check(a, what=f"frames[{k}]")
        self.baseline_ = _baseline.make_baseline(self.baseline, self.baseline_kwargs)
        labels = self._minus_baseline(frames, labels)
        self.frames_ = [_labelled_copy(a, lab) for a, lab in zip(frames, labels)]
        self.noise_ = {
            g: float(DEFAULT_NOISE[g] if getattr(self, g + "_noise") is None
                     else getattr(self, g + "_noise"))
            for g in _GROUP_NAMES
        }
        self.e0_ = self._fit_e0(self.frames_)
        self.calibration_ = {}
        seen = {int(z) for a in self.frames_ for z in np.unique(a.numbers)}
        unseen = [chemical_symbols[int(z)] for z in self.species_ if int(z) not in seen]
        if unseen:
            warnings.warn(
                f"species {', '.join(unseen)} are in the descriptor but in no training frame: "
                "their local energies are the prior (zero, with baseline e0 = 0) until frames "
                "containing them are added",
                UserWarning,
                stacklevel=2,
            )

        X_list = [self.descriptor_.create(a) for a in self.frames_]
        for a, X in zip(self.frames_, X_list):
            check_min_distance(self._min_pair_distance(a), self.min_distance, "training frame")
        Z, zsp = self._select_sparse(
            X_list, [a.numbers for a in self.frames_], self.n_sparse, self.sparse_selection
        )
        self.sparse_X_ = Z
        self.sparse_species_ = zsp
        if self.hyperparameters == "evidence" and (
                self._free_hyperparameters() or self.descriptor is None):
            self._choose_hyperparameters(
                l_maxes=L_MAX_CANDIDATES if self.descriptor is None else None, warn_stacklevel=4)
            return self
        self._fit_solver(self._k_mm(Z, zsp))
        return self

    # ------------------------------------------------------------------ memory
    def _budget_bytes(self) -> float:
        gb = DEFAULT_MEMORY_BUDGET_GB if self.memory_budget_gb is None else self.memory_budget_gb
        try:
            gb = float(gb)
        except (TypeError, ValueError):
            raise ValueError(f"memory_budget_gb must be a number > 0 or None, got {gb!r}") from None
        if not (np.isfinite(gb) and gb > 0):
            raise ValueError(f"memory_budget_gb must be a number > 0 or None, got {gb!r}")
        return gb * 1e9

    def _keep_rows_fits(self, n_obs: int, n_sparse: int) -> bool:
        """Whether ``n_obs x n_sparse`` kernel rows fit in half of the memory budget."""
        return 8.0 * n_obs * n_sparse <= 0.5 * self._budget_bytes()

    def _enforce_budget(self) -> None:
        sol = self.solver_
        if sol.keep_rows_ and not self._keep_rows_fits(sol.n_obs_, sol.n_sparse_):
            log.info("observation rows (%d x %d) exceed half the memory budget: not kept",
                     sol.n_obs_, sol.n_sparse_)
            sol.drop_rows()

    def _frame_slices(self) -> list[slice]:
        """Observation rows of each training frame (contiguous, in frame order)."""
        f = self.obs_frame_
        nf = len(self.frames_)
        lo = np.searchsorted(f, np.arange(nf), side="left")
        hi = np.searchsorted(f, np.arange(nf), side="right")
        return [slice(int(a), int(b)) for a, b in zip(lo, hi)]

    def _fit_solver(self, K_mm) -> None:
        """Factorise the training frames' observations, in blocks within the memory budget.

        The kernel rows of one frame at a time are appended to a block; a block of at
        most 1/8 of the budget (at least one frame) is folded into the QR factor
        (:meth:`SparseGPSolver.fit_blocks`). When everything fits in one block the
        stacked matrix is factorised at once, as :meth:`SparseGPSolver.fit` does.
        """
        Z, zsp = self.sparse_X_, self.sparse_species_
        M = len(Z)
        targets = [self._frame_targets(a) for a in self.frames_]
        ys, noises, groups, fidx = [], [], [], []
        for k, tg in enumerate(targets):
            for group, y, noise in tg:
                ys.append(y)
                noises.append(noise)
                groups.append(np.full(len(y), group, dtype=np.int64))
                fidx.append(np.full(len(y), k, dtype=np.int64))
        y, noise = np.concatenate(ys), np.concatenate(noises)
        self.obs_group_, self.obs_frame_ = np.concatenate(groups), np.concatenate(fidx)
        n = len(y)
        block_bytes = self._budget_bytes() / 8.0
        keep = self._keep_rows_fits(n, M)
        solver = SparseGPSolver()
        if 8.0 * n * (M + 1) <= block_bytes:
            solver.fit(K_mm, self._stacked_rows(self.frames_, Z, zsp), y, noise, jitter=self.jitter)
            if not keep:
                solver.drop_rows()
        else:
            slices = self._frame_slices()
            block_rows = max(int(block_bytes // (8.0 * (M + 1))), 1)

            def blocks():
                rows, start, count = [], 0, 0
                for b, a in enumerate(self.frames_):
                    rows.append(self._stacked_rows([a], Z, zsp))
                    count += len(rows[-1])
                    if count >= block_rows or b == len(self.frames_) - 1:
                        stop = slices[b].stop
                        yield np.concatenate(rows), y[start:stop], noise[start:stop]
                        rows, start, count = [], stop, 0

            solver.fit_blocks(K_mm, blocks(), jitter=self.jitter, keep_rows=keep)
        self.solver_ = solver
        self.alpha_ = solver.alpha_

    @property
    def zeta_(self):
        """Exponent ζ of the fitted dot-product kernel (None for other kernels)."""
        check_is_fitted(self)
        return int(self.kernel_.zeta) if isinstance(self.kernel_, NormalizedDotProduct) else None

    def _min_pair_distance(self, atoms) -> np.ndarray:
        from .neighbors import neighbor_list

        _, _, D = neighbor_list(
            atoms.positions, atoms.cell.array, atoms.pbc, max(self.min_distance, 1e-3)
        )
        return np.linalg.norm(D, axis=1)

    def _fit_e0(self, frames) -> dict:
        species = self.species_
        if isinstance(self.e0, dict):
            from ase.data import atomic_numbers

            e0 = {int(z): 0.0 for z in species}
            for key, val in self.e0.items():
                z = atomic_numbers[key] if isinstance(key, str) else int(key)
                if z not in e0:
                    raise ValueError(f"e0 given for species {key!r} not in the model")
                e0[z] = float(val)
            return e0
        if self.e0 != "fit":
            raise ValueError(f"e0 must be 'fit' or a dict, got {self.e0!r}")
        rows, energies = [], []
        for a in frames:
            lab = frame_labels(a)
            if lab.energy is None:
                continue
            rows.append([np.count_nonzero(a.numbers == z) for z in species])
            energies.append(lab.energy)
        if not rows:
            return {int(z): 0.0 for z in species}
        coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(energies), rcond=None)
        return {int(z): float(c) for z, c in zip(species, coef)}

    def _e0_of(self, numbers) -> np.ndarray:
        table = np.zeros(max(self.e0_) + 1)
        for z, v in self.e0_.items():
            table[z] = v
        return table[numbers]

    # ------------------------------------------------------------------ sparse set
    def _sparse_counts(self, n_sparse, X_list, numbers_list) -> dict:
        species = self.species_
        avail = {int(z): int(sum(np.count_nonzero(n == z) for n in numbers_list)) for z in species}
        present = [z for z in species if avail[int(z)] > 0]
        if isinstance(n_sparse, dict):
            from ase.data import atomic_numbers

            counts = {}
            for key, val in n_sparse.items():
                z = atomic_numbers[key] if isinstance(key, str) else int(key)
                counts[z] = min(int(val), avail.get(z, 0))
            return counts
        n_sparse = int(n_sparse)
        if n_sparse < len(present):
            raise ValueError(
                f"n_sparse={n_sparse} is smaller than the number of species ({len(present)})"
            )
        total = sum(avail[int(z)] for z in present)
        # proportional to the number of environments, but every species present gets at
        # least half of an equal share: a rare species would otherwise get a handful of
        # sparse points and its forces would be poor however much data arrives
        floor = int(np.ceil(n_sparse / (2 * len(present))))
        counts = {}
        for z in present:
            share = max(floor, int(round(n_sparse * avail[int(z)] / total)))
            counts[int(z)] = min(share, avail[int(z)])
        return counts

    def _select_sparse(self, X_list, numbers_list, n_sparse, method, exclude=None):
        """Choose sparse environments per species; returns (Z, species)."""
        from . import selection

        rng = as_rng(self.random_state)
        X_all = np.concatenate(X_list)
        num_all = np.concatenate(numbers_list)
        counts = self._sparse_counts(n_sparse, X_list, numbers_list)
        Z, zsp = [], []
        for z, count in counts.items():
            Xs = X_all[num_all == z]
            if count <= 0 or len(Xs) == 0:
                continue
            if method == "fps":
                idx, dist = selection.farthest_point_sampling(
                    Xs, min(count, len(Xs)), metric="cosine", random_state=rng,
                    return_distances=True,
                )
                # identical environments (a perfect crystal) would make K_mm singular
                keep = np.ones(len(idx), bool)
                keep[1:] = dist[1:] > 1e-6
                idx = idx[keep]
            elif method == "random":
                idx = rng.choice(len(Xs), size=min(count, len(Xs)), replace=False)
            else:  # cur
                idx = selection.cur_selection(Xs, min(count, len(Xs)), random_state=rng)
            Z.append(Xs[np.sort(idx)])
            zsp.append(np.full(len(idx), z, dtype=np.int64))
        return np.concatenate(Z), np.concatenate(zsp)

    # ------------------------------------------------------------------ kernel blocks
    def _k_mm(self, Z, zsp, kernel=None) -> np.ndarray:
        kernel = kernel or self.kernel_
        M = len(Z)
        K = np.zeros((M, M))
        for z in np.unique(zsp):
            c = np.flatnonzero(zsp == z)
            K[np.ix_(c, c)] = kernel(Z[c])
        return K

    def _k_xm(self, X, numbers, Z, zsp, kernel=None) -> np.ndarray:
        """Local-energy kernel rows K (n_atoms, M), zero across species."""
        kernel = kernel or self.kernel_
        K = np.zeros((len(X), len(Z)))
        for z in np.unique(numbers):
            r = np.flatnonzero(numbers == z)
            c = np.flatnonzero(zsp == z)
            if len(c):
                K[np.ix_(r, c)] = kernel(X[r], Z[c])
        return K

    def _derivative_rows(self, atoms, Z, zsp, derivs=None, kernel=None, eval_gradient=False):
        """Energy (M,), force (N, 3, M) and stress (6, M) kernel rows of one frame.

        With ``eval_gradient`` also their theta-derivatives (M, d), (N, 3, M, d), (6, M, d).
        Only one species block of pair derivatives is touched at a time; no
        (atoms x atoms x 3 x features) array is formed.
        """
        kernel = kernel or self.kernel_
        d = derivs if derivs is not None else self.descriptor_.derivatives(atoms)
        X = d.descriptor
        N, M, nd = len(atoms), len(Z), kernel.n_dims
        numbers = atoms.numbers
        rows = [np.zeros(M), np.zeros((N, 3, M)), np.zeros((6, M))]
        if eval_gradient:
            rows += [np.zeros((M, nd)), np.zeros((N, 3, M, nd)), np.zeros((6, M, nd))]
        has_cell = np.isfinite(d.volume) and d.volume > 0
        center_species = numbers[d.center]
        for z in np.unique(numbers):
            c = np.flatnonzero(zsp == z)
            if not len(c):
                continue
            m = len(c)
            K = kernel(X[numbers == z], Z[c], eval_gradient=eval_gradient)
            p = center_species == z
            if not np.any(p):  # isolated atoms of this species: energy rows only
                for g, Kg in enumerate(K if eval_gradient else (K,)):
                    rows[3 * g][c] = Kg.sum(axis=0)
                continue
            if np.all(p):
                center, neighbor, dX, vec = d.center, d.neighbor, d.dX, d.vector
            else:
                center, neighbor, dX, vec = d.center[p], d.neighbor[p], d.dX[p], d.vector[p]
            dk = kernel.contract_gradient(X, Z[c], center, dX, eval_gradient=eval_gradient)
            if not eval_gradient:
                K, dk = (K,), (dk,)
            for g, (Kg, dkg) in enumerate(zip(K, dk)):
                # g = 0: the rows; g = 1: their theta-derivatives, flattened over (m, d)
                width = m if g == 0 else m * nd
                flat = dkg.reshape(len(center), 3, width)
                e, f, s_ = rows[3 * g: 3 * g + 3]
                e[c] = Kg.sum(axis=0)
                f[:, :, c] = pair_forces(flat, center, neighbor, N).reshape(f[:, :, c].shape)
                if has_cell:
                    s_[:, c] = pair_stress(flat, vec, d.volume).reshape(s_[:, c].shape)
        return tuple(rows)

    def _frame_targets(self, atoms) -> list:
        """The labels of one frame in observation order: [(group, y, noise std)].

        Energy (baselines subtracted; noise ``energy_noise * sqrt(n_atoms)``), then the
        force components, then the stress. Every routine that stacks rows follows this.
        """
        lab = frame_labels(atoms)
        n = len(atoms)
        out = []
        if lab.energy is not None:
            y = np.array([lab.energy - self._e0_of(atoms.numbers).sum()])
            out.append((_E, y, np.array([self.noise_["energy"] * np.sqrt(n)])))
        if lab.forces is not None:
            out.append((_F, lab.forces.ravel(), np.full(3 * n, self.noise_["force"])))
        if lab.stress is not None:
            out.append((_S, lab.stress, np.full(6, self.noise_["stress"])))
        return out

    def _stacked_rows(self, frames, Z, zsp, kernel=None, eval_gradient=False):
        """Kernel rows of every label of ``frames`` in observation order.

        Returns K (n_obs, M) and, with ``eval_gradient``, dK (n_obs, M, d).
        """
        rows, drows = [], []
        for a in frames:
            out = self._derivative_rows(a, Z, zsp, kernel=kernel, eval_gradient=eval_gradient)
            rows.append(self._in_observation_order(a, out[:3]))
            if eval_gradient:
                drows.append(self._in_observation_order(a, out[3:]))
        K = np.concatenate(rows)
        return (K, np.concatenate(drows)) if eval_gradient else K

    def _in_observation_order(self, atoms, out) -> np.ndarray:
        """Stack one frame's (energy, force, stress) rows as its labels are ordered."""
        n = len(atoms)
        e, f, s_ = out
        parts = []
        for group, _, _ in self._frame_targets(atoms):
            parts.append(e[None] if group == _E else
                         f.reshape((3 * n,) + f.shape[2:]) if group == _F else s_)
        return np.concatenate(parts) if parts else np.zeros((0,) + e.shape)

    def _adjoint_rows(self, atoms, Z, zsp):
        """Energy (M,), force (N, 3, M) and stress (6, M) rows by the SOAP adjoint.

        The same rows as :meth:`_derivative_rows`, from one descriptor expansion and one
        backward pass per sparse point (``∂k(x_i, z)/∂x_i`` folded back onto the pair
        vectors, as :meth:`predict` folds the mean): no descriptor derivatives are
        formed, which is cheaper for a few sparse points.
        """
        exp = self.descriptor_.expand(atoms)
        X = exp.descriptor
        N, M = len(atoms), len(Z)
        numbers = atoms.numbers
        e, f, s_ = np.zeros(M), np.zeros((N, 3, M)), np.zeros((6, M))
        has_cell = np.isfinite(exp.volume) and exp.volume > 0
        one = np.ones(1)
        G = np.zeros_like(X)
        for m in range(M):
            r = np.flatnonzero(numbers == zsp[m])
            if not len(r):
                continue
            K, Gr = self.kernel_.value_and_weighted_gradient(X[r], Z[m: m + 1], one)
            e[m] = K.sum()
            if not len(exp.center):
                continue
            G[:] = 0.0
            G[r] = Gr
            dE = exp.backward(G)
            f[:, :, m] = pair_forces(dE, exp.center, exp.neighbor, N)
            if has_cell:
                s_[:, m] = pair_stress(dE, exp.vector, exp.volume)
        return e, f, s_

    def _new_columns(self, atoms, Znew, zspnew) -> np.ndarray:
        """Kernel columns of one stored frame's observations against new sparse points."""
        if len(Znew) <= _ADJOINT_MAX_COLUMNS:
            out = self._adjoint_rows(atoms, Znew, zspnew)
        else:
            out = self._derivative_rows(atoms, Znew, zspnew)
        return self._in_observation_order(atoms, out)

    def _observations(self, frames, Z, zsp, kernel=None):
        """Stack the observations of ``frames``: K_nm, y, noise std, group, frame index."""
        base = len(getattr(self, "frames_", [])) if frames is not getattr(self, "frames_", None) else 0
        ys, noises, groups, fidx = [], [], [], []
        for k, a in enumerate(frames):
            for group, y, noise in self._frame_targets(a):
                ys.append(y)
                noises.append(noise)
                groups.append(np.full(len(y), group, dtype=np.int64))
                fidx.append(np.full(len(y), base + k, dtype=np.int64))
        K_nm = self._stacked_rows(frames, Z, zsp, kernel=kernel)
        return K_nm, np.concatenate(ys), np.concatenate(noises), np.concatenate(groups), np.concatenate(fidx)

    # ------------------------------------------------------------------ predict
    @_thread_policy(lambda self, atoms=None, *a, **k: _block_size(self, atoms))
    def predict(
        self,
        atoms: Atoms,
        return_std: bool = False,
        *,
        forces_std: bool = False,
        stress_std: bool = False,
        calibrated: bool = False,
    ) -> dict[str, Any]:
        """Predict energy, forces and stress (and their uncertainties) of ``atoms``.

        Parameters
        ----------
        atoms : ase.Atoms
        return_std : bool, default False
            Also return ``energies_std`` (DTC std of each local energy, eV, shape
            (n_atoms,)), ``energy_std`` (eV) and ``novelty`` (n_atoms,): the fraction
            of each environment's prior variance that the sparse set does not explain,
            ``(k(x,x) - k K_mm⁻¹ kᵀ) / k(x,x)`` in [0, 1] (0: the environment is a
            sparse point; 1: unlike every sparse point of its species).
        forces_std, stress_std : bool, default False
            Also return ``forces_std`` (n_atoms, 3) eV/Å and ``stress_std`` (6,) eV/Å^3:
            the projected (SoR) std of the latent forces, i.e. the part that labels can
            reduce. They need an explicit derivative pass (about the cost of one
            training frame).
        calibrated : bool, default False
            Report calibrated stds as stored by :meth:`set_calibration`: the raw std
            times ``scale``; for a calibration with a ``noise_scale`` (what the active
            learner stores for forces, see :class:`gpal.calibration.TwoTermCalibrator`)
            the std of a new *label*, ``sqrt((scale std)² + (noise_scale force_noise)²)``,
            which is what a prediction error against the oracle is measured against.

        Returns
        -------
        dict
            ASE keys ``energy``, ``free_energy`` (float, eV), ``energies`` (n_atoms,),
            ``forces`` (n_atoms, 3), ``stress`` (6,) when the frame has a 3D cell, and
            the ``*_std`` keys requested, each a non-negative std of the same shape.
        """
        check_is_fitted(self)
        self._check(atoms)
        exp = self.descriptor_.expand(atoms)
        if len(exp.vector):
            check_min_distance(np.linalg.norm(exp.vector, axis=1), self.min_distance)
        X = exp.descriptor
        numbers = atoms.numbers
        N, F = X.shape
        Z, zsp, alpha = self.sparse_X_, self.sparse_species_, self.alpha_
        energies = self._e0_of(numbers).astype(float)
        G = np.zeros((N, F))
        want_k = return_std or forces_std or stress_std
        K = np.zeros((N, len(Z))) if want_k else None
        for z in np.unique(numbers):
            r = np.flatnonzero(numbers == z)
            c = np.flatnonzero(zsp == z)
            if not len(c):
                continue
            Xr, Zc = X[r], Z[c]
            Kz, G[r] = self.kernel_.value_and_weighted_gradient(Xr, Zc, alpha[c])
            energies[r] += Kz @ alpha[c]
            if want_k:
                K[np.ix_(r, c)] = Kz
        dE = exp.backward(G)
        forces = pair_forces(dE, exp.center, exp.neighbor, N)
        energy = float(energies.sum())
        out = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": forces,
        }
        has_cell = np.isfinite(exp.volume) and exp.volume > 0 and np.all(atoms.pbc)
        if has_cell:
            out["stress"] = pair_stress(dE, exp.vector, exp.volume)
        if return_std:
            kdiag = self.kernel_.diag(X)
            # DTC: k(x,x) - k K_mm^-1 k + k Sigma k; the residual k - Q is >= 0 in exact
            # arithmetic, so rounding below zero is clipped silently
            # (var_nystrom and var_sor, sharing their first triangular solve W = L⁻¹Kᵀ)
            W = self.solver_._nystrom_factor(K)
            V = self.solver_._sor_factor_whitened(W.T)
            resid = np.clip(kdiag - np.einsum("ms,ms->s", W, W), 0.0, None)
            var_local = resid + np.einsum("ms,ms->s", V, V)
            var_E = float(self.solver_.var_sor(K.sum(axis=0)[None])[0] + resid.sum())
            out["energies_std"] = np.sqrt(var_local)
            out["energy_std"] = float(np.sqrt(max(var_E, 0.0)))
            with np.errstate(invalid="ignore", divide="ignore"):
                out["novelty"] = np.where(kdiag > 0, np.clip(resid / kdiag, 0.0, 1.0), 0.0)
        if forces_std or stress_std:
            _, rowF, rowS = self._derivative_rows(atoms, Z, zsp)
            if forces_std:
                out["forces_std"] = np.sqrt(
                    np.clip(self.solver_.var_sor(rowF.reshape(3 * N, -1)), 0, None)
                ).reshape(N, 3)
            if stress_std and has_cell:
                out["stress_std"] = np.sqrt(np.clip(self.solver_.var_sor(rowS), 0, None))
        if calibrated:
            self._apply_calibration(out)
        self._plus_baseline(atoms, out)
        return out

    def residuals(self, frames, *, calibrated: bool = False) -> dict:
        """Prediction errors and stds on labelled frames (one evaluation per frame).

        Returns
        -------
        dict
            ``energy_error`` (n_frames,) eV/atom, ``energy_std`` (n_frames,) eV/atom,
            ``force_error`` and ``force_std`` (3 n_atoms_total,) eV/Å (components; stds
            floored at 1e-12 so z-scores stay finite), ``n_atoms`` (n_frames,).
        """
        e_err, e_std, f_err, f_std, n = [], [], [], [], []
        for a in frames:
            p = self.predict(a, return_std=True, forces_std=True, calibrated=calibrated)
            n.append(len(a))
            e_err.append((p["energy"] - a.get_potential_energy()) / len(a))
            e_std.append(p["energy_std"] / len(a))
            f_err.append((p["forces"] - a.get_forces()).ravel())
            f_std.append(np.maximum(p["forces_std"].ravel(), 1e-12))
        return {
            "energy_error": np.array(e_err),
            "energy_std": np.array(e_std),
            "force_error": np.concatenate(f_err),
            "force_std": np.concatenate(f_std),
            "n_atoms": np.array(n),
        }

    def predict_local_std(self, atoms: Atoms) -> np.ndarray:
        """DTC std (eV) of each atom's local energy; shape (n_atoms,)."""
        return self.predict(atoms, return_std=True)["energies_std"]

    # ------------------------------------------------------------------ calibration hooks
    def set_calibration(self, **factors) -> "SparseGP":
        """Store recalibration data, e.g. ``set_calibration(forces_std=1.3, energies_std=0.9)``.

        Each key names a std output; its value multiplies that std when
        ``predict(..., calibrated=True)``. Values come from gpal.calibration.
        """
        check_is_fitted(self)
        for key, val in factors.items():
            if not key.endswith("_std"):
                raise ValueError(f"calibration keys name std outputs (e.g. forces_std), got {key!r}")
            if isinstance(val, dict):
                self.calibration_[key] = dict(val)
            else:
                if not (np.isfinite(val) and val > 0):
                    raise ValueError(f"calibration factor for {key} must be > 0, got {val}")
                self.calibration_[key] = {"scale": float(val)}
        return self

    def _apply_calibration(self, out: dict) -> None:
        noise = {"forces_std": "force", "stress_std": "stress"}
        for key, cal in self.calibration_.items():
            if key not in out:
                continue
            std = out[key] * cal.get("scale", 1.0)
            if "noise_scale" in cal and noise.get(key):
                std = np.sqrt(np.square(std) + (cal["noise_scale"] * self.noise_[noise[key]]) ** 2)
            out[key] = std

    def calibrated_force_std(self, forces_std) -> np.ndarray:
        """Calibrated std of a force label from raw (SoR) ``forces_std`` (same shape, eV/Å).

        Without a stored force calibration this is the raw std itself.
        """
        out = {"forces_std": np.asarray(forces_std, dtype=float)}
        self._apply_calibration(out)
        return out["forces_std"]

    # ------------------------------------------------------------------ cross-validation
    def loo_residuals(self, frames=None) -> dict:
        """Leave-one-frame-out errors and stds of the training frames, from the factor.

        For training frame B with kernel rows A (its energy, force and stress
        observations) the posterior without B follows from the fitted one without a
        refit: with S = A Σ Aᵀ, Λ the label noise and r = y − A α,

        * error without B:   r₋B = Λ (Λ − S)⁻¹ r,
        * latent covariance: S₋B = S (Λ − S)⁻¹ Λ

        (Woodbury on Σ₋B⁻¹ = Σ⁻¹ − Aᵀ Λ⁻¹ A). No kernel is evaluated: the rows are the
        solver's stored ``K_nm_``; the cost per frame is O(n_obs(B) n_sparse²). These
        are honest held-out errors (cross-validation) of the labels the model already
        has, so calibration needs no extra oracle call.

        Parameters
        ----------
        frames : sequence of int, optional
            Indices into ``frames_``; default all.

        Returns
        -------
        dict
            ``force_error`` (n_comp,) eV/Å (prediction − label), ``force_std`` (n_comp,)
            latent SoR std without the frame (eV/Å), ``force_frame`` (n_comp,) frame
            index of each component, ``energy_error`` (n_e,) and ``energy_std`` (n_e,)
            in eV/atom, ``energy_frame`` (n_e,).
        """
        check_is_fitted(self)
        idx = range(len(self.frames_)) if frames is None else [int(i) for i in frames]
        sol = self.solver_
        out = {k: [] for k in ("force_error", "force_std", "force_frame",
                               "energy_error", "energy_std", "energy_frame")}
        slices = self._frame_slices()
        for b in idx:
            rows = slices[b]
            if rows.stop <= rows.start:
                continue
            if sol.keep_rows_:  # whitened rows: R⁻ᵀAᵀ = R_w⁻ᵀΦᵀ, A alpha = Φ L_mmᵀ alpha
                P = sol.Phi_[rows]
                V = sol._sor_factor_whitened(P)  # [M, n_B]
                pred = P @ (sol.L_mm_.T @ sol.alpha_)
            else:
                A = self._stacked_rows([self.frames_[b]], self.sparse_X_, self.sparse_species_)
                V = sol._sor_factor(A)
                pred = A @ sol.alpha_
            lam = sol.noise_std_[rows] ** 2
            S = V.T @ V
            r = sol.y_[rows] - pred
            D = np.diag(lam) - S
            try:
                cho = scipy.linalg.cho_factor(D, check_finite=False)
            except np.linalg.LinAlgError:
                continue  # the frame pins its own posterior to round-off: skip it
            r_loo = lam * scipy.linalg.cho_solve(cho, r, check_finite=False)
            var = np.einsum("ij,ji->i", S, scipy.linalg.cho_solve(cho, np.diag(lam), check_finite=False))
            std = np.sqrt(np.clip(var, 0.0, None))
            group = self.obs_group_[rows]
            f = group == _F
            # errors as prediction − label (r is label − prediction)
            out["force_error"].append(-r_loo[f])
            out["force_std"].append(std[f])
            out["force_frame"].append(np.full(int(f.sum()), b))
            e = group == _E
            if np.any(e):
                n = len(self.frames_[b])
                out["energy_error"].append(-r_loo[e] / n)
                out["energy_std"].append(std[e] / n)
                out["energy_frame"].append(np.full(int(e.sum()), b))
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}

    # ------------------------------------------------------------------ update
    @_thread_policy()
    def update(
        self,
        frames,
        *,
        n_sparse: int = 0,
        sparse_selection: str = "variance",
    ) -> "SparseGP":
        """Add labelled frames, and optionally new sparse environments taken from them.

        Existing kernel blocks are not recomputed: the new frames' rows are appended to
        the factorisation (a QR update whose cost does not depend on the frames already
        held), and new sparse environments add columns: their kernel columns for the
        stored frames, computed frame by frame (the SOAP adjoint for a few points, else
        one descriptor-derivative pass per frame: this part grows with the number of
        frames), extend the factor in O(n_obs n_sparse k) (no new QR of all rows).
        The result equals a fit from scratch on the same frames and sparse set up to
        rounding (measured ~1e-10 relative on predictions). A model whose rows exceed
        half of ``memory_budget_gb`` (rows not kept) refactorises frame by frame when
        sparse points are added.

        Parameters
        ----------
        frames : list of ase.Atoms
            New labelled frames.
        n_sparse : int, default 0
            Number of new sparse environments to take from the new frames.
        sparse_selection : {"variance", "fps", "random"}, default "variance"
            ``"variance"``: the environments with the largest DTC local-energy variance
            under the current model, chosen greedily so that no two are near-duplicates;
            ``"fps"``: farthest from the current sparse set and from each other.

        Returns
        -------
        self
        """
        check_is_fitted(self)
        choices = ("variance", "fps", "random")
        if sparse_selection not in choices:
            raise ValueError(f"Invalid sparse_selection {sparse_selection!r}; choose from {choices}")
        frames = check_frames(frames)
        labels = [frame_labels(a) for a in frames]
        for k, a in enumerate(frames):
            self._check(a, what=f"frames[{k}]")
            check_min_distance(self._min_pair_distance(a), self.min_distance, "training frame")
        labels = self._minus_baseline(frames, labels)
        new = [_labelled_copy(a, lab) for a, lab in zip(frames, labels)]
        if n_sparse > 0:
            Znew, zspnew = self._choose_new_sparse(new, int(n_sparse), sparse_selection)
            if len(Znew):
                self._add_sparse(Znew, zspnew)
        K_nm, y, noise, group, fidx = self._observations(new, self.sparse_X_, self.sparse_species_)
        self.solver_.update(K_nm, y, noise)
        self.obs_group_ = np.concatenate([self.obs_group_, group])
        self.obs_frame_ = np.concatenate([self.obs_frame_, fidx])
        self.frames_ = self.frames_ + new
        self.alpha_ = self.solver_.alpha_
        self._enforce_budget()
        return self

    @_thread_policy()
    def add_sparse_environments(self, atoms, n_sparse: int, *, sparse_selection: str = "variance") -> int:
        """Add environments of (unlabelled) ``atoms`` to the sparse set; no label needed.

        Sparse (inducing) environments only set where the model can resolve local
        energies; the labels already in the model then decide their posterior. Adding the
        environments of a new configuration removes the part of its DTC variance that
        comes from the sparse approximation (``k - k K_mm^-1 k``) without an oracle call.
        The active learner does this before deciding that a frame needs a label.

        Returns
        -------
        int
            Number of environments added (near-duplicates of existing ones are skipped).
        """
        check_is_fitted(self)
        self._check(atoms)
        Znew, zspnew = self._choose_new_sparse([atoms], int(n_sparse), sparse_selection)
        if len(Znew):
            self._add_sparse(Znew, zspnew)
            self.alpha_ = self.solver_.alpha_
        return len(Znew)

    @_thread_policy()
    def select_frames(
        self,
        candidates,
        n_select: int,
        *,
        labels=("energy", "forces", "stress"),
        score=("forces",),
        return_gains: bool = False,
    ):
        """Choose a batch of frames to label: greedy information gain of their labels.

        Each pick is the candidate whose labels carry the most information,
        ``Σ ½ log(1 + σ²/σ_n²)`` over the scored values (by default its 3N force
        components, with σ² the projected posterior force variance, as
        ``predict(..., forces_std=True)``, and σ_n the force noise), under the posterior
        that already holds the labels of the earlier picks.
        A posterior variance does not depend on label values, so the earlier picks enter
        as rows with zero labels in a copy of the factorisation: the whole batch is
        chosen before any oracle call, and the model is not changed. With one pick this
        is max-variance selection scaled by the label noise; with more, the picks avoid
        each other's redundancy (greedy maximisation of the joint information).

        Parameters
        ----------
        candidates : sequence of ase.Atoms
            Unlabelled (or labelled) configurations. Their kernel rows, (1 + 3N + 6) x
            n_sparse floats each, are held in memory for the duration of the call.
        n_select : int
            Batch size (at most ``len(candidates)``).
        labels : sequence of {"energy", "forces", "stress"}
            What an oracle call returns, i.e. which rows a pick adds to the posterior
            (stress only for fully periodic frames).
        score : sequence of {"energy", "forces", "stress"}, default ("forces",)
            Which values' information gains are summed into a candidate's score. The
            sum treats the values as uncorrelated (an upper bound on their joint gain,
            Hadamard's inequality). Forces alone are the default: they are 3N of a
            frame's 3N + 7 labels and what MD needs.
        return_gains : bool, default False
            Also return each pick's information gain (nats) at the time it was picked.

        Returns
        -------
        indices : ndarray of shape (n_select,), int64
            Positions in ``candidates``, in pick order.
        gains : ndarray of shape (n_select,), only if ``return_gains``
        """
        import copy

        check_is_fitted(self)
        frames = list(candidates)
        if not frames:
            raise ValueError("candidates is empty")
        n_select = int(n_select)
        if not 1 <= n_select <= len(frames):
            raise ValueError(f"n_select must be in [1, {len(frames)}], got {n_select}")
        for name, given in (("labels", labels), ("score", score)):
            unknown = set(given) - {"energy", "forces", "stress"}
            if unknown or not given:
                raise ValueError(
                    f"unknown or no {name} {sorted(unknown)}; choose from energy, forces, stress"
                )
        Z, zsp = self.sparse_X_, self.sparse_species_
        score_rows, score_noise, add_rows, add_noise = [], [], [], []
        for k, a in enumerate(frames):
            self._check(a, what=f"candidates[{k}]")
            e_row, f_rows, s_rows = self._derivative_rows(a, Z, zsp)
            n = len(a)
            block = {
                "energy": (e_row[None, :], np.array([self.noise_["energy"] * np.sqrt(n)])),
                "forces": (f_rows.reshape(3 * n, len(Z)), np.full(3 * n, self.noise_["force"])),
            }
            if np.all(a.pbc):
                block["stress"] = (s_rows, np.full(6, self.noise_["stress"]))
            for names, rows, noise in ((labels, add_rows, add_noise), (score, score_rows, score_noise)):
                use = [g for g in ("energy", "forces", "stress") if g in names and g in block]
                rows.append(np.concatenate([block[g][0] for g in use]) if use else np.zeros((0, len(Z))))
                noise.append(np.concatenate([block[g][1] for g in use]) if use else np.zeros(0))
        # a shallow copy without the rows: update() then rebinds the factor and the label
        # arrays to new ones and never writes into the model's own
        solver = copy.copy(self.solver_).drop_rows()
        picks, gains = [], []
        available = np.ones(len(frames), dtype=bool)
        for _ in range(n_select):
            gain = np.full(len(frames), -np.inf)
            for k in np.flatnonzero(available):
                var = solver.var_sor(score_rows[k]) if len(score_rows[k]) else np.zeros(0)
                gain[k] = 0.5 * np.sum(np.log1p(var / score_noise[k] ** 2))
            k = int(np.argmax(gain))
            picks.append(k)
            gains.append(float(gain[k]))
            available[k] = False
            if len(picks) < n_select and len(add_rows[k]):
                solver.update(add_rows[k], np.zeros(len(add_rows[k])), add_noise[k])
        picks = np.asarray(picks, dtype=np.int64)
        return (picks, np.asarray(gains)) if return_gains else picks

    def _choose_new_sparse(self, frames, n_new, method):
        from . import selection

        Xs = [self.descriptor_.create(a) for a in frames]
        X = np.concatenate(Xs)
        numbers = np.concatenate([a.numbers for a in frames])
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        Zn = self.sparse_X_ / np.linalg.norm(self.sparse_X_, axis=1, keepdims=True)
        # cosine distance of every candidate to its nearest sparse point of its species
        dmin = np.full(len(X), np.inf)
        for z in np.unique(numbers):
            r = numbers == z
            c = self.sparse_species_ == z
            if np.any(c):
                cos = np.clip(Xn[r] @ Zn[c].T, -1, 1)
                dmin[r] = np.sqrt(np.clip(2 - 2 * cos.max(axis=1), 0, None))
        if method == "random":
            rng = as_rng(self.random_state)
            cand = np.flatnonzero(dmin > 1e-3)
            idx = rng.choice(cand, size=min(n_new, len(cand)), replace=False) if len(cand) else cand
        elif method == "fps":
            idx = selection.farthest_point_sampling_from(Xn, min(n_new, len(Xn)), dmin, metric="euclidean")
            idx = idx[dmin[idx] > 1e-3] if len(idx) else idx
        else:  # variance, greedy with exclusion of near-duplicates
            K = self._k_xm(X, numbers, self.sparse_X_, self.sparse_species_)
            var = self.solver_.predict_var(K, self.kernel_.diag(X))
            order = np.argsort(-var, kind="stable")
            chosen = []
            for i in order:
                if len(chosen) >= n_new:
                    break
                if dmin[i] <= 1e-3:
                    continue
                if chosen:
                    cos = Xn[chosen] @ Xn[i]
                    same = numbers[chosen] == numbers[i]
                    if np.any(same & (np.sqrt(np.clip(2 - 2 * cos, 0, None)) <= 1e-3)):
                        continue
                chosen.append(i)
            idx = np.array(chosen, dtype=np.int64)
        idx = np.asarray(idx, dtype=np.int64)
        return X[idx], numbers[idx].astype(np.int64)

    def _add_sparse(self, Znew, zspnew):
        """Append sparse environments: new K_mm rows/columns and new K_nm columns.

        Only what is new is computed: the kernel between the new and the old sparse
        points, and the new points' columns of the stored frames (frame by frame, no
        descriptor derivatives of all frames held at once; the SOAP adjoint for a few
        points). The solver then grows its factors by those columns. Without stored
        rows (memory budget) the factorisation is rebuilt frame by frame.
        """
        Z_old, zsp_old = self.sparse_X_, self.sparse_species_
        Z = np.concatenate([Z_old, Znew])
        zsp = np.concatenate([zsp_old, zspnew])
        sol = self.solver_
        K_on = self._k_xm(Z_old, zsp_old, Znew, zspnew)  # [M_old, k]
        K_mm = np.block([[sol.K_mm_, K_on], [K_on.T, self._k_mm(Znew, zspnew)]])
        if sol.keep_rows_:
            cols = [self._new_columns(a, Znew, zspnew) for a in self.frames_]
            sol.add_sparse(K_mm, np.concatenate(cols) if cols else np.zeros((0, len(Znew))))
        else:  # rows beyond the memory budget: refactorise frame by frame
            _jittered_cholesky(K_mm, self.jitter)  # a failure leaves the model unchanged
            self.sparse_X_, self.sparse_species_ = Z, zsp
            try:
                self._fit_solver(K_mm)
            except np.linalg.LinAlgError:
                self.sparse_X_, self.sparse_species_ = Z_old, zsp_old
                raise
        self.sparse_X_, self.sparse_species_ = Z, zsp
        self._enforce_budget()

    # ------------------------------------------------------------------ hyperparameters
    def _noise_layout(self):
        """Present groups, their indices 0..G-1 per observation, levels and fixed scales."""
        present = [g for g in (_E, _F, _S) if np.any(self.obs_group_ == g)]
        remap = np.full(3, -1)
        remap[present] = np.arange(len(present))
        groups = remap[self.obs_group_]
        levels = np.array([self.noise_[_GROUP_NAMES[g]] for g in present])
        scale = self.solver_.noise_std_ / levels[groups]
        return present, groups, levels, scale

    def _blocks(self, kernel):
        """K_mm, K_nm and their theta-derivatives for ``kernel`` (recomputes everything)."""
        Z, zsp = self.sparse_X_, self.sparse_species_
        M, d = len(Z), kernel.n_dims
        K_mm = np.zeros((M, M))
        dK_mm = np.zeros((M, M, d))
        for z in np.unique(zsp):
            c = np.flatnonzero(zsp == z)
            K, dK = kernel(Z[c], eval_gradient=True)
            K_mm[np.ix_(c, c)] = K
            dK_mm[np.ix_(c, c)] = dK
        K_nm, dK_nm = self._stacked_rows(self.frames_, Z, zsp, kernel=kernel, eval_gradient=True)
        return K_mm, K_nm, dK_mm, dK_nm

    def _signal_only(self, kernel) -> bool:
        """True when the kernel's only free hyperparameter is its signal variance."""
        names = [h.name for h in kernel.hyperparameters if not h.fixed]
        return names == ["signal_variance"]

    @_thread_policy()
    def log_marginal_likelihood(self, theta=None, eval_gradient: bool = False):
        """Log evidence of the training data under the sparse GP (DTC).

        Parameters
        ----------
        theta : array_like, optional
            ``[log noise of each label group present (energy, force, stress),
            kernel.theta...]``; default: the current values.
        eval_gradient : bool, default False

        Returns
        -------
        lml : float
        gradient : ndarray, only with ``eval_gradient``
        """
        check_is_fitted(self)
        present, groups, levels, scale = self._noise_layout()
        G = len(present)
        theta0 = np.concatenate([np.log(levels), self.kernel_.theta])
        theta = theta0 if theta is None else np.asarray(theta, float)
        if theta.shape != theta0.shape:
            raise ValueError(f"theta must have shape {theta0.shape}, got {theta.shape}")
        kernel = self.kernel_.clone_with_theta(theta[G:])
        K_mm, K_nm, dK_mm, dK_nm = self._kernel_blocks_for(kernel)
        solver = SparseGPSolver().fit(
            K_mm, K_nm, self.solver_.y_, np.exp(theta[:G])[groups] * scale, jitter=self.jitter
        )
        return solver.log_marginal_likelihood(
            eval_gradient=eval_gradient, noise_groups=groups,
            K_mm_gradient=dK_mm if eval_gradient and kernel.n_dims else None,
            K_nm_gradient=dK_nm if eval_gradient and kernel.n_dims else None,
        )

    def _kernel_blocks_for(self, kernel, rows=None):
        """Kernel blocks at ``kernel``'s theta; cheap rescaling when only sigma^2 is free.

        ``rows``: a dict in which the stored rows ``K_nm`` (formed from the whitened
        ones, O(n_obs n_sparse²)) are kept between calls.
        """
        if self._signal_only(kernel) and self.solver_.keep_rows_:
            ratio = kernel.signal_variance / self.kernel_.signal_variance
            rows = {} if rows is None else rows
            if "K_nm" not in rows:
                rows["K_nm"] = self.solver_.K_nm_
            K_mm = self.solver_.K_mm_ * ratio
            K_nm = rows["K_nm"] * ratio
            return K_mm, K_nm, K_mm[:, :, None], K_nm[:, :, None]
        return self._blocks(kernel)

    def _free_hyperparameters(self) -> list[str]:
        """Names of what the user left to the evidence (kernel None: ζ and its variance)."""
        free = ["zeta", "signal_variance"] if self.kernel is None else []
        free += [g + "_noise" for g in _GROUP_NAMES if getattr(self, g + "_noise") is None]
        return free

    def _rows_for_kernels(self, atoms, Z, zsp, derivs, kernels) -> list:
        """:meth:`_derivative_rows` of one frame for several kernels from one derivative pass.

        For cosine kernels the expensive contraction of the descriptor derivatives with
        the sparse rows, ``dX·(ẑ - c x̂)``, does not depend on the kernel's shape (ζ);
        only the elementwise factor ``f'(c)`` does. It is formed once per species block.
        """
        from . import _jit
        from .kernels import CosineKernel

        if len(kernels) == 1 or not all(isinstance(k, CosineKernel) for k in kernels):
            return [self._derivative_rows(atoms, Z, zsp, derivs=derivs, kernel=k) for k in kernels]
        d = derivs
        X = d.descriptor
        N, M = len(atoms), len(Z)
        numbers = atoms.numbers
        out = [(np.zeros(M), np.zeros((N, 3, M)), np.zeros((6, M))) for _ in kernels]
        has_cell = np.isfinite(d.volume) and d.volume > 0
        center_species = numbers[d.center]
        k0 = kernels[0]
        for k in kernels:
            k._validate()
        for z in np.unique(numbers):
            c = np.flatnonzero(zsp == z)
            if not len(c):
                continue
            m = len(c)
            Xa, Xh, xn, Zc, Zh, zn = k0._prepare(X, Z[c])
            C, _ = k0._cosines(Xh, xn, Zh, False)
            rz = numbers == z
            p = center_species == z
            if np.any(p):
                center = np.ascontiguousarray(d.center[p], dtype=np.int64)
                neighbor, vec = d.neighbor[p], d.vector[p]
                dX = np.ascontiguousarray(d.dX[p], dtype=np.float64)
                P, F = len(center), dX.shape[2]
                D = (dX.reshape(P * 3, F) @ Zh.T).reshape(P, 3, m)
                b = _jit._pair_projection(dX, Xh, center)
                _jit._pair_tangent(D, b, C, center)
                inv = k0._inverse_norms(xn)
            for k, (e, f, s_) in zip(kernels, out):
                s2, shape = float(k.signal_variance), float(k._shape_param())
                e[c] = s2 * _jit._apply_f(np.ascontiguousarray(C[rz]), k._kind, shape).sum(axis=0)
                if not np.any(p):
                    continue
                Fp = _jit._apply_fprime(C, k._kind, shape)
                flat = _jit._pair_scale(D, Fp, s2 * inv, center)
                f[:, :, c] = pair_forces(flat, center, neighbor, N).reshape(N, 3, m)
                if has_cell:  # pair_stress as one BLAS product (its einsum is slow here)
                    st = (vec.T @ flat.reshape(P, 3 * m)).reshape(3, 3, m)  # [b, a, m]
                    st = 0.5 * (st + st.transpose(1, 0, 2)) / d.volume
                    s_[:, c] = st[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return out

    def _choose_hyperparameters(self, zetas=None, l_maxes=None, warn_stacklevel: int = 3) -> None:
        """Choose the free hyperparameters by the evidence and refit the solver.

        Every candidate (kernel, SOAP l_max) gets its kernel rows from one
        descriptor-derivative pass per frame (a smaller l_max is a subset of the
        features, :func:`_l_max_subset`, on the same sparse environments); the noise
        levels and signal variance of each are set by maximising the log marginal
        likelihood (:func:`_maximise_evidence`, O(n_sparse³) per step after one
        O(n_obs n_sparse²) pass); the candidate with the largest maximum wins.
        """
        import dataclasses

        frames, Z, zsp = self.frames_, self.sparse_X_, self.sparse_species_
        free_kernel = self.kernel is None
        if free_kernel:
            zetas = tuple(ZETA_CANDIDATES if zetas is None else zetas)
            if not zetas:
                raise ValueError("zetas is empty")
            kernels = [NormalizedDotProduct(zeta=int(z), signal_variance_bounds=SIGNAL_VARIANCE_BOUNDS)
                       for z in zetas]
        else:
            kernels = [self.kernel_]
        L = int(self.descriptor_.l_max)
        l_maxes = sorted({int(v) for v in (l_maxes or (L,)) if int(v) <= L} | {L})
        subsets = {lm: None if lm == L else _l_max_subset(self.descriptor_, lm) for lm in l_maxes}
        cands = [(lm, kern) for lm in l_maxes for kern in kernels]
        Zs = {lm: Z if cols is None else np.ascontiguousarray(Z[:, cols])
              for lm, cols in subsets.items()}
        # targets, groups and fixed noise factors (sqrt(n_atoms) for energies)
        ys, scales, groups, fidx = [], [], [], []
        targets = [self._frame_targets(a) for a in frames]
        for k, tg in enumerate(targets):
            for group, y, noise in tg:
                ys.append(y)
                scales.append(noise / self.noise_[_GROUP_NAMES[group]])
                groups.append(np.full(len(y), group, dtype=np.int64))
                fidx.append(np.full(len(y), k, dtype=np.int64))
        y, scale = np.concatenate(ys), np.concatenate(scales)
        group, self.obs_frame_ = np.concatenate(groups), np.concatenate(fidx)
        self.obs_group_ = group
        present = [g for g in (_E, _F, _S) if np.any(group == g)]
        remap = np.full(3, -1)
        remap[present] = np.arange(len(present))
        gidx = remap[group]
        G = len(present)
        names = [_GROUP_NAMES[g] for g in present]
        levels0 = np.array([self.noise_[nm] for nm in names])
        noise_bounds = [NOISE_BOUNDS[nm] if getattr(self, nm + "_noise") is None else "fixed"
                        for nm in names]
        # every candidate's rows in memory, or (beyond half the memory budget) only their
        # whitened per-group sums, accumulated frame by frame
        M = len(Z)
        stream = not self._keep_rows_fits(len(y) * len(cands), M)
        rows = [[] for _ in cands]
        if stream:
            K_mms = [self._k_mm(Zs[lm], zsp, kern) for lm, kern in cands]
            L_mms = [_jittered_cholesky(K, self.jitter)[0] for K in K_mms]
            sums = [[np.zeros((G, M, M)), np.zeros((G, M)), np.zeros(G), np.zeros(G)]
                    for _ in cands]
        slices = self._frame_slices()
        for k, a in enumerate(frames):
            d = self.descriptor_.derivatives(a)
            outs = []
            for lm, cols in subsets.items():
                dl = d if cols is None else dataclasses.replace(
                    d, descriptor=np.ascontiguousarray(d.descriptor[:, cols]),
                    dX=np.ascontiguousarray(d.dX[:, :, cols]))
                outs += self._rows_for_kernels(a, Zs[lm], zsp, dl, kernels)
            del d
            sl = slices[k]
            for c, out in enumerate(outs):
                K_f = self._in_observation_order(a, out)
                if not stream:
                    rows[c].append(K_f)
                    continue
                Phi = scipy.linalg.solve_triangular(
                    L_mms[c], (K_f / scale[sl, None]).T, lower=True, check_finite=False).T
                for acc, part in zip(sums[c], _evidence_sums(Phi, y[sl] / scale[sl], gidx[sl], G)):
                    acc += part
        table, best = [], None
        for c, (lm, kernel) in enumerate(cands):
            K_nm = None if stream else np.concatenate(rows[c])
            rows[c] = None
            K_mm = K_mms[c] if stream else self._k_mm(Zs[lm], zsp, kernel)
            sv_bounds = kernel.signal_variance_bounds if free_kernel else "fixed"
            if isinstance(sv_bounds, str) or kernel.n_dims == 0:
                sv_bounds = "fixed"
            levels, ratio, lml = _maximise_evidence(
                K_mm, K_nm, y, gidx, scale, levels0, noise_bounds,
                None if sv_bounds == "fixed" else np.array(sv_bounds) / kernel.signal_variance,
                self.jitter, sums=sums[c] if stream else None,
            )
            fitted_kernel = kernel.clone()
            fitted_kernel.signal_variance = float(kernel.signal_variance * ratio)
            noise = dict(self.noise_)
            noise.update({nm: float(v) for nm, v in zip(names, levels)})
            table.append({
                "zeta": int(kernel.zeta) if isinstance(kernel, NormalizedDotProduct) else None,
                "l_max": lm,
                "signal_variance": fitted_kernel.signal_variance,
                "noise": noise,
                "log_marginal_likelihood": lml,
                "selected": False,
            })
            if best is None or lml > best[0]:
                best = (lml, len(table) - 1, fitted_kernel,
                        (K_mm * ratio, None if stream else K_nm * ratio), noise,
                        levels, None if sv_bounds == "fixed" else sv_bounds, lm)
            del K_nm
        lml, k_best, kernel, (K_mm, K_nm), noise, levels, sv_bounds, lm = best
        table[k_best]["selected"] = True
        if stream:  # a second pass over the frames, with the chosen kernel, in blocks
            if lm != L:
                self.descriptor_ = SOAP(**{**self.descriptor_.get_params(), "l_max": lm})
                self.sparse_X_ = Zs[lm]
            self.kernel_, self.noise_ = kernel, noise
            self._fit_solver(K_mm)
            solver = self.solver_
        else:
            solver = SparseGPSolver().fit(K_mm, K_nm, y, levels[gidx] * scale, jitter=self.jitter)
        lml = float(solver.log_marginal_likelihood())  # the QR value (agrees to round-off)
        table[k_best]["log_marginal_likelihood"] = lml
        if lm != L:  # the smaller SOAP: its features on the same sparse environments
            self.descriptor_ = SOAP(**{**self.descriptor_.get_params(), "l_max": lm})
            self.sparse_X_ = Zs[lm]
        self.kernel_ = kernel
        self.noise_ = noise
        self.solver_ = solver
        self.alpha_ = solver.alpha_
        self._enforce_budget()
        self.log_marginal_likelihood_value_ = lml
        self.evidence_ = table
        log.info("hyperparameters by evidence: %r noise %s lml %.6g", kernel, noise, lml)
        # a chosen value at the edge of its range: the evidence would go further
        at_bound = []
        for nm, lev, b in zip(names, levels, noise_bounds):
            if b != "fixed":
                side = _bound_side(lev, b)
                if side:
                    at_bound.append(f"{nm}_noise = {lev:.3g} {_UNITS[nm]} (at its {side} bound)")
        if sv_bounds is not None:
            side = _bound_side(kernel.signal_variance, sv_bounds)
            if side:
                at_bound.append(f"signal_variance = {kernel.signal_variance:.3g} eV² "
                                f"(at its {side} bound)")
        if at_bound:
            warnings.warn(
                "hyperparameters chosen by the evidence sit at a bound of their range: "
                + "; ".join(at_bound) + ". The evidence would move them further (a lower "
                "noise bound is normal for a deterministic oracle); set the value explicitly "
                "to fix it.",
                UserWarning,
                stacklevel=warn_stacklevel,
            )

    @_thread_policy()
    def select_hyperparameters(self, *, zetas=None) -> "SparseGP":
        """Re-choose, by the evidence, what the user left unset; keep the sparse set.

        On the current training frames (including those added by :meth:`update`) and
        sparse environments: with ``kernel=None`` the exponent ζ of
        ``NormalizedDotProduct`` among ``zetas`` (default :data:`ZETA_CANDIDATES`) and its
        signal variance; each noise given as ``None`` within :data:`NOISE_BOUNDS`. Each
        candidate is scored by its maximised log marginal likelihood; the best is
        refitted and stored (``kernel_``, ``noise_``, ``zeta_``, ``evidence_``). This is
        what :meth:`fit` does with ``hyperparameters="evidence"``; call it to re-choose
        as data arrive (it costs one descriptor-derivative pass over the training
        frames). Values the user set are kept; with nothing left to choose the model is
        unchanged. The stored calibration is kept (re-calibrate afterwards).

        Returns
        -------
        self

        Warns
        -----
        UserWarning
            A chosen noise or signal variance sits at a bound of its range.
        """
        check_is_fitted(self)
        if self._free_hyperparameters():
            self._choose_hyperparameters(zetas, warn_stacklevel=4)
        return self

    @_thread_policy()
    def optimize_hyperparameters(
        self, *, optimize_noise: bool = True, n_restarts: int = 0, noise_bounds=None
    ) -> "SparseGP":
        """Maximise the log marginal likelihood over kernel hyperparameters and noises.

        Optimised in log space with L-BFGS-B and analytic gradients: the kernel's free
        hyperparameters (signal variance; the length scale of a squared-exponential
        kernel) and, with ``optimize_noise``, the energy (per atom), force and stress
        noise levels of the label groups present. When only the signal variance is
        free, no kernel block is recomputed. The model is refitted at the optimum.
        The exponent ζ is not changed (see :meth:`select_hyperparameters`).

        Parameters
        ----------
        optimize_noise : bool, default True
        n_restarts : int, default 0
        noise_bounds : (float, float), list of them or None
            Linear bounds of the noise levels, one pair for all groups or one per group
            present (energy, force, stress order). Default: :data:`NOISE_BOUNDS`.

        Returns
        -------
        self

        Warns
        -----
        UserWarning
            An optimised noise or kernel hyperparameter sits at a bound (named).
        """
        from .sparse_gp import optimize_hyperparameters

        check_is_fitted(self)
        present, groups, levels, scale = self._noise_layout()
        if noise_bounds is None:
            noise_bounds = [NOISE_BOUNDS[_GROUP_NAMES[g]] for g in present]
        cache, rows = {}, {}

        def build(theta_k):
            key = tuple(np.round(theta_k, 14))
            if key not in cache:
                cache.clear()
                cache[key] = self._kernel_blocks_for(self.kernel_.clone_with_theta(theta_k), rows)
            return cache[key]

        res = optimize_hyperparameters(
            build, self.solver_.y_, groups, levels, self.kernel_.theta,
            kernel_bounds=self.kernel_.bounds if self.kernel_.n_dims else None,
            noise_scale=scale,
            noise_bounds=noise_bounds if optimize_noise else "fixed",
            jitter=self.jitter, n_restarts=n_restarts, random_state=self.random_state,
        )
        kernel = self.kernel_.clone_with_theta(res.kernel_theta)
        K_mm, K_nm, _, _ = self._kernel_blocks_for(kernel, rows)
        del rows
        if optimize_noise:
            for g, lev in zip(present, res.noise_levels):
                self.noise_[_GROUP_NAMES[g]] = float(lev)
        else:
            res.noise_levels = levels
        self.kernel_ = kernel
        self.solver_ = SparseGPSolver().fit(
            K_mm, K_nm, self.solver_.y_, res.noise_levels[groups] * scale, jitter=self.jitter
        )
        self.alpha_ = self.solver_.alpha_
        self._enforce_budget()
        self.log_marginal_likelihood_value_ = float(res.log_marginal_likelihood)
        log.info("hyperparameters: %r noise %s lml %.6g", self.kernel_, self.noise_, res.log_marginal_likelihood)
        at_bound = []
        if optimize_noise:
            nb = list(noise_bounds)
            if len(nb) == 2 and all(np.isscalar(b) for b in nb):
                nb = [tuple(nb)] * len(present)
            for g, lev, b in zip(present, res.noise_levels, nb):
                side = None if isinstance(b, str) else _bound_side(lev, b)
                if side:
                    name = _GROUP_NAMES[g]
                    at_bound.append(f"{name}_noise = {lev:.3g} {_UNITS[name]} (at its {side} bound)")
        free = [h for h in kernel.hyperparameters if not h.fixed]
        for h in free:
            side = _bound_side(getattr(kernel, h.name), h.bounds)
            if side:
                at_bound.append(f"{h.name} = {getattr(kernel, h.name):.3g} (at its {side} bound)")
        if at_bound:
            warnings.warn(
                "optimised hyperparameters sit at a bound of their range: " + "; ".join(at_bound)
                + ". The evidence would move them further (a lower noise bound is normal for "
                "a deterministic oracle); widen the bound or fix the value.",
                UserWarning,
                stacklevel=3,
            )
        return self

    # ------------------------------------------------------------------ Δ-learning (baseline)
    def _minus_baseline(self, frames, labels: list) -> list:
        """The labels the GP fits: ``labels`` minus the baseline's (unchanged without one).

        The one place where labels enter the model (:meth:`fit`, :meth:`update`); the
        stored ``frames_`` carry the result, so everything downstream (e0, evidence,
        cross-validation, the saved training set) sees residuals only.
        """
        calc = getattr(self, "baseline_", None)
        if calc is None:
            return labels
        out = []
        for a, lab in zip(frames, labels):
            b = _baseline.baseline_labels(calc, a, stress=lab.stress is not None)
            out.append(Labels(
                None if lab.energy is None else lab.energy - b["energy"],
                None if lab.forces is None else lab.forces - b["forces"],
                None if lab.stress is None else lab.stress - b["stress"],
            ))
        return out

    def _plus_baseline(self, atoms, out: dict) -> None:
        """Add the baseline's energy, per-atom energies, forces and stress to a prediction
        of the GP (in place); the stds stay the GP's."""
        calc = getattr(self, "baseline_", None)
        if calc is None:
            return
        b = _baseline.baseline_labels(calc, atoms, stress="stress" in out)
        out["energy"] = out["free_energy"] = out["energy"] + b["energy"]
        out["energies"] = out["energies"] + b["energies"]
        out["forces"] = out["forces"] + b["forces"]
        if "stress" in out:
            out["stress"] = out["stress"] + b["stress"]

    # ------------------------------------------------------------------ save / load
    def save(self, path):
        """Save to one ``.npz`` file (no pickle); see :mod:`gpal.io`. Returns the path."""
        from . import __version__
        from .io import save_model

        check_is_fitted(self)
        frames = self.frames_
        nat = np.array([len(a) for a in frames], dtype=np.int64)
        labels = [frame_labels(a) for a in frames]
        arrays = {
            "sparse_X": self.sparse_X_,
            "sparse_species": self.sparse_species_,
            "alpha": self.alpha_,
            "obs_group": self.obs_group_,
            "obs_frame": self.obs_frame_,
            "frame_natoms": nat,
            "frame_numbers": np.concatenate([a.numbers for a in frames]),
            "frame_positions": np.concatenate([a.positions for a in frames]),
            "frame_cells": np.array([a.cell.array for a in frames]),
            "frame_pbc": np.array([a.pbc for a in frames]),
            "frame_energy": np.array([np.nan if lab.energy is None else lab.energy for lab in labels]),
            "frame_forces": np.concatenate(
                [lab.forces if lab.forces is not None else np.full((len(a), 3), np.nan)
                 for a, lab in zip(frames, labels)]
            ),
            "frame_stress": np.array(
                [lab.stress if lab.stress is not None else np.full(6, np.nan) for lab in labels]
            ),
        }
        for name, value in self.solver_._to_arrays().items():
            arrays["solver_" + name] = value
        rs = self.random_state if isinstance(self.random_state, (int, type(None))) else None
        meta = {
            "gpal_version": __version__,
            "descriptor": {"type": "SOAP", "params": self.descriptor_.get_params()},
            "kernel": self.kernel_.to_dict(),
            "noise": self.noise_,
            "e0": {str(z): v for z, v in self.e0_.items()},
            "calibration": self.calibration_,
            "solver_jitter": self.solver_.jitter_,
            "hyperparameters": {
                "mode": self.hyperparameters,
                "zeta": self.zeta_,
                "log_marginal_likelihood": getattr(self, "log_marginal_likelihood_value_", None),
                "evidence": getattr(self, "evidence_", None),
            },
            "params": {
                "kernel": None if self.kernel is None else self.kernel.to_dict(),
                "hyperparameters": self.hyperparameters,
                "energy_noise": self.energy_noise, "force_noise": self.force_noise,
                "stress_noise": self.stress_noise,
                "n_sparse": self.n_sparse if isinstance(self.n_sparse, int) else
                {str(k): int(v) for k, v in self.n_sparse.items()},
                "sparse_selection": self.sparse_selection,
                "e0": self.e0 if isinstance(self.e0, str) else {str(k): float(v) for k, v in self.e0.items()},
                "min_distance": self.min_distance, "jitter": self.jitter, "random_state": rs,
                "memory_budget_gb": self.memory_budget_gb,
            },
        }
        spec = _baseline.baseline_spec(self.baseline, self.baseline_kwargs)
        if spec is not None:  # Δ-model: the baseline as an import path and JSON kwargs
            meta["baseline"] = spec
        return save_model(path, arrays, meta)

    @classmethod
    def load(cls, path) -> "SparseGP":
        """Load a model written by :meth:`save`.

        Raises
        ------
        gpal.ModelFileError
            Missing, truncated, tampered or incompatible file.
        """
        from .exceptions import ModelFileError
        from .io import read_model_file
        from .kernels import kernel_from_dict

        arrays, meta = read_model_file(path)
        try:
            desc = SOAP(**meta["descriptor"]["params"])
            kernel = kernel_from_dict(meta["kernel"])
            params = dict(meta["params"])
            # files from before the evidence defaults: the kernel and noises were given
            params.setdefault("hyperparameters", "fixed")
            given_kernel = params.pop("kernel", kernel.to_dict())
            given_kernel = None if given_kernel is None else kernel_from_dict(given_kernel)
            if isinstance(params.get("n_sparse"), dict):
                params["n_sparse"] = {int(k): v for k, v in params["n_sparse"].items()}
            if isinstance(params.get("e0"), dict):
                params["e0"] = {int(k) if k.isdigit() else k: v for k, v in params["e0"].items()}
            spec = meta.get("baseline")
            if spec is not None:
                params["baseline"], params["baseline_kwargs"] = spec["factory"], dict(spec["kwargs"])
            self = cls(desc, given_kernel, **params)
            self.descriptor_ = desc
            self.kernel_ = kernel
            choice = meta.get("hyperparameters", {})
            self.evidence_ = choice.get("evidence")
            if choice.get("log_marginal_likelihood") is not None:
                self.log_marginal_likelihood_value_ = float(choice["log_marginal_likelihood"])
            self.noise_ = {k: float(v) for k, v in meta["noise"].items()}
            self.e0_ = {int(k): float(v) for k, v in meta["e0"].items()}
            self.calibration_ = dict(meta.get("calibration", {}))
            self.sparse_X_ = arrays["sparse_X"]
            self.sparse_species_ = arrays["sparse_species"].astype(np.int64)
            self.obs_group_ = arrays["obs_group"].astype(np.int64)
            self.obs_frame_ = arrays["obs_frame"].astype(np.int64)
            solver = SparseGPSolver._from_arrays(
                {k[len("solver_"):]: v for k, v in arrays.items() if k.startswith("solver_")},
                float(meta["solver_jitter"]))
            self.solver_ = solver
            self.alpha_ = solver.alpha_
            exact = "solver_R_w" in arrays  # earlier files: the weights from the old factor
            if not (np.array_equal(self.alpha_, arrays["alpha"]) if exact else
                    np.allclose(self.alpha_, arrays["alpha"], rtol=1e-6,
                                atol=1e-9 * float(np.max(np.abs(arrays["alpha"]), initial=0.0)))):
                raise ModelFileError(f"{path}: stored weights disagree with the stored factorisation")
            frames, start = [], 0
            for k, n in enumerate(arrays["frame_natoms"]):
                sl = slice(start, start + int(n))
                start += int(n)
                a = Atoms(
                    numbers=arrays["frame_numbers"][sl], positions=arrays["frame_positions"][sl],
                    cell=arrays["frame_cells"][k], pbc=arrays["frame_pbc"][k],
                )
                e = arrays["frame_energy"][k]
                f = arrays["frame_forces"][sl]
                s = arrays["frame_stress"][k]
                lab = Labels(
                    None if np.isnan(e) else float(e),
                    None if np.isnan(f).all() else f.copy(),
                    None if np.isnan(s).all() else s.copy(),
                )
                frames.append(_labelled_copy(a, lab))
            self.frames_ = frames
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{path}: inconsistent model file ({type(exc).__name__}: {exc})") from exc
        try:
            self.baseline_ = _baseline.make_baseline(self.baseline, self.baseline_kwargs)
        except _baseline.BaselineError as exc:
            raise _baseline.BaselineError(f"{path}: {exc}") from None
        return self


def _bound_side(value, bounds, tol: float = 1e-2):
    """"lower"/"upper" when ``value`` is within ``tol`` (in log, 1 %) of a bound, else None."""
    lo, hi = (float(b) for b in bounds)
    if abs(np.log(value) - np.log(lo)) <= tol:
        return "lower"
    if abs(np.log(value) - np.log(hi)) <= tol:
        return "upper"
    return None


def _evidence_sums(Phi, yw, groups, G):
    """Per-group sums ``(Φ_gᵀΦ_g, Φ_gᵀ y_g, |y_g|², n_g)`` of whitened rows (accumulable)."""
    sel = [groups == g for g in range(G)]
    return (np.array([Phi[s].T @ Phi[s] for s in sel]),
            np.array([Phi[s].T @ yw[s] for s in sel]),
            np.array([yw[s] @ yw[s] for s in sel]),
            np.array([np.count_nonzero(s) for s in sel], dtype=float))


def _maximise_evidence(K_mm, K_nm, y, groups, scale, levels0, noise_bounds, ratio_bounds, jitter,
                       sums=None):
    """Maximise the DTC log evidence over noise levels and a common kernel scale.

    The noise std of observation i is ``levels[groups[i]] * scale[i]``; the kernel
    blocks are ``r K_mm`` and ``r K_nm`` (r: the signal-variance ratio). With
    ``K_mm = L Lᵀ`` (jittered as the solver does) and the whitened rows
    ``Φ = Λ₀^{-1/2} K_nm L⁻ᵀ`` (Λ₀: the fixed factors ``scale²``), one pass forms the
    per-group Gram matrices ``Φ_gᵀ Φ_g`` (O(n_obs M²)); each evaluation then costs
    O(M³) + O(n_obs M)::

        yᵀ(Q+Λ)⁻¹y = min_u Σ_g w_g |y_g - r Φ_g u|² + r |u|²      (w_g = levels_g⁻²)
        log|Q+Λ|   = log|Λ| + log|r I + r² Σ_g w_g Φ_gᵀ Φ_g| - M log r

    (the quadratic form from residuals, which stays accurate when the fit is close;
    the whitened matrix has eigenvalues >= r, so its Cholesky factor is well
    conditioned where ``K_mm + K_nmᵀ Λ⁻¹ K_nm`` would not be). The gradient follows by
    the envelope theorem. ``noise_bounds``: one (low, high) or "fixed" per group;
    ``ratio_bounds``: (low, high) for r, or None (r = 1).

    ``sums``: instead of ``K_nm`` (None), the sums of :func:`_evidence_sums` accumulated
    frame by frame over rows whitened by the same ``L_mm`` and ``scale``. The residuals
    then come from the sums, ``|y_g - rΦ_g u|² = |y_g|² - 2r uᵀΦ_gᵀy_g + r² uᵀΦ_gᵀΦ_g u``
    (cancellation costs about ``eps |y|²/|residual|²`` relative, ~1e-13 for forces fitted
    to a few per cent).

    Returns
    -------
    levels : ndarray (n_groups,), ratio : float, lml : float (at the maximum)
    """
    import scipy.optimize

    from .sparse_gp import _jittered_cholesky

    G = len(levels0)
    M = K_mm.shape[0]
    n = len(y)
    yw = y / scale
    sel = [groups == g for g in range(G)]
    if sums is None:
        L_mm, _ = _jittered_cholesky(K_mm, jitter)
        Phi = scipy.linalg.solve_triangular(L_mm, (K_nm / scale[:, None]).T, lower=True,
                                            check_finite=False).T  # [n, M]
        gram, bvec, yy_g, n_g = _evidence_sums(Phi, yw, groups, G)  # [G, M, M], [G, M]
    else:
        Phi = None
        gram, bvec, yy_g, n_g = sums
    const = 2.0 * np.sum(np.log(scale)) + n * np.log(2.0 * np.pi)
    eye = np.eye(M)

    lo = np.empty(G + 1)
    hi = np.empty(G + 1)
    free = np.ones(G + 1, bool)
    for g, b in enumerate(noise_bounds):
        if isinstance(b, str):
            free[g] = False
            lo[g] = hi[g] = np.log(levels0[g])
        else:
            lo[g], hi[g] = np.log(b[0]), np.log(b[1])
    if ratio_bounds is None:
        free[G] = False
        lo[G] = hi[G] = 0.0
    else:
        lo[G], hi[G] = np.log(ratio_bounds[0]), np.log(ratio_bounds[1])
    x0 = np.concatenate([np.log(levels0), [0.0]])
    x0 = np.clip(x0, lo, hi)

    def negative(xf):
        x = x0.copy()
        x[free] = xf
        w = np.exp(-2.0 * x[:G])
        r = np.exp(x[G])
        A = r * eye + r * r * np.einsum("g,gij->ij", w, gram)
        try:
            cho = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros(xf.shape)
        u = scipy.linalg.cho_solve(cho, r * (w @ bvec), check_finite=False)
        if Phi is not None:
            pred = r * (Phi @ u)
            res = yw - pred
            e_g = np.array([res[s] @ res[s] for s in sel])
        else:  # from the sums: residual and residual·prediction per group
            ub = bvec @ u  # [G]
            uGu = np.einsum("i,gij,j->g", u, gram, u)
            e_g = yy_g - 2.0 * r * ub + r * r * uGu
            rp_g = r * ub - r * r * uGu  # res_g · pred_g
        quad_u = r * (u @ u)
        J = w @ e_g + quad_u
        L = 2.0 * (n_g @ x[:G]) + 2.0 * np.sum(np.log(np.diag(cho[0]))) - M * x[G]
        Ainv = scipy.linalg.cho_solve(cho, eye, check_finite=False)
        tr_g = np.einsum("ij,gij->g", Ainv, gram)
        grad = np.empty(G + 1)
        grad[:G] = -2.0 * w * e_g + 2.0 * n_g - 2.0 * w * r * r * tr_g
        if Phi is not None:
            wres = np.zeros(n)
            for g, s in enumerate(sel):
                wres[s] = w[g] * res[s]
            wres_pred = wres @ pred
        else:
            wres_pred = w @ rp_g
        grad[G] = (-2.0 * wres_pred + quad_u) + (r * np.trace(Ainv) + 2.0 * r * r * (w @ tr_g) - M)
        return 0.5 * (J + L + const), 0.5 * grad[free]

    x = x0.copy()
    if np.any(free):
        bounds = list(zip(lo[free], hi[free]))
        starts = [x0[free]]
        # a second start from small noises: the evidence can have a second maximum
        # where the data are explained as noise
        alt = x0.copy()
        alt[:G] = np.where(free[:G], np.minimum(lo[:G] + np.log(10.0), x0[:G]), x0[:G])
        starts.append(alt[free])
        best = None
        for start in starts:
            res = scipy.optimize.minimize(negative, start, jac=True, method="L-BFGS-B",
                                          bounds=bounds)
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
        if best is None:
            raise np.linalg.LinAlgError("the evidence could not be evaluated (Cholesky failed)")
        x[free] = best.x
    value = negative(x[free])[0] if np.any(free) else negative(np.zeros(0))[0]
    return np.exp(x[:G]), float(np.exp(x[G])), float(-value)
