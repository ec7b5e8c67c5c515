"""Hyperparameters by the evidence: kernel exponent, SOAP l_max, noises, signal variance."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import scipy.linalg

from .._threads import policy as _thread_policy
from .._validation import (
    check_is_fitted,
)
from ..descriptors import SOAP, pair_forces
from ..kernels import NormalizedDotProduct
from ..sparse_gp import SparseGPSolver, _jittered_cholesky
from .defaults import (
    _E,
    _F,
    _GROUP_NAMES,
    _S,
    _UNITS,
    NOISE_BOUNDS,
    SIGNAL_VARIANCE_BOUNDS,
    ZETA_CANDIDATES,
)

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
        from .. import _jit
        from ..kernels import CosineKernel

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
        # the l_max choice is SOAP's (a smaller l_max is a subset of its features)
        L = int(self.descriptor_.l_max) if isinstance(self.descriptor_, SOAP) else None
        l_maxes = [None] if L is None else sorted({int(v) for v in (l_maxes or (L,)) if int(v) <= L} | {L})
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
        from ..sparse_gp import optimize_hyperparameters

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
