"""Observation rows: the kernel rows that map a model's sparse weights to a frame's labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from .._threads import policy as _thread_policy
from .._validation import (
    Labels,
    check_is_fitted,
    frame_labels,
)
from ..descriptors import SOAP, pair_forces, pair_stress
from ..descriptors.soap import virial_stress
from ..kernels import CosineKernel
from .defaults import (
    _ADJOINT_BLOCK,
    _ADJOINT_MAX_COLUMNS,
    _E,
    _F,
    _S,
)

# multiply-adds of a centre species' pair products below which _Rows._contract_rows
# does not split them by neighbour species (the calls' fixed cost would dominate)
_SPLIT_MIN_PRODUCT = 1e8


#: ``Atoms.info`` key of the sampler temperature (K) at which the active learner labelled a
#: frame; a model keeps it with its training frames (and in its file), so a run that
#: continues the model knows how hot its labels already are
TEMPERATURE_KEY = "gpal_temperature"


def frame_temperature(atoms: Atoms, what: str = "atoms") -> float | None:
    """``atoms.info["gpal_temperature"]`` (K) as a float, None when absent; ``what``
    names the frame in the error.

    Raises
    ------
    ValueError
        The value is not a finite number >= 0.
    """
    T = atoms.info.get(TEMPERATURE_KEY)
    if T is None:
        return None
    try:
        T = float(T)
    except (TypeError, ValueError):
        T = float("nan")
    if not (np.isfinite(T) and T >= 0):
        raise ValueError(f"{what}: info[{TEMPERATURE_KEY!r}] must be a temperature in K (a finite number >= 0), "
                         f"got {atoms.info.get(TEMPERATURE_KEY)!r}")
    return T


def _labelled_copy(atoms: Atoms, labels: Labels) -> Atoms:
    """A bare copy of ``atoms`` carrying only its labels (in a SinglePointCalculator)
    and, if it has one, the temperature it was labelled at (``info["gpal_temperature"]``, K)."""
    from ..io import labelled

    out = labelled(atoms, energy=labels.energy, forces=labels.forces, stress=labels.stress)
    T = frame_temperature(atoms)
    if T is not None:
        out.info[TEMPERATURE_KEY] = T
    return out


@dataclass(frozen=True)
class ObservationRows:
    """Kernel rows of one frame's labels against a model's sparse set (:meth:`SparseGP.observation_rows`).

    Attributes
    ----------
    energy : ndarray of shape (n_sparse,)
    forces : ndarray of shape (n_atoms, 3, n_sparse)
    stress : ndarray of shape (6, n_sparse) or None
        None for a frame without a periodic cell.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None


class _Rows:
    """SparseGP's kernel blocks: K_mm, local-energy rows, energy/force/stress rows of frames."""

    def _bar(self, iterable, desc: str, total: int | None = None):
        """``iterable`` with a progress bar on stderr while a ``fit(..., progress=True)``
        runs (tqdm; the bar is cleared when done), else ``iterable`` itself."""
        if not getattr(self, "_fit_progress", False) or (total is not None and total <= 1):
            return iterable  # (one frame at a time, as a blocked fit passes them, gets no bar)
        import sys

        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, unit="frame")

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

    # one BLAS thread even inside a call that declared a large block (the force stds of
    # a large cell): the products here are a block of pairs each (~20-50 M
    # multiply-adds), between numba's parallel loops (see gpal._threads)
    @_thread_policy(lambda *a, **k: 0)
    def _derivative_rows(self, atoms, Z, zsp, derivs=None, kernel=None, eval_gradient=False):
        """Energy (M,), force (N, 3, M) and stress (6, M) kernel rows of one frame.

        With ``eval_gradient`` also their theta-derivatives (M, d), (N, 3, M, d), (6, M, d).
        Only one species block of pair derivatives is touched at a time; no
        (atoms x atoms x 3 x features) array is formed. A cosine kernel's rows of a
        frame given without ``derivs`` (a prediction's force stds, a new label) are
        built a block of centres at a time (:meth:`_blocked_rows`), and no (pairs x 3
        x M) array either (:meth:`gpal.kernels.CosineKernel.contract_rows`).
        """
        kernel = kernel or self.kernel_
        if not eval_gradient and isinstance(kernel, CosineKernel) and (
                derivs is not None or hasattr(self.descriptor_, "derivative_blocks")):
            return self._blocked_rows(atoms, Z, zsp, kernel, derivs)
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

    def _blocked_rows(self, atoms, Z, zsp, kernel, derivs=None):
        """:meth:`_derivative_rows` of a cosine kernel, a block of centres at a time.

        The frame's pair derivatives are never all in memory (:meth:`gpal.SOAP.
        derivative_blocks`, 64 MB of them at a time): each block adds its energy rows,
        force rows and virial to the frame's. ``derivs`` given (another descriptor's,
        e.g. an evidence candidate's): they are the one block, contracted on all
        their features.
        """
        desc = self.descriptor_ if derivs is None else None
        rows = _BlockRows(atoms.numbers, zsp, len(Z))
        blocks = desc.derivative_blocks(atoms) if derivs is None else [(0, len(atoms), derivs)]
        for i0, i1, d in blocks:
            rows.add(kernel, Z, i0, i1, d, desc)
        return rows.result()

    @staticmethod
    def _contract_rows(kernel, X, Zc, d, p, numbers, N, descriptor=None, first=0, out=None):
        """Force rows and virial of the pairs ``p`` (a mask) of one centre species.

        With several species and the ``descriptor`` that made ``d``, the pairs of each
        neighbour species are contracted on the features that species can change
        (:meth:`gpal.SOAP.neighbor_columns`): a pair derivative is zero elsewhere, so
        the products skip 26 % of the columns with two species and half with three.
        Small products (a molecule's) are not split: one call costs less there.
        """
        nbr_z = numbers[d.neighbor]
        species = np.unique(nbr_z[p])
        small = np.count_nonzero(p) * 3 * X.shape[1] * len(Zc) < _SPLIT_MIN_PRODUCT
        if len(species) < 2 or small or not hasattr(descriptor, "neighbor_columns") \
                or X.shape[1] != descriptor.get_number_of_features():
            groups = [(None if np.all(p) else np.flatnonzero(p), None)]
        else:
            groups = [(np.flatnonzero(p & (nbr_z == s)), descriptor.neighbor_columns(int(s)))
                      for s in species]
        _, Xh, xn, _, Zh, _ = kernel._prepare(X, Zc)
        return kernel._contract_groups(Xh, xn, Zh, d.center, d.neighbor, d.dX, d.vector, N,
                                       groups, first, out)

    def _frame_targets(self, atoms) -> list:
        """The labels of one frame in observation order: [(group, y, noise std)].

        Energy (baselines subtracted; noise ``energy_noise * sqrt(n_atoms)``), then the
        force components (noise :meth:`force_label_noise`), then the stress (noise
        :meth:`stress_label_noise`). Every routine that stacks rows follows this.
        """
        lab = frame_labels(atoms)
        n = len(atoms)
        out = []
        if lab.energy is not None:
            y = np.array([lab.energy - self._e0_of(atoms.numbers).sum()])
            out.append((_E, y, np.array([self.noise_["energy"] * np.sqrt(n)])))
        if lab.forces is not None:
            out.append((_F, lab.forces.ravel(), self.force_label_noise(lab.forces).ravel()))
        if lab.stress is not None:
            out.append((_S, lab.stress, self.stress_label_noise()))
        return out

    def _stacked_rows(self, frames, Z, zsp, kernel=None, eval_gradient=False):
        """Kernel rows of every label of ``frames`` in observation order.

        Returns K (n_obs, M) and, with ``eval_gradient``, dK (n_obs, M, d).
        """
        rows, drows = [], []
        for a in self._bar(frames, "kernel rows", total=len(frames)):
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
        backward pass for all M sparse points (``∂k(x_i, z_m)/∂x_i`` folded back onto
        the pair vectors, as :meth:`predict` folds the mean; each pair's radial basis
        and harmonics computed once for all M): no descriptor derivatives are formed.
        """
        exp = self.descriptor_.expand(atoms)
        X = exp.descriptor
        N, M = len(atoms), len(Z)
        numbers = atoms.numbers
        kernel = self.kernel_
        e, f, s_ = np.zeros(M), np.zeros((N, 3, M)), np.zeros((6, M))
        has_cell = np.isfinite(exp.volume) and exp.volume > 0
        width = max(1, _ADJOINT_BLOCK // max(N * X.shape[1], 1))  # points per pass
        for b0 in range(0, M, width):
            b = slice(b0, min(M, b0 + width))
            Zb, zb = Z[b], zsp[b]
            G = None  # G[i, m] = ∂k(x_i, z_m)/∂x_i, zero across species
            for z in np.unique(numbers):
                r = np.flatnonzero(numbers == z)
                c = np.flatnonzero(zb == z)
                if not len(c):
                    continue
                e[b0 + c] = kernel(X[r], Zb[c]).sum(axis=0)
                if len(r) == N and len(c) == len(Zb):  # one species: no scatter
                    G = np.ascontiguousarray(kernel.gradient_x(X, Zb), dtype=np.float64)
                    continue
                if G is None:
                    G = np.zeros((N, len(Zb), X.shape[1]))
                G[r[:, None], c[None, :]] = kernel.gradient_x(X[r], Zb[c])
            if G is not None and len(exp.center):
                dE = exp.backward_stacked(G)  # (n_pairs, 3, points)
                f[:, :, b] = pair_forces(dE, exp.center, exp.neighbor, N)
                if has_cell:
                    s_[:, b] = pair_stress(dE, exp.vector, exp.volume)
        return e, f, s_

    def _new_columns(self, atoms, Znew, zspnew) -> np.ndarray:
        """Kernel columns of one stored frame's observations against new sparse points."""
        if len(Znew) <= _ADJOINT_MAX_COLUMNS and isinstance(self.descriptor_, SOAP):
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

    # ------------------------------------------------------------------ observation rows
    @_thread_policy()
    def local_kernel(self, atoms: Atoms, X=None) -> np.ndarray:
        """Kernel of each atom's environment with the sparse set (zero across species).

        ``X`` (n_atoms, n_features): the descriptor rows of ``atoms``, if already computed.

        Returns
        -------
        ndarray of shape (n_atoms, n_sparse)
            ``local_kernel(atoms) @ alpha_`` are the atoms' local energies (eV) without
            their e0 (and without a Δ-model's baseline).
        """
        check_is_fitted(self)
        self._check(atoms)
        X = self.descriptor_.create(atoms) if X is None else np.asarray(X, dtype=np.float64)
        return self._k_xm(X, atoms.numbers, self.sparse_X_, self.sparse_species_)

    @_thread_policy()
    def observation_rows(self, atoms: Atoms) -> ObservationRows:
        """The rows of the linear map from the sparse weights ``alpha_`` to a frame's labels.

        ``rows.energy @ alpha_``, ``rows.forces @ alpha_`` and ``rows.stress @ alpha_``
        are the model's energy (eV, without e0 and baseline), forces (eV/Å) and stress
        (eV/Å³) of ``atoms``; they are what a label of this frame adds to the fit, and what
        label-free design (:meth:`select_frames`) scores.

        Returns
        -------
        ObservationRows
            ``energy`` (n_sparse,), ``forces`` (n_atoms, 3, n_sparse), ``stress`` (6,
            n_sparse) or None without a periodic cell.
        """
        check_is_fitted(self)
        self._check(atoms)
        e, f, s = self._derivative_rows(atoms, self.sparse_X_, self.sparse_species_)
        return ObservationRows(e, f, s if bool(np.all(atoms.pbc)) else None)


class _BlockRows:
    """A cosine kernel's energy (M,), force (N, 3, M) and stress (6, M) rows of one frame,
    summed block of centres by block (:meth:`RowsMixin._blocked_rows`, and the evidence
    candidates' rows of a large periodic frame: one pass over the descriptor's
    derivative blocks for several kernels and ``l_max`` subsets)."""

    def __init__(self, numbers, zsp, M: int):
        self.numbers, self.N, self.M = numbers, len(numbers), M
        cols = {int(z): np.flatnonzero(zsp == z) for z in np.unique(numbers)}
        self.cols = {z: c for z, c in cols.items() if len(c)}
        self.e_row = np.zeros(M)
        self.acc, self.volume = {}, np.nan

    def add(self, kernel, Z, i0: int, i1: int, d, desc=None) -> None:
        """Add the block of centres ``i0 : i1`` with derivatives ``d``;
        ``desc``: the descriptor that made them (per-species column groups), or None."""
        self.volume = d.volume
        numbers = self.numbers
        nb = numbers[i0:i1]
        center_z = numbers[d.center]
        for z, c in self.cols.items():
            here = nb == z
            if not np.any(here):
                continue
            self.e_row[c] += kernel(d.descriptor[here], Z[c]).sum(axis=0)
            p = center_z == z
            if not np.any(p):  # isolated atoms: energy rows only
                continue
            if z not in self.acc:
                self.acc[z] = (np.zeros((self.N, 3, len(c))), np.zeros((3, 3, len(c))))
            _Rows._contract_rows(kernel, d.descriptor, Z[c], d, p, numbers, self.N, desc, first=i0,
                                 out=self.acc[z])

    def result(self) -> tuple:
        f_rows, s_rows = np.zeros((self.N, 3, self.M)), np.zeros((6, self.M))
        has_cell = np.isfinite(self.volume) and self.volume > 0
        for z, (rows_f, virial) in self.acc.items():
            f_rows[:, :, self.cols[z]] = rows_f
            if has_cell:
                s_rows[:, self.cols[z]] = virial_stress(virial, self.volume)
        return self.e_row, f_rows, s_rows
