"""Hyperparameters by the evidence: kernel exponent, SOAP l_max, noises, signal variance."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import scipy.linalg

from .._threads import limited as _thread_limited
from .._threads import policy as _thread_policy
from .._validation import (
    check_is_fitted,
)
from ..descriptors import SOAP
from ..descriptors.soap import virial_stress
from ..kernels import CosineKernel, NormalizedDotProduct, _pair_rows_blocked
from ..sparse_gp import SparseGPSolver, _jittered_cholesky, _group_noise_bounds
from .rows import _BlockRows
from ._atomic import restoring
from .defaults import (
    _E,
    _F,
    _GROUP_NAMES,
    _S,
    _UNITS,
    NOISE_BOUNDS,
    SIGNAL_VARIANCE_BOUNDS,
    ZETA_CANDIDATES,
    _RANK_ROWS_PER_SPARSE,
)

#: non-periodic frames are stacked up to this many atoms for the evidence's kernel rows
_BATCH_ATOMS = 256

log = logging.getLogger(__name__)


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


class _Evidence:
    """SparseGP's hyperparameters: log marginal likelihood, evidence choice, optimisation."""

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
        return self._rows_for_batch([atoms], Z, zsp, [derivs], kernels)[0]

    @_thread_policy(lambda *a, **k: 0)  # one BLAS thread: blocks of pairs (gpal._threads)
    def _rows_for_batch(self, frames, Z, zsp, derivs, kernels, cols=None) -> list:
        """:meth:`_rows_for_kernels` of several frames, as one system (non-periodic frames).

        ``cols``: the feature columns of a smaller l_max (:func:`_l_max_subset`) the rows
        are for (None: all). The pair derivatives are used where they lie: per frame
        and centre species a slice (a copy only when that species' atoms are not
        contiguous), and a column subset gathered from ``dX`` a block of pairs at a
        time (:meth:`_cosine_rows`), not copied whole. Energy rows are summed per frame; a
        frame with any periodic direction is done alone (a frame's stress label is
        kept only when it is periodic in all three).

        Returns
        -------
        list (per frame) of lists (per kernel) of (energy (M,), force (N, 3, M), stress (6, M))
        """
        if (len(kernels) == 1 and len(frames) == 1) or not all(
                isinstance(k, CosineKernel) for k in kernels):
            if cols is not None:
                derivs = [dataclasses.replace(
                    d, descriptor=np.ascontiguousarray(d.descriptor[:, cols]),
                    dX=np.ascontiguousarray(d.dX[:, :, cols])) for d in derivs]
            return [[self._derivative_rows(a, Z, zsp, derivs=d, kernel=k) for k in kernels]
                    for a, d in zip(frames, derivs)]
        if len(frames) > 1 and any(np.any(a.pbc) for a in frames):
            # (a molecule in a box, pbc all False, batches: its cell carries no stress label)
            raise ValueError("periodic frames are done one at a time")
        sizes = np.array([len(a) for a in frames])
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        numbers = np.concatenate([np.asarray(a.numbers) for a in frames])
        X = np.concatenate([d.descriptor for d in derivs])
        blocks = {}
        for a, d, s in zip(frames, derivs, start):
            center_species = np.asarray(a.numbers)[d.center]
            for z in np.unique(center_species):
                p = np.flatnonzero(center_species == z)
                if p[-1] - p[0] + 1 == len(p):  # contiguous: views
                    sl = slice(int(p[0]), int(p[-1]) + 1)
                    piece = (d.center[sl] + s, d.neighbor[sl] + s, d.vector[sl], d.dX[sl])
                else:
                    piece = (d.center[p] + s, d.neighbor[p] + s, d.vector[p], d.dX[p])
                blocks.setdefault(z, []).append(piece)
        frame_of_atom = np.repeat(np.arange(len(frames)), sizes)
        out = self._cosine_rows(numbers, X, blocks, derivs[0].volume if len(frames) == 1 else np.nan,
                                Z, zsp, kernels, frame_of_atom, len(frames), cols)
        stop = start + sizes
        return [[(e[k], f[start[k]:stop[k]], s_) for e, f, s_ in out] for k in range(len(frames))]

    def _cosine_rows(self, numbers, X, blocks, volume, Z, zsp, kernels, frame_of_atom=None,
                     n_frames: int = 1, cols=None):
        """Rows of cosine ``kernels`` from one derivative pass; energy rows (n_frames, M).

        ``blocks``: per centre species z, a list of pair pieces ``(center, neighbor,
        vector, dX)`` (indices into ``X``'s rows). ``cols``: the feature columns the
        kernel uses (``Z`` has only those); ``X`` and ``dX`` have all.
        """
        from .. import _jit

        N, M = len(numbers), len(Z)
        if frame_of_atom is None:
            frame_of_atom = np.zeros(N, dtype=np.int64)
        out = [(np.zeros((n_frames, M)), np.zeros((N, 3, M)), np.zeros((6, M))) for _ in kernels]
        has_cell = np.isfinite(volume) and volume > 0
        Xk = X if cols is None else np.ascontiguousarray(X[:, cols])
        k0 = kernels[0]
        for k in kernels:
            k._validate()
        for z in np.unique(numbers):
            c = np.flatnonzero(zsp == z)
            if not len(c):
                continue
            m = len(c)
            Xa, Xh, xn, Zc, Zh, zn = k0._prepare(Xk, Z[c])
            C, _ = k0._cosines(Xh, xn, Zh, False)
            rz = numbers == z
            fz = frame_of_atom[rz]
            pieces = blocks.get(z, [])
            has_pairs = sum(len(q[0]) for q in pieces) > 0
            if has_pairs:
                # a column subset (a smaller l_max) is gathered a block of dX at a time;
                # the products of a block serve every kernel while they are in cache
                inv = k0._inverse_norms(xn)
                acc = [(np.zeros((N, 3, m)), np.zeros((3, 3, m))) for _ in kernels]
                targets = [(_jit._apply_fprime(C, k._kind, float(k._shape_param())),
                            float(k.signal_variance) * inv, rows_f, virial)
                           for k, (rows_f, virial) in zip(kernels, acc)]
                ZT = np.ascontiguousarray(Zh.T)
                Xp = np.ascontiguousarray(Xh)
                for q in pieces:
                    _pair_rows_blocked(np.ascontiguousarray(q[3]), None, cols, Xp, ZT, C,
                                       np.ascontiguousarray(q[0], dtype=np.int64),
                                       np.ascontiguousarray(q[1], dtype=np.int64),
                                       np.ascontiguousarray(q[2], dtype=np.float64), targets)
            for k, (e, f, s_), racc in zip(kernels, out, acc if has_pairs else [None] * len(kernels)):
                s2, shape = float(k.signal_variance), float(k._shape_param())
                vals = s2 * _jit._apply_f(np.ascontiguousarray(C[rz]), k._kind, shape)
                if n_frames == 1:
                    e[0, c] = vals.sum(axis=0)
                else:
                    sub = np.zeros((n_frames, m))
                    np.add.at(sub, fz, vals)
                    e[:, c] = sub
                if not has_pairs:
                    continue
                rows_f, virial = racc
                f[:, :, c] = rows_f
                if has_cell:
                    s_[:, c] = virial_stress(virial, volume)
        return out

    def _sparse_features(self, descriptor, where) -> np.ndarray:
        """``descriptor``'s features of the sparse environments.

        ``where``: each sparse environment's position among the training frames' atoms
        taken frame after frame (as :meth:`_select_sparse` returns it).
        """
        sizes = np.array([len(a) for a in self.frames_])
        frame = np.searchsorted(np.cumsum(sizes), where, side="right")
        atom = where - np.concatenate([[0], np.cumsum(sizes)[:-1]])[frame]
        Z = np.empty((len(where), descriptor.get_number_of_features()))
        for k in np.unique(frame):
            sel = frame == k
            Z[sel] = descriptor.create(self.frames_[k])[atom[sel]]
        return Z

    def _ranking_frames(self, n_sparse: int, slices) -> np.ndarray:
        """Evenly spaced training frames with at least ``_RANK_ROWS_PER_SPARSE * n_sparse`` labels.

        All frames when they have fewer. The candidates are ranked by their evidence on
        these frames; only the winner is then fitted to all of them.
        """
        rows = np.array([s.stop - s.start for s in slices])
        need = _RANK_ROWS_PER_SPARSE * n_sparse
        nf = len(rows)
        if rows.sum() <= need:
            return np.arange(nf)
        for k in range(1, nf + 1):
            idx = np.unique(np.round(np.linspace(0, nf - 1, k)).astype(int))
            if rows[idx].sum() >= need:
                return idx
        return np.arange(nf)

    def _score_candidates(self, fids, cands, descs, Zs, y, scale, gidx, slices, levels0,
                          noise_bounds, free_kernel, keep_best: bool):
        """Maximised evidence of each candidate ``(descriptor index, l_max, kernel)`` on frames ``fids``.

        Every candidate of one descriptor gets its kernel rows from one
        descriptor-derivative pass per frame (a smaller l_max is a subset of the
        features, :func:`_l_max_subset`; the ζ share the contraction,
        :meth:`_rows_for_kernels`). Rows are kept in memory, or (beyond half the
        memory budget) only their whitened per-group sums.

        Returns
        -------
        results : list of (lml, levels, ratio, sv_bounds or None)
        best : int, the index of the largest evidence
        blocks : (K_mm, K_nm or None) of the best at its optimum, when ``keep_best``
        """
        G = len(levels0)
        rows_sel = np.concatenate([np.arange(slices[k].start, slices[k].stop) for k in fids])
        y_s, scale_s, g_s = y[rows_sel], scale[rows_sel], gidx[rows_sel]
        M = len(self.sparse_species_)
        stream = not self._keep_rows_fits(len(rows_sel) * len(cands), M)
        kmm = {}

        def k_mm(c):
            if c not in kmm:
                i, lm, kern = cands[c]
                kmm[c] = self._k_mm(Zs[(i, lm)], self.sparse_species_, kern)
            return kmm[c]

        if stream:
            L_mms = [_jittered_cholesky(k_mm(c), self.jitter)[0] for c in range(len(cands))]
            sums = [[np.zeros((G, M, M)), np.zeros((G, M)), np.zeros(G), np.zeros(G)]
                    for _ in cands]
        rows = [[] for _ in cands]
        # per descriptor: its l_max values and, per l_max, the kernels (in candidate order)
        plan = {}
        for c, (i, lm, kern) in enumerate(cands):
            plan.setdefault(i, {}).setdefault(lm, []).append((c, kern))
        # frames periodic in no direction go through in batches (one stacked system each)
        batches, cur, n_at = [], [], 0
        for k in fids:
            a = self.frames_[k]
            if np.any(a.pbc) or n_at + len(a) > _BATCH_ATOMS:
                if cur:
                    batches.append(cur)
                cur, n_at = [], 0
            cur.append(k)
            n_at += len(a)
            if np.any(a.pbc):
                batches.append(cur)
                cur, n_at = [], 0
        if cur:
            batches.append(cur)
        offset = {}
        start = 0
        for k in fids:
            offset[k] = start
            start += slices[k].stop - slices[k].start
        def take(k, a, ck, outs):
            sl = slice(offset[k], offset[k] + slices[k].stop - slices[k].start)
            for (c, _), out in zip(ck, outs):
                K_f = self._in_observation_order(a, out)
                if not stream:
                    rows[c].append(K_f)
                    continue
                Phi = scipy.linalg.solve_triangular(
                    L_mms[c], (K_f / scale_s[sl, None]).T, lower=True,
                    check_finite=False).T
                for acc, part in zip(sums[c], _evidence_sums(
                        Phi, y_s[sl] / scale_s[sl], g_s[sl], G)):
                    acc += part

        for batch in self._bar(batches, f"evidence of {len(cands)} candidate(s)"):
            group = [self.frames_[k] for k in batch]
            for i, by_l in plan.items():
                L = int(descs[i].l_max) if isinstance(descs[i], SOAP) else None
                if len(group) == 1 and hasattr(descs[i], "derivative_blocks") and all(
                        isinstance(kern, CosineKernel) for ck in by_l.values() for _, kern in ck):
                    # a frame alone (a periodic one): its rows for every l_max and kernel in one
                    # pass over the descriptor's derivative blocks, 64 MB at a time (the whole
                    # frame's derivatives of a 500-atom cell of 5 species were 2.9 GB)
                    a = group[0]
                    acc_rows = {(lm, c): _BlockRows(a.numbers, self.sparse_species_, len(Zs[(i, lm)]))
                                for lm, ck in by_l.items() for c, _ in ck}
                    with _thread_limited(0):  # one BLAS thread: blocks of pairs between numba's loops
                        for i0, i1, d in descs[i].derivative_blocks(a):  # (as _rows_for_batch)
                            for lm, ck in by_l.items():
                                cols = _l_max_subset(descs[i], lm) if lm is not None and lm != L else None
                                dd = d if cols is None else dataclasses.replace(
                                    d, descriptor=np.ascontiguousarray(d.descriptor[:, cols]),
                                    dX=np.ascontiguousarray(d.dX[:, :, cols]))
                                for c, kern in ck:
                                    acc_rows[(lm, c)].add(kern, Zs[(i, lm)], i0, i1, dd,
                                                          descs[i] if cols is None else None)
                            del d
                    for lm, ck in by_l.items():
                        take(batch[0], a, ck, [acc_rows.pop((lm, c)).result() for c, _ in ck])
                    continue
                ds = [descs[i].derivatives(a) for a in group]
                for lm, ck in by_l.items():
                    cols = _l_max_subset(descs[i], lm) if lm is not None and lm != L else None
                    per_frame = self._rows_for_batch(group, Zs[(i, lm)], self.sparse_species_,
                                                     ds, [kern for _, kern in ck], cols)
                    for k, a, outs in zip(batch, group, per_frame):
                        take(k, a, ck, outs)
                del ds
        results, best, blocks = [], None, None
        for c, (i, lm, kernel) in enumerate(cands):
            K_nm = None if stream else np.concatenate(rows[c])
            rows[c] = None
            sv_bounds = kernel.signal_variance_bounds if free_kernel else "fixed"
            if isinstance(sv_bounds, str) or kernel.n_dims == 0:
                sv_bounds = "fixed"
            levels, ratio, lml = _maximise_evidence(
                k_mm(c), K_nm, y_s, g_s, scale_s, levels0, noise_bounds,
                None if sv_bounds == "fixed" else np.array(sv_bounds) / kernel.signal_variance,
                self.jitter, sums=sums[c] if stream else None,
            )
            results.append((lml, levels, ratio, None if sv_bounds == "fixed" else sv_bounds))
            if best is None or lml > results[best][0]:
                best = c
                if keep_best:
                    blocks = (k_mm(c) * ratio, None if stream else K_nm * ratio)
            del K_nm
            if c != best:
                kmm.pop(c, None)
        return results, best, blocks

    def _choose_hyperparameters(self, zetas=None, l_maxes=None, sigmas=None, sparse_index=None,
                                search: bool = True, warn_stacklevel: int = 3) -> None:
        """Choose the free hyperparameters by the evidence and refit the solver.

        Candidates, in two steps: (1) the kernels (``kernel=None``: ζ among ``zetas``)
        × SOAP ``l_max`` among ``l_maxes`` (a smaller l_max is a subset of the fitted
        SOAP's features on the same sparse environments); (2) at the l_max step 1
        chose, the kernels × the other SOAP widths among ``sigmas`` (the same
        environments, ``sparse_index`` as :meth:`_select_sparse` returns it, described
        with another Gaussian width). For each, the noise levels and signal variance
        are set by maximising the log marginal likelihood (:func:`_maximise_evidence`,
        O(n_sparse³) per step after one O(n_obs n_sparse²) pass); the candidate with
        the largest maximum of both steps wins. A winner with another SOAP than the
        fitted one then picks its own sparse environments (``sparse_selection`` in its
        features, as a fit with that SOAP would) and is maximised again on all frames.

        With several candidates and more labels than ``_RANK_ROWS_PER_SPARSE`` per
        sparse point, the candidates are ranked on evenly spaced frames holding about
        that many (:meth:`_ranking_frames`) and only the winner is maximised again on
        all frames (its rows computed with its own, possibly smaller, SOAP). The
        differences of log evidence between candidates grow about linearly with the
        data, so the ranking is decided early; the cost is that of one fit with the
        winner plus a fraction of one per candidate.

        With ``search=False`` the candidates are ranked on all frames and the winner
        keeps the fitted sparse environments (a smaller l_max as a subset of their
        features).
        """
        frames = self.frames_
        free_kernel = self.kernel is None
        if free_kernel:
            zetas = tuple(ZETA_CANDIDATES if zetas is None else zetas)
            if not zetas:
                raise ValueError("zetas is empty")
            kernels = [NormalizedDotProduct(zeta=int(z), signal_variance_bounds=SIGNAL_VARIANCE_BOUNDS)
                       for z in zetas]
        else:
            kernels = [self.kernel_]
        desc0 = self.descriptor_
        soap = isinstance(desc0, SOAP)
        other_sigmas = []
        if soap and sigmas and sparse_index is not None:
            other_sigmas = [s for s in sorted({float(v) for v in sigmas})
                            if not np.isclose(s, desc0.sigma)]
        # the l_max choice is SOAP's (a smaller l_max is a subset of its features)
        L = int(desc0.l_max) if soap else None
        l_list = [None] if L is None else sorted({int(v) for v in (l_maxes or (L,)) if int(v) <= L} | {L})
        Zs = {(0, lm): self.sparse_X_ if lm in (None, L) else
              np.ascontiguousarray(self.sparse_X_[:, _l_max_subset(desc0, lm)]) for lm in l_list}
        cands = [(0, lm, kern) for lm in l_list for kern in kernels]
        # targets, groups and fixed noise factors (sqrt(n_atoms) for energies)
        ys, scales, groups, fidx = [], [], [], []
        for k, tg in enumerate(self._frame_targets(a) for a in frames):
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
        names = [_GROUP_NAMES[g] for g in present]
        levels0 = np.array([self.noise_[nm] for nm in names])
        noise_bounds = [NOISE_BOUNDS[nm] if getattr(self, nm + "_noise") is None else "fixed"
                        for nm in names]
        slices = self._frame_slices()
        M = len(self.sparse_X_)
        everything = np.arange(len(frames))
        n_cands = len(cands) + len(other_sigmas) * len(kernels)
        fids = self._ranking_frames(M, slices) if (n_cands > 1 and search) else everything
        two_stage = len(fids) < len(frames)
        args = (y, scale, gidx, slices, levels0, noise_bounds, free_kernel)
        # step 1: kernel × l_max with the fitted SOAP
        results, k_best, blocks = self._score_candidates(
            fids, cands, [desc0], Zs, *args, keep_best=not two_stage)
        # (SOAP at its l_max, sparse features, sigma, l_max, kernel, result) of every candidate
        records = []
        for (i, lm, kern), res in zip(cands, results):
            d = desc0 if lm in (None, L) else SOAP(**{**desc0.get_params(), "l_max": lm})
            records.append((d, Zs[(i, lm)], float(desc0.sigma) if soap else None, lm, kern, res))
        best, best_blocks = k_best, blocks
        # step 2: the other SOAP widths at the l_max step 1 chose (same environments)
        if other_sigmas:
            lm_best = records[k_best][3]
            descs = [SOAP(**{**desc0.get_params(), "sigma": s, "l_max": lm_best}) for s in other_sigmas]
            Zs2 = {(j, None): self._sparse_features(d, sparse_index) for j, d in enumerate(descs)}
            cands2 = [(j, None, kern) for j in range(len(descs)) for kern in kernels]
            results2, k2, blocks2 = self._score_candidates(
                fids, cands2, descs, Zs2, *args, keep_best=not two_stage)
            for (j, _, kern), res in zip(cands2, results2):
                records.append((descs[j], Zs2[(j, None)], other_sigmas[j], lm_best, kern, res))
            if results2[k2][0] > records[best][5][0]:
                best, best_blocks = len(cands) + k2, blocks2

        def entry(c, record):
            _, _, sg, lm, kernel, (lml, levels, ratio, _) = record
            noise = dict(self.noise_)
            noise.update({nm: float(v) for nm, v in zip(names, levels)})
            return {
                "zeta": int(kernel.zeta) if isinstance(kernel, NormalizedDotProduct) else None,
                "l_max": lm,
                "sigma": sg,
                "signal_variance": float(kernel.signal_variance * ratio),
                "noise": noise,
                "log_marginal_likelihood": float(lml),
                "n_frames": len(fids),
                "selected": c == best,
            }

        table = [entry(c, r) for c, r in enumerate(records)]
        desc, Z, sg, lm, kernel, (lml, levels, ratio, sv_bounds) = records[best]
        blocks = best_blocks
        kernel = kernel.clone()
        kernel.signal_variance = float(kernel.signal_variance * ratio)
        k_best = best
        # the sparse environments the winner itself picks (farthest points in its own
        # features), as SparseGP(descriptor=winner) would: the same model either way
        reselect = search and sparse_index is not None and soap and (
            not np.isclose(desc.sigma, desc0.sigma) or int(desc.l_max) != L)
        if reselect:
            Z, self.sparse_species_ = self._select_sparse(
                [desc.create(a) for a in frames], [a.numbers for a in frames], self.n_sparse,
                self.sparse_selection)
        if two_stage or reselect:  # the winner alone on all frames, from its ranking optimum
            levels0 = levels
            results, _, blocks = self._score_candidates(
                everything, [(0, None, kernel)], [desc], {(0, None): Z}, y, scale, gidx,
                slices, levels0, noise_bounds, free_kernel, keep_best=True)
            lml, levels, ratio, sv_bounds = results[0]
            kernel = kernel.clone()
            kernel.signal_variance = float(kernel.signal_variance * ratio)
        K_mm, K_nm = blocks
        noise = dict(self.noise_)
        noise.update({nm: float(v) for nm, v in zip(names, levels)})
        self.descriptor_, self.sparse_X_ = desc, Z
        self.kernel_, self.noise_ = kernel, noise
        if K_nm is None:  # streamed: a second pass over the frames, with the chosen kernel, in blocks
            self._fit_solver(K_mm)
            solver = self.solver_
        else:
            solver = SparseGPSolver().fit(K_mm, K_nm, y, levels[gidx] * scale, jitter=self.jitter)
        lml = float(solver.log_marginal_likelihood())  # the QR value (agrees to round-off)
        best_row = table[k_best]
        if two_stage or reselect:
            best_row["ranking_log_marginal_likelihood"] = best_row["log_marginal_likelihood"]
            best_row.update(signal_variance=kernel.signal_variance, noise=noise,
                            n_frames=len(frames))
        best_row["log_marginal_likelihood"] = lml
        self.solver_ = solver
        self.alpha_ = solver.alpha_
        self._enforce_budget()
        self.log_marginal_likelihood_value_ = lml
        self.evidence_ = table
        log.info("hyperparameters by evidence: %r sigma %s l_max %s noise %s lml %.6g",
                 kernel, sg, lm, noise, lml)
        # a chosen value at the edge of its range: the evidence would go further
        at_bound = []
        for nm, lev, b in zip(names, levels, noise_bounds):
            if b != "fixed":
                _noise_at_bound(nm, lev, b, at_bound)
        if sv_bounds is not None:
            side = _bound_side(kernel.signal_variance, sv_bounds)
            if side:
                at_bound.append(f"signal_variance = {kernel.signal_variance:.3g} eV² "
                                f"(at its {side} bound)")
        if at_bound:
            warnings.warn(
                "hyperparameters chosen by the evidence sit at a bound of their range: "
                + "; ".join(at_bound) + ". The evidence would move them further; set the "
                "value explicitly to fix it (several at once: check that the labels agree in "
                "units, e.g. energies in eV with forces in eV/Å).",
                UserWarning,
                stacklevel=warn_stacklevel,
            )
        chosen = {nm for nm, b in zip(names, noise_bounds) if b != "fixed"}  # (not given)
        _warn_loose_noise({k: v for k, v in noise.items() if k != "energy" or k in chosen},
                             warn_stacklevel + 1, stress="stress" in chosen)

    @_thread_policy()
    @restoring
    def select_hyperparameters(self, *, zetas=None) -> "SparseGP":
        """Re-choose, by the evidence, what the user left unset; keep the sparse set.

        On the current training frames (including those added by :meth:`update`) and
        sparse environments: with ``kernel=None`` the exponent ζ of
        ``NormalizedDotProduct`` among ``zetas`` (default :data:`ZETA_CANDIDATES`) and its
        signal variance; each noise given as ``None`` within :data:`NOISE_BOUNDS`. Each
        candidate is scored by its maximised log marginal likelihood; the best is
        refitted and stored (``kernel_``, ``noise_``, ``zeta_``, ``evidence_``). This is
        what :meth:`fit` does with ``hyperparameters="evidence"`` (there also with the
        SOAP's l_max and sigma, which are kept here); call it to re-choose as data
        arrive (it costs one descriptor-derivative pass over all frames). Values the
        user set are kept; with nothing left to choose the model is unchanged. The
        stored calibration is kept (re-calibrate afterwards).

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
            # on all frames, as the first fit of a few frames did: the learner re-chooses
            # here on its refit schedule, and its runs stay comparable from refit to refit
            self._choose_hyperparameters(zetas, search=False, warn_stacklevel=4)
        return self

    @_thread_policy()
    @restoring
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
        from ..sparse_gp import optimize_hyperparameters

        check_is_fitted(self)
        present, groups, levels, scale = self._noise_layout()
        if noise_bounds is None:
            noise_bounds = [NOISE_BOUNDS[_GROUP_NAMES[g]] for g in present]
        else:
            noise_bounds = _group_noise_bounds(noise_bounds, len(present))  # (checked before any work)
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
        # fit's table of candidates ranked other hyperparameters than these: a saved model
        # and gpal info showed its signal variance, noises and evidence as the model's
        self.evidence_ = None
        self.solver_ = SparseGPSolver().fit(
            K_mm, K_nm, self.solver_.y_, res.noise_levels[groups] * scale, jitter=self.jitter
        )
        self.alpha_ = self.solver_.alpha_
        self._enforce_budget()
        self.log_marginal_likelihood_value_ = float(res.log_marginal_likelihood)
        log.info("hyperparameters: %r noise %s lml %.6g", self.kernel_, self.noise_, res.log_marginal_likelihood)
        at_bound = []
        if optimize_noise:
            for g, lev, b in zip(present, res.noise_levels, noise_bounds):
                if not isinstance(b, str):
                    _noise_at_bound(_GROUP_NAMES[g], lev, b, at_bound)
        free = [h for h in kernel.hyperparameters if not h.fixed]
        for h in free:
            side = _bound_side(getattr(kernel, h.name), h.bounds)
            if side:
                at_bound.append(f"{h.name} = {getattr(kernel, h.name):.3g} (at its {side} bound)")
        if at_bound:
            warnings.warn(
                "optimised hyperparameters sit at a bound of their range: " + "; ".join(at_bound)
                + ". The evidence would move them further; widen the bound or fix the value.",
                UserWarning,
                stacklevel=3,
            )
        if optimize_noise:
            free = {g for g, b in zip(present, noise_bounds) if not isinstance(b, str)}
            noise = {k: v for k, v in self.noise_.items() if k != "energy" or _E in free}
            _warn_loose_noise(noise, 4, stress=_S in free)
        return self


#: an energy noise (eV/atom) above this many Å times the force noise (eV/Å) is said
#: (_warn_loose_noise): 0.12 Å on the random-alloy benchmark run's model, 0.02-1.1 Å on
#: the Δ-learning audit's models; 39 Å on bulk beside slabs with a coarse SOAP, whose slab
#: energies were 47 meV/atom off
_LOOSE_ENERGY_LENGTH = 3.0


#: a stress noise (eV/Å^3) above this many Å^-2 times the force noise (eV/Å) is said:
#: 0.02 on the random-alloy benchmark run's model, 0.02-0.1 on the Δ-learning audit's
#: models; 39 with the stress labels' sign flipped (the
#: pressure's), which took the stress noise to 13 GPa; 15-67 in the test suite's tiny
#: learner runs (8-atom cells, n_max 4, l_max 3), whose stresses are that far off
_LOOSE_STRESS_PER_AREA = 1.0


def _warn_loose_noise(noise: dict, stacklevel: int, stress: bool = False) -> None:
    """Warn when the chosen energy noise (or, with ``stress``, the stress noise) is far
    above what the force noise implies: an energy error grows from force errors over
    displacements of an Å or so, so an energy noise of many Å times the force noise means
    the model lets the energy labels go (a descriptor too coarse for their differences,
    bulk beside surfaces, energies that do not belong to the forces, or stresses that
    contradict them); a stress noise of many Å^-2 times the force noise, stress labels
    the energies and forces contradict (the pressure's sign, a virial)."""
    e, f, st = noise.get("energy"), noise.get("force"), noise.get("stress")
    if f is None or not f > 0:
        return
    if stress and st is not None and st > _LOOSE_STRESS_PER_AREA * f:
        warnings.warn(
            f"the evidence chose a stress noise of {st:.3g} eV/Å^3 ({160.2 * st:.3g} GPa), {st / f:.0f} Å^-2 "
            f"times the force noise ({f:.3g} eV/Å): the model's stresses can be off by about that much. "
            "Likely causes: stress labels the energies and forces contradict (the pressure's sign, positive "
            "under compression as some codes print it, where gpal takes ASE's stress; a virial in eV; another "
            "unit), or a model that cannot fit them (few frames, a coarse descriptor); stress_noise=... fixes "
            "the noise, not the cause", UserWarning, stacklevel=stacklevel)
    if e is None or e <= _LOOSE_ENERGY_LENGTH * f:
        return
    warnings.warn(
        f"the evidence chose an energy noise of {e:.3g} eV/atom, {e / f:.0f} Å times the force noise "
        f"({f:.3g} eV/Å): the model fits the energy labels far more loosely than the forces, and "
        "energies (relative energies of different structures, e.g. surface energies) can be off by "
        "about that much per atom. Likely causes: few frames or a descriptor too coarse for these structures' "
        "energy differences (raise n_max / l_max, or use gpal's default descriptor), energy labels that "
        "do not belong to the forces (another method, smearing), or stress labels that contradict them; "
        "energy_noise=... fixes the noise",
        UserWarning, stacklevel=stacklevel)


def _noise_at_bound(name: str, level: float, bounds, at_bound: list) -> None:
    """Add ``name``'s noise to ``at_bound`` (what the warning names) at its upper bound;
    at its lower bound, the floor a deterministic oracle (EMT, DFT) always reaches, only log."""
    side = _bound_side(level, bounds)
    if side == "lower":
        log.info("%s_noise at its lower bound %.3g %s", name, level, _UNITS[name])
    elif side:
        at_bound.append(f"{name}_noise = {level:.3g} {_UNITS[name]} (at its {side} bound)")


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

    from ..sparse_gp import _jittered_cholesky

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
    potri = scipy.linalg.get_lapack_funcs("potri", (gram,))

    potrf, potrs = scipy.linalg.get_lapack_funcs(("potrf", "potrs"), (gram,))
    lower = np.tril(np.ones((M, M), bool))
    gram_lower = np.where(lower, 2.0 * gram, 0.0)  # Σ_ij A⁻¹_ij G_ij from A⁻¹'s lower triangle
    gram_lower[:, np.arange(M), np.arange(M)] *= 0.5
    # potri returns a Fortran-ordered factor: its memory order is that of the transpose
    gram_lower = np.ascontiguousarray(gram_lower.transpose(0, 2, 1)).reshape(G, M * M)

    def negative(xf):
        x = x0.copy()
        x[free] = xf
        w = np.exp(-2.0 * x[:G])
        r = np.exp(x[G])
        A = (r * r) * np.tensordot(w, gram, 1)
        A.flat[:: M + 1] += r
        chol, info = potrf(A, lower=1, clean=0, overwrite_a=1)
        if info:
            return np.inf, np.zeros(xf.shape)
        u, info = potrs(chol, r * (w @ bvec), lower=1)
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
        L = 2.0 * (n_g @ x[:G]) + 2.0 * np.sum(np.log(np.diagonal(chol))) - M * x[G]
        # A⁻¹ from its Cholesky factor (LAPACK potri: a third of the work of two
        # triangular solves with the identity); only its lower triangle is used
        Ainv, info = potri(chol, lower=1)
        if info:
            return np.inf, np.zeros(xf.shape)
        tr_g = gram_lower @ np.ravel(Ainv, order="K")
        grad = np.empty(G + 1)
        grad[:G] = -2.0 * w * e_g + 2.0 * n_g - 2.0 * w * r * r * tr_g
        if Phi is not None:
            wres_pred = (w[groups] * res) @ pred
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
        # each evaluation: an M x M Cholesky and inverse, on one BLAS thread below
        # SMALL_BLOCK elements (inside a large fit, which gives BLAS every core)
        with _thread_limited(M * M):
            for x_start in starts:
                # stopping at 1e-6 relative change of the evidence (and 1e-3 on its gradient
                # in log parameters): the noise levels move by ~1e-5 relative against the
                # defaults' 1e-9, a fifth to a quarter fewer evaluations
                res = scipy.optimize.minimize(negative, x_start, jac=True, method="L-BFGS-B",
                                              bounds=bounds, options={"ftol": 1e-6, "gtol": 1e-3})
                if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                    best = res
        if best is None:
            raise np.linalg.LinAlgError("the evidence could not be evaluated (Cholesky failed)")
        x[free] = best.x
    value = negative(x[free])[0] if np.any(free) else negative(np.zeros(0))[0]
    # a fixed level as given (exp(log(0.07)) is 0.07000000000000005)
    levels = np.where(free[:G], np.exp(x[:G]), np.asarray(levels0, dtype=float))
    return levels, float(np.exp(x[G])), float(-value)
