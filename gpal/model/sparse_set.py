"""The sparse set: which atomic environments the model's weights sit on, and how it grows."""

from __future__ import annotations

import warnings

import numpy as np
from ase.data import chemical_symbols

from .._threads import policy as _thread_policy
from .._validation import (
    as_rng,
    check_is_fitted,
    check_number,
    species_number,
    user_stacklevel,
)
from ..sparse_gp import _jittered_cholesky
from ._atomic import restoring


def _species_rows(X_list, numbers_list, z) -> np.ndarray:
    """Descriptor rows of species ``z`` of every frame, in frame order.

    Filled into one array frame by frame: neither a stacked copy of every row (the size
    of all descriptors of the training set) nor per-frame pieces are held beside it.
    """
    n = sum(int(np.count_nonzero(num == z)) for num in numbers_list)
    width = X_list[0].shape[1] if X_list else 0
    out = np.empty((n, width), dtype=np.result_type(*X_list) if X_list else np.float64)
    start = 0
    for X, num in zip(X_list, numbers_list):
        mask = num == z
        k = int(np.count_nonzero(mask))
        out[start:start + k] = X[mask]
        start += k
    return out


def _shares(n: int, avail: np.ndarray) -> np.ndarray:
    """A fit's sparse counts for species with ``avail`` environments each: in proportion,
    each at least half of an equal share, none more than it has (may total more than n)."""
    floor = int(np.ceil(n / (2 * len(avail))))
    return np.minimum(np.maximum(floor, np.rint(n * avail / avail.sum()).astype(np.int64)), avail)


def _species_quota(n: int, numbers: np.ndarray) -> dict:
    """How ``n`` new sparse points are shared among the species of ``numbers``: a fit's
    shares (:func:`_shares`), the largest giving way until the total is at most ``n``."""
    z, avail = np.unique(np.asarray(numbers), return_counts=True)
    if n <= 0 or len(z) == 0:
        return {}
    quota = _shares(n, avail)
    while quota.sum() > n:
        quota[np.argmax(quota)] -= 1
    return {int(k): int(q) for k, q in zip(z, quota)}


def _check_exact_frames(value) -> int | None:
    """``exact_frames``: None (every stored frame) or an int >= 0."""
    return check_number("exact_frames", value, low=0, integer=True, none=True)


class _SparseSet:
    """SparseGP's sparse-set policy: counts per species, FPS/CUR/random picks, growth."""

    # ------------------------------------------------------------------ sparse set
    def _sparse_counts(self, n_sparse, X_list, numbers_list) -> dict:
        species = self.species_
        avail = {int(z): int(sum(np.count_nonzero(n == z) for n in numbers_list)) for z in species}
        present = [z for z in species if avail[int(z)] > 0]
        if isinstance(n_sparse, dict):
            counts = {}
            for key, val in n_sparse.items():
                z = species_number(key, "n_sparse")
                counts[z] = min(int(val), avail.get(z, 0))
            if not any(counts.values()):
                names = ", ".join(chemical_symbols[int(z)] for z in present)
                raise ValueError(f"n_sparse={n_sparse!r} gives no sparse environment to the species of "
                                 f"the training frames ({names})")
            left_out = [chemical_symbols[int(z)] for z in present if int(z) not in counts]
            if left_out:  # (a five-species alloy: force RMSE of the three left out 0.6-0.75 eV/Å, of
                # an RMS force 0.83; until sparse points of theirs are added, e.g. by a learner's growth)
                warnings.warn(f"n_sparse={n_sparse!r} gives no count to {', '.join(left_out)}, which the "
                              "training frames hold: a species without sparse environments learns nothing (its "
                              "local energy stays its e0); give every species a count, or n_sparse as one total",
                              UserWarning, stacklevel=user_stacklevel())
            return counts
        n_sparse = int(n_sparse)
        if n_sparse < len(present):
            raise ValueError(
                f"n_sparse={n_sparse} is smaller than the number of species ({len(present)})"
            )
        # proportional to the number of environments, but every species present gets at
        # least half of an equal share: a rare species would otherwise get a handful of
        # sparse points and its forces would be poor however much data arrives
        shares = _shares(n_sparse, np.array([avail[int(z)] for z in present], dtype=np.int64))
        return {int(z): int(k) for z, k in zip(present, shares)}

    def _select_sparse(self, X_list, numbers_list, n_sparse, method, exclude=None,
                       return_index: bool = False):
        """Choose sparse environments per species; returns (Z, species[, index]).

        ``index`` (with ``return_index``): each row's position in the concatenated
        environments of ``X_list`` (frame after frame).
        """
        from .. import selection

        rng = as_rng(self.random_state)
        counts = self._sparse_counts(n_sparse, X_list, numbers_list)
        Z, zsp, where = [], [], []
        num_all = np.concatenate(numbers_list) if return_index else None  # atom numbers only
        for z, count in counts.items():
            Xs = _species_rows(X_list, numbers_list, z)
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
            del Xs  # freed before the next species' rows are gathered
            if return_index:  # positions among all environments
                where.append(np.flatnonzero(num_all == z)[np.sort(idx)])
        if return_index:
            return np.concatenate(Z), np.concatenate(zsp), np.concatenate(where)
        return np.concatenate(Z), np.concatenate(zsp)

    @_thread_policy()
    @restoring
    def add_sparse_environments(self, atoms, n_sparse: int, *, sparse_selection: str = "variance",
                                exact_frames: int | None = None) -> int:
        """Add environments of (unlabelled) ``atoms`` to the sparse set; no label needed.

        Sparse (inducing) environments only set where the model can resolve local
        energies; the labels already in the model then decide their posterior. Adding the
        environments of a new configuration removes the part of its DTC variance that
        comes from the sparse approximation (``k - k K_mm^-1 k``) without an oracle call.
        The active learner does this before deciding that a frame needs a label.

        Parameters
        ----------
        atoms : ase.Atoms
        n_sparse : int
            At most this many environments are added.
        sparse_selection : {"variance", "fps", "random"}, default "variance"
        exact_frames : int or None, default None
            Training frames that get exact kernel columns for the new points, the most
            recent ones (as in :meth:`update`); the others do not inform the new points
            until a refit. None: all.

        Returns
        -------
        int
            Number of environments added (near-duplicates of existing ones are skipped).
        """
        check_is_fitted(self)
        # (as update checks them: 2.5 had added 2, "3" 3, -1 nothing, "bogus" the variance order)
        n_sparse = check_number("n_sparse", n_sparse, low=0, integer=True)
        choices = ("variance", "fps", "random")
        if sparse_selection not in choices:
            raise ValueError(f"Invalid sparse_selection {sparse_selection!r}; choose from {choices}")
        self._check(atoms)
        exact_frames = _check_exact_frames(exact_frames)
        Znew, zspnew = self._choose_new_sparse([atoms], n_sparse, sparse_selection)
        if len(Znew):
            self._add_sparse(Znew, zspnew, exact_frames)
            self.alpha_ = self.solver_.alpha_
        return len(Znew)

    def _choose_new_sparse(self, frames, n_new, method, by_species: bool = False):
        """Up to ``n_new`` environments of ``frames`` to add to the sparse set.

        ``method`` orders the candidates (``"variance"``: largest DTC local-energy
        variance first; ``"fps"``: farthest first; ``"random"``), and the points are
        taken greedily in that order. With ``by_species`` each species first takes at
        least half of its share of ``n_new`` in a fit (:func:`_species_quota`), in its
        own order, and the order over all species then takes the rest. One order alone
        can starve a species: a random Cu-Ni-Pd alloy's labels gave 538 of 620 points
        to Pd, and its 35 labels refitted with that set had a force error 1.5x that of a
        set of the same size with Ni and Cu at 208 points or more each (Pd the rest);
        while a set in proportion to the atoms was 1.13x worse on a water run than the
        one the variance chose (every O environment; the O forces carry the larger
        errors). A sparse refresh keeps one order: it wants exactly the few novel
        environments whatever their species.
        """
        from .. import selection

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
            order = rng.permutation(len(X))
        elif method == "fps":
            # a pick at distance <= 1e-3 from the sparse set and the earlier picks means
            # every candidate left is a near-duplicate: stop there. By species: each
            # species' own farthest-first order, species after species.
            groups = [np.flatnonzero(numbers == z) for z in np.unique(numbers)] if by_species else [None]
            order = []
            for g in groups:
                rows = np.arange(len(Xn)) if g is None else g
                k = min(n_new, len(rows))
                o, dist = selection.farthest_point_sampling_from(
                    Xn[rows], k, dmin[rows], metric="euclidean", return_distances=True)
                order.append(rows[o[dist > 1e-3]])
            order = np.concatenate(order)
        else:  # variance
            K = self._k_xm(X, numbers, self.sparse_X_, self.sparse_species_)
            var = self.solver_.predict_var(K, self.kernel_.diag(X))
            order = np.argsort(-var, kind="stable")
        # greedily in that order, skipping near-duplicates (cosine distance <= 1e-3) of the
        # sparse set and of the environments already taken, of the same species
        chosen, taken = [], set()
        quota = {z: (q + 1) // 2 for z, q in _species_quota(n_new, numbers).items()} if by_species else None
        for limited in ((True, False) if by_species else (False,)):
            for i in order:
                if len(chosen) >= n_new:
                    break
                if dmin[i] <= 1e-3 or (limited and quota[int(numbers[i])] <= 0) or i in taken:
                    continue
                if chosen:
                    cos = Xn[chosen] @ Xn[i]
                    same = numbers[chosen] == numbers[i]
                    if np.any(same & (np.sqrt(np.clip(2 - 2 * cos, 0, None)) <= 1e-3)):
                        continue
                chosen.append(i)
                taken.add(i)
                if limited:
                    quota[int(numbers[i])] -= 1
        idx = np.array(chosen, dtype=np.int64)
        if by_species:  # in the method's order, as one order would have added the same points
            rank = np.empty(len(X), dtype=np.int64)
            rank[order] = np.arange(len(order))
            idx = idx[np.argsort(rank[idx], kind="stable")]
        return X[idx], numbers[idx].astype(np.int64)

    def _add_sparse(self, Znew, zspnew, exact_frames: int | None = None):
        """Append sparse environments: new K_mm rows/columns and new K_nm columns.

        Only what is new is computed: the kernel between the new and the old sparse
        points, and the new points' columns of the stored frames, frame by frame (no
        descriptor derivatives of all frames held at once): one SOAP expansion and one
        backward pass per frame for all the new points (:meth:`_adjoint_rows`), or
        the frame's descriptor derivatives beyond ``_ADJOINT_MAX_COLUMNS`` points. The
        solver then grows its factors by those columns. Without stored rows (memory
        budget) the factorisation is rebuilt frame by frame. With ``exact_frames`` an
        int, only the last ``exact_frames`` stored frames get their columns and the
        others are projected (:meth:`SparseGPSolver.add_sparse` with ``first_row``); with
        0, or without stored rows, no stored frame is touched.
        """
        Z_old, zsp_old = self.sparse_X_, self.sparse_species_
        Z = np.concatenate([Z_old, Znew])
        zsp = np.concatenate([zsp_old, zspnew])
        sol = self.solver_
        K_on = self._k_xm(Z_old, zsp_old, Znew, zspnew)  # [M_old, k]
        K_mm = np.block([[sol.K_mm_, K_on], [K_on.T, self._k_mm(Znew, zspnew)]])
        n_frames = len(self.frames_)
        if exact_frames is not None and (exact_frames == 0 or not sol.keep_rows_):
            sol.add_sparse(K_mm)  # projected; a failure leaves the solver unchanged
        elif exact_frames is not None and exact_frames < n_frames:
            recent = self.frames_[n_frames - exact_frames:]
            cols = [self._new_columns(a, Znew, zspnew) for a in recent]
            first = self._frame_slices()[n_frames - exact_frames].start
            sol.add_sparse(K_mm, np.concatenate(cols), first_row=first)
        elif sol.keep_rows_:
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
