"""Is gpal's force uncertainty honest? Raw vs scaled vs conformal, on an independent trajectory.

What it measures
----------------
A SparseGP is fitted on ``--n-train`` (20) frames of an EMT Langevin trajectory of fcc Cu
(``--n-atoms`` 108: 3x3x3 cubic cell) at ``--train-T`` (900 K). Its signal variance and
its energy, force and stress noises are set by maximising the log marginal likelihood
(``--optimize all``; ``signal`` keeps gpal's default noises), and the exponent ζ of the
dot-product kernel is the one of 1, 2, 3, 4, 6 with the largest maximised evidence
(``--zeta auto``, :func:`gpal.select_kernel_by_evidence`). No validation data enters
the model choice. The predicted force std (``predict(..., forces_std=True)``) is
then

* calibrated on a held-out trajectory (own seed, ``--calib-T``, 600 K by default):
  scale s = sqrt(mean z²) (:class:`gpal.calibration.StdCalibrator`) and the 90 %
  split-conformal quantile q̂ of |z| (:class:`gpal.calibration.SplitConformal`);
* evaluated on a second independent trajectory (other seed, ``--eval-T``, 1200 K).

For each std, rows are ``raw`` (σ), ``scaled`` (s·σ) and ``conformal`` (the interval
±q̂·σ; its Gaussian metrics use the std q̂·σ/1.645 whose 90 % interval it is). Columns
(eval set; targets in brackets):

  ZMS      mean z² over force components                    [0.8 - 1.25]
  cov90    coverage of the 90 % interval (Gaussian ±1.645σ for raw/scaled, ±q̂σ for
           conformal)                                         [0.87 - 0.93 for conformal]
  conf90   coverage of this std's own conformal interval ±q̂σ (q̂ fitted on calib)
  rho      Spearman ρ(|ΔF_i|, |σ_i|) over atoms, per-atom norms   [>= 0.5]
  rho*     the ρ a perfectly calibrated model with these σ would show (errors drawn
           from N(0, σ²), mean of 20 draws): how much rank signal the spread of σ carries
  NLL      Gaussian NLL per component (nats), miscal (miscalibration area), ENCE

Stds compared (all computed inside this script; gpal is not modified):

  SoR      gpal's ``forces_std``: the projected-process part a Σ aᵀ of the force
           variance (documented as omitting the residual term);
  DTC      SoR + the exact residual prior term k_FF - a K_mm⁻¹ aᵀ, where k_FF, the prior
           variance of a force component, is Σ_ii' g_iᵀ ∂²k(x_i, x_i')/∂x∂x' g_i' with
           g_i = dX_i/dr_j from ``SOAP.derivatives(dense=True)`` and the analytic
           Hessian of the normalised dot-product kernel (checked against finite
           differences of the kernel sum at start-up);
  floor    s²(σ² + σ₀²): a scale and a constant variance floor fitted jointly by
           Gaussian NLL on the calibration set (a common two-parameter fix);
  power    a σ^b, fitted by Gaussian NLL on the calibration set (lets the calibrated
           std grow faster than σ where the error does);
  learner  the std the active learner and ``gpal validate --calibrate`` store:
           sqrt((s σ)² + (s_n σ_n)² + c² min(ν, ν_max)), σ_n the force noise and ν each
           atom's environment novelty (:class:`gpal.calibration.TwoTermCalibrator`).

For the two-parameter maps the rows are ``fitted`` (the fitted std) and ``conformal``.

A per-species scale is not applicable here (one species). Plots of the eval set
(calibration curve, binned error vs uncertainty, z histogram, force parity) for the raw
and the calibrated std go to ``benchmarks/.cache/calibration_plots/``.

Every seed in ``--seeds`` (0,1,2) repeats all of this with its own three trajectories;
a summary of gpal's headline numbers per seed and their medians ends the output.

Usage::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_calibration.py      (~2 min)
    python benchmarks/bench_calibration.py --zeta 4 --optimize signal   (earlier setting)
    python benchmarks/bench_calibration.py --calib-T 1200 --eval-T 600   (swap)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md import thermalize_momenta  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from scipy import optimize, stats  # noqa: E402

from gpal import SOAP, SparseGP  # noqa: E402
from gpal import calibration as cal  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
PLOT_DIR = CACHE_DIR / "calibration_plots"
Z90 = float(stats.norm.ppf(0.95))


# ----------------------------------------------------------------------------- data
def trajectory(n_atoms, temperature, n_frames, seed, interval=25, equilibration=250):
    """EMT Langevin frames of fcc Cu (2 fs, friction 0.02/fs), cached as extxyz."""
    repeat = {32: 2, 108: 3, 256: 4}[n_atoms]
    params = dict(v=1, n_atoms=n_atoms, T=temperature, n=n_frames, seed=seed,
                  interval=interval, eq=equilibration)
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"calibration_cu{n_atoms}_{int(temperature)}K_s{seed}_{key}.extxyz"
    if path.exists():
        return read(path, index=":")
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature,
                   friction=0.02 / units.fs, fixcm=False, rng=rng)
    dyn.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval)
        out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                    pbc=True)
        e = atoms.get_potential_energy()
        out.calc = SinglePointCalculator(out, energy=e, free_energy=e, forces=atoms.get_forces(),
                                         stress=atoms.get_stress())
        frames.append(out)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.extxyz")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    return read(path, index=":")


def make_descriptor(kind):
    r_cut, n_max, l_max = (5.0, 8, 6) if kind == "full" else (4.0, 4, 3)
    return SOAP(species=[29], r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=0.5, periodic=True,
                weighting={"function": "poly", "r0": r_cut, "c": 1, "m": 1})


# ----------------------------------------------------------------------------- DTC residual
def _kernel_sum(kernel, Xa, na, Xb, nb):
    """Σ_{i,i'} k(x_i, x_i') over environments of equal central species."""
    total = 0.0
    for z in np.unique(na):
        total += kernel(Xa[na == z], Xb[nb == z]).sum()
    return total


def prior_force_variance(model, atoms):
    """Prior variance k_FF of every force component, (n_atoms, 3), for k = σ² (x̂·ẑ)^ζ.

    k_FF(j, c) = Σ_{i,i'} g_iᵀ H(x_i, x_i') g_i' with g_i = dX_i/dr_jc and
    uᵀHv = σ²[ζ(ζ-1)C^(ζ-2) (p_u·ẑ)(x̂·p_v) + ζ C^(ζ-1) p_u·p_v], p_u = (u - x̂(x̂·u))/|x|.
    Only environments i whose descriptor moves with atom j contribute.
    """
    kern = model.kernel_
    s2, zeta = float(kern.signal_variance), float(kern.zeta)
    D, X = model.descriptor_.derivatives(atoms, dense=True)  # D[i, j] = dX_i/dr_j
    numbers = atoms.numbers
    norms = np.linalg.norm(X, axis=1)
    Xh = X / norms[:, None]
    N = len(atoms)
    out = np.zeros((N, 3))
    moves = np.any(D != 0, axis=(2, 3))  # [i, j]
    for j in range(N):
        for z in np.unique(numbers):
            S = np.flatnonzero(moves[:, j] & (numbers == z))
            if not len(S):
                continue
            Xs, ns = Xh[S], norms[S]
            C = Xs @ Xs.T
            W2 = zeta * (zeta - 1) * C ** (zeta - 2)
            W1 = zeta * C ** (zeta - 1)
            G = D[S, j]  # (s, 3, F)
            P = (G - Xs[:, None, :] * np.einsum("icf,if->ic", G, Xs)[:, :, None]) / ns[:, None, None]
            for c in range(3):
                A = P[:, c] @ Xs.T
                B = P[:, c] @ P[:, c].T
                out[j, c] += s2 * np.sum(W2 * A * A.T + W1 * B)
    return out


def check_prior_force_variance(model, atoms, h=1e-3):
    """Relative difference of prior_force_variance vs central finite differences (atom 0)."""
    kff = prior_force_variance(model, atoms)
    rel = []
    for c in range(3):
        Xs = {}
        for sgn in (+1, -1):
            a = atoms.copy()
            a.positions[0, c] += sgn * h
            Xs[sgn] = model.descriptor_.create(a)
        n = atoms.numbers
        k = model.kernel_
        fd = (_kernel_sum(k, Xs[1], n, Xs[1], n) - _kernel_sum(k, Xs[1], n, Xs[-1], n)
              - _kernel_sum(k, Xs[-1], n, Xs[1], n) + _kernel_sum(k, Xs[-1], n, Xs[-1], n)) / (4 * h * h)
        rel.append(abs(fd - kff[0, c]) / abs(fd))
    return max(rel)


# ----------------------------------------------------------------------------- predictions
def predict_set(model, frames, with_dtc=True):
    """Stacked forces: reference, predicted, SoR std, DTC std; and the min residual seen."""
    Ft, Fp, s_sor, s_dtc, nov = [], [], [], [], []
    min_resid = np.inf
    Z, zsp = model.sparse_X_, model.sparse_species_
    for a in frames:
        p = model.predict(a, return_std=True, forces_std=True)
        Ft.append(a.get_forces())
        Fp.append(p["forces"])
        s_sor.append(p["forces_std"])
        nov.append(np.repeat(p["novelty"][:, None], 3, axis=1))
        if with_dtc:
            _, rowF, _ = model._derivative_rows(a, Z, zsp)
            A = rowF.reshape(3 * len(a), -1)
            resid = prior_force_variance(model, a).ravel() - model.solver_.var_nystrom(A)
            min_resid = min(min_resid, resid.min())
            var = model.solver_.var_sor(A) + np.clip(resid, 0, None)
            s_dtc.append(np.sqrt(var).reshape(-1, 3))
    out = dict(true=np.concatenate(Ft), pred=np.concatenate(Fp), SoR=np.concatenate(s_sor),
               novelty=np.concatenate(nov))
    if with_dtc:
        out["DTC"] = np.concatenate(s_dtc)
    return out, min_resid


def _fit_nll(err, std, var_fn, p0):
    """Parameters p minimising the mean Gaussian NLL of err ~ N(0, var_fn(std², p))."""
    e2, v = err.ravel() ** 2, std.ravel() ** 2

    def nll(p):
        var = var_fn(v, p)
        return np.mean(0.5 * np.log(var) + 0.5 * e2 / var)

    res = optimize.minimize(nll, p0, method="Nelder-Mead",
                            options=dict(xatol=1e-8, fatol=1e-12, maxiter=4000))
    return res.x


def _floor_var(v, p):
    return np.exp(2 * p[0]) * (v + np.exp(p[1]))


def _power_var(v, p):
    return np.exp(2 * p[0]) * v ** p[1]


def fit_scale_floor(err, std):
    """(s, σ0²) maximising the Gaussian likelihood of err ~ N(0, s²(std² + σ0²))."""
    v = std.ravel() ** 2
    p = _fit_nll(err, std, _floor_var, [0.5 * np.log(np.mean(err.ravel() ** 2 / v)), np.log(np.mean(v))])
    return p


def fit_power(err, std):
    """(log a, b) maximising the Gaussian likelihood of err ~ N(0, a² std^(2b))."""
    v = std.ravel() ** 2
    return _fit_nll(err, std, _power_var, [0.5 * np.log(np.mean(err.ravel() ** 2 / v)), 1.0])


def rho_ceiling(std, rng, n_draws=20):
    """Spearman ρ(|ΔF_i|, |σ_i|) if ΔF were drawn from N(0, σ²): the best these σ allow."""
    norm = np.linalg.norm(std, axis=1)
    vals = [stats.spearmanr(np.linalg.norm(rng.normal(size=std.shape) * std, axis=1), norm).statistic
            for _ in range(n_draws)]
    return float(np.mean(vals))


def metrics_row(err, std, q_conf, rng):
    m = cal.force_metrics(np.zeros_like(err), err, std)
    comp = m["components"]
    z = np.abs(err / std)
    return dict(zms=comp["zms"], cov90=comp["coverage"], conf90=float(np.mean(z <= q_conf)),
                rho=m["norms"]["spearman"], rho_star=rho_ceiling(std, rng), nll=comp["nll"],
                miscal=comp["miscalibration_area"], ence=comp["ence"], rmv=comp["rmv"])


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-atoms", type=int, choices=(32, 108), default=108)
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-calib", type=int, default=30)
    parser.add_argument("--n-eval", type=int, default=30)
    parser.add_argument("--train-T", type=float, default=900.0)
    parser.add_argument("--calib-T", type=float, default=600.0)
    parser.add_argument("--eval-T", type=float, default=1200.0)
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma-separated seeds; seed s uses trajectory seeds 10s + 1, 2, 3")
    parser.add_argument("--zeta", default="auto",
                        help="dot-product exponent, or 'auto': the largest log evidence among "
                             "zeta = 1, 2, 3, 4, 6 (gpal.select_kernel_by_evidence)")
    parser.add_argument("--n-sparse", type=int, default=200)
    parser.add_argument("--descriptor", choices=("full", "small"), default="full")
    parser.add_argument("--optimize", choices=("none", "signal", "all"), default="all",
                        help="maximise the evidence over nothing, the signal variance, or "
                             "signal variance and the energy/force/stress noises")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    seeds = [int(x) for x in args.seeds.split(",")]
    summary = {}
    for seed in seeds:
        print(f"\n================ seed {seed} ================")
        summary[seed] = run(args, seed)
    print(f"\n================ summary over seeds {seeds} (gpal's forces_std = SoR; "
          f"calib {args.calib_T:g} K -> eval {args.eval_T:g} K) ================")
    head = (f"{'seed':>4s} {'zeta':>4s} {'F RMSE':>7s} {'raw ZMS':>8s} {'s':>6s} {'ZMS cal':>8s} "
            f"{'cov90 conf':>10s} {'rho':>6s} {'rho*':>6s}")
    print(head)
    print("-" * len(head))
    for seed, r in summary.items():
        print(f"{seed:4d} {r['zeta']:4d} {r['rmse']:7.4f} {r['raw_zms']:8.3f} {r['scale']:6.3f} "
              f"{r['zms']:8.3f} {r['cov']:10.3f} {r['rho']:6.3f} {r['rho_star']:6.3f}")
    med = {k: float(np.median([r[k] for r in summary.values()]))
           for k in ("raw_zms", "zms", "cov", "rho", "rho_star")}
    print(f"median: raw ZMS {med['raw_zms']:.3f}; calibrated ZMS {med['zms']:.3f} "
          f"[0.8-1.25: {'MET' if 0.8 <= med['zms'] <= 1.25 else 'NOT MET'}; every seed in range: "
          f"{'yes' if all(0.8 <= r['zms'] <= 1.25 for r in summary.values()) else 'no'}]; "
          f"conformal coverage {med['cov']:.3f} [0.87-0.93: "
          f"{'MET' if 0.87 <= med['cov'] <= 0.93 else 'NOT MET'}]; rho {med['rho']:.3f} "
          f"[>= 0.5: {'MET' if med['rho'] >= 0.5 else 'NOT MET'}; ceiling of a calibrated "
          f"model with these σ: {med['rho_star']:.3f}]")
    print(f"total runtime {time.perf_counter() - t_start:.0f} s")


def run(args, seed):
    """One seed: fit, calibrate, evaluate, print the tables; returns gpal's headline numbers."""
    from gpal import select_kernel_by_evidence
    from gpal.kernels import NormalizedDotProduct

    args.seed = seed
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    train = trajectory(args.n_atoms, args.train_T, args.n_train, 10 * args.seed + 1)
    calib = trajectory(args.n_atoms, args.calib_T, args.n_calib, 10 * args.seed + 2)
    evals = trajectory(args.n_atoms, args.eval_T, args.n_eval, 10 * args.seed + 3)
    print(f"data ({time.perf_counter() - t0:.1f} s): fcc Cu {args.n_atoms} atoms, EMT Langevin "
          f"2 fs, frames every 50 fs; train {len(train)} frames @ {args.train_T:g} K (seed "
          f"{10 * args.seed + 1}), calib {len(calib)} @ {args.calib_T:g} K (seed "
          f"{10 * args.seed + 2}), eval {len(evals)} @ {args.eval_T:g} K (seed {10 * args.seed + 3})")

    desc = make_descriptor(args.descriptor)
    t0 = time.perf_counter()
    # "fixed": the --zeta and --optimize options below decide what is chosen
    template = SparseGP(desc, n_sparse=args.n_sparse, random_state=args.seed,
                        hyperparameters="fixed")
    if args.zeta == "auto":
        sel = select_kernel_by_evidence(template, train, optimize_noise=args.optimize == "all")
        print(f"kernel by evidence ({time.perf_counter() - t0:.1f} s):\n{sel}")
        model = sel.model
        sv0 = 1.0
    else:
        template.set_params(kernel=NormalizedDotProduct(zeta=int(args.zeta)))
        model = template.fit(train)
        sv0 = model.kernel_.signal_variance
        if args.optimize != "none":
            model.optimize_hyperparameters(optimize_noise=args.optimize == "all")
    print(f"model ({time.perf_counter() - t0:.1f} s): {args.descriptor} SOAP "
          f"(r_cut {desc.r_cut}, n_max {desc.n_max}, l_max {desc.l_max}, sigma 0.5, poly "
          f"r0=r_cut; {desc.get_number_of_features()} features), NormalizedDotProduct(zeta="
          f"{model.kernel_.zeta}), n_sparse {len(model.sparse_X_)}, noises E "
          f"{model.noise_['energy']:.4g} eV/atom F {model.noise_['force']:.4g} eV/Å S "
          f"{model.noise_['stress']:.4g} eV/Å³; signal variance {sv0:g} -> "
          f"{model.kernel_.signal_variance:.4g} ({args.optimize})")

    t0 = time.perf_counter()
    fd = check_prior_force_variance(model, evals[0])
    print(f"check: prior force variance k_FF vs finite differences (atom 0, x/y/z): "
          f"max rel. diff {fd:.1e} ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    C, min_rc = predict_set(model, calib)
    E, min_re = predict_set(model, evals)
    print(f"predictions with SoR and DTC force stds ({time.perf_counter() - t0:.1f} s); most "
          f"negative residual k_FF - aK⁻¹aᵀ before clipping: {min(min_rc, min_re):.2e} "
          f"(eV/Å)² (round-off if tiny)")
    err_c, err_e = C["pred"] - C["true"], E["pred"] - E["true"]
    for name, S in (("calib", C), ("eval", E)):
        d = S["pred"] - S["true"]
        frac = np.mean(S["DTC"] ** 2 - S["SoR"] ** 2) / np.mean(S["DTC"] ** 2)
        print(f"  {name:5s}: force RMSE {np.sqrt(np.mean(d ** 2)):.4f} eV/Å, RMV SoR "
              f"{np.sqrt(np.mean(S['SoR'] ** 2)):.4f}, RMV DTC {np.sqrt(np.mean(S['DTC'] ** 2)):.4f} "
              f"eV/Å (residual share of DTC variance {frac:.0%})")

    # ---- calibrate each std on calib, evaluate on eval
    rows = []
    for base in ("SoR", "DTC", "SoR floor", "SoR power", "DTC power", "SoR learner"):
        raw = base.split()[0]
        if base.endswith("learner"):  # what the active learner stores: scale, noise, novelty
            noise = model.noise_["force"]
            tt = cal.TwoTermCalibrator().fit(err_c, C[raw], noise, C["novelty"])
            std_c = tt.transform(C[raw], noise, C["novelty"])
            std_e = tt.transform(E[raw], noise, E["novelty"])
            fitted = f"s={tt.scale_:.2f} n={tt.noise_scale_:.2f} c={tt.novelty_scale_:.3g}"
        elif base.endswith("floor"):
            p = fit_scale_floor(err_c, C[raw])
            std_c = np.sqrt(_floor_var(C[raw] ** 2, p))
            std_e = np.sqrt(_floor_var(E[raw] ** 2, p))
            fitted = f"s={np.exp(p[0]):.3f} σ₀={np.exp(0.5 * p[1]):.4f}"
        elif base.endswith("power"):
            p = fit_power(err_c, C[raw])
            std_c = np.sqrt(_power_var(C[raw] ** 2, p))
            std_e = np.sqrt(_power_var(E[raw] ** 2, p))
            fitted = f"a={np.exp(p[0]):.3g} b={p[1]:.3f}"
        else:
            std_c, std_e = C[raw], E[raw]
            fitted = None
        conf = cal.SplitConformal(args.alpha).fit(err_c, std_c)
        q = conf.quantile_
        if fitted is None:
            sc = cal.StdCalibrator().fit(err_c, std_c)
            rows.append((base, "raw", "", metrics_row(err_e, std_e, q, rng), std_e))
            rows.append((base, "scaled", f"s={sc.scale_:.3f}",
                         metrics_row(err_e, sc.transform(std_e), q / sc.scale_, rng),
                         sc.transform(std_e)))
        else:
            rows.append((base, "fitted", fitted, metrics_row(err_e, std_e, q, rng), std_e))
        mc = metrics_row(err_e, q * std_e / Z90, Z90, rng)
        mc["cov90"] = float(np.mean(np.abs(err_e) <= conf.bound(std_e)))
        rows.append((base, "conformal", f"q̂={q:.3f}", mc, q * std_e / Z90))

    print(f"\nforce uncertainty on the eval trajectory ({len(evals)} frames, {err_e.size} "
          f"components, {len(err_e)} atoms); calibrated on calib ({err_c.size} components)")
    head = (f"{'std':9s} {'variant':9s} {'param':20s} {'ZMS':>7s} {'cov90':>6s} {'conf90':>6s} "
            f"{'rho':>6s} {'rho*':>6s} {'NLL':>7s} {'miscal':>7s} {'ENCE':>6s} {'RMV':>7s}")
    print(head)
    print("-" * len(head))
    for base, variant, param, m, _ in rows:
        print(f"{base:9s} {variant:9s} {param:20s} {m['zms']:7.3f} {m['cov90']:6.3f} {m['conf90']:6.3f} "
              f"{m['rho']:6.3f} {m['rho_star']:6.3f} {m['nll']:7.3f} {m['miscal']:7.3f} "
              f"{m['ence']:6.3f} {m['rmv']:7.4f}")
    print("targets: ZMS 0.8-1.25 (calibrated rows); conformal cov90 0.87-0.93; rho >= 0.5")

    def verdict(ok):
        return "MET" if ok else "NOT MET"

    for base in dict.fromkeys(b for b, *_ in rows):
        r = {v: m for b, v, _, m, _ in rows if b == base}
        cal_row = r.get("scaled", r.get("fitted"))
        print(f"  {base:9s}: ZMS calibrated {cal_row['zms']:.3f} "
              f"{verdict(0.8 <= cal_row['zms'] <= 1.25)}; conformal coverage "
              f"{r['conformal']['cov90']:.3f} {verdict(0.87 <= r['conformal']['cov90'] <= 0.93)}; "
              f"rho {cal_row['rho']:.4f} {verdict(cal_row['rho'] >= 0.5)} (if calibrated: "
              f"{cal_row['rho_star']:.3f})")

    # by frame: does σ follow the error from frame to frame?
    n_at = args.n_atoms
    f_err = np.sqrt(np.mean(err_e.reshape(-1, n_at * 3) ** 2, axis=1))
    f_sor = np.sqrt(np.mean(E["SoR"].reshape(-1, n_at * 3) ** 2, axis=1))
    f_dtc = np.sqrt(np.mean(E["DTC"].reshape(-1, n_at * 3) ** 2, axis=1))
    print(f"per-frame Spearman ρ(force RMSE, RMV) on eval: SoR {stats.spearmanr(f_err, f_sor).statistic:.3f}, "
          f"DTC {stats.spearmanr(f_err, f_dtc).statistic:.3f} ({len(f_err)} frames)")
    allF = np.concatenate([err_c, err_e])
    allS = {b: np.concatenate([C[b], E[b]]) for b in ("SoR", "DTC")}
    for b in ("SoR", "DTC"):
        m = cal.force_metrics(np.zeros_like(allF), allF, allS[b])
        print(f"pooled calib+eval ({args.calib_T:g} K and {args.eval_T:g} K) Spearman ρ per atom, {b}: "
              f"{m['norms']['spearman']:.3f}")

    # ---- plots
    if not args.no_plots:
        plot_dir = PLOT_DIR / f"seed{seed}"
        plot_dir.mkdir(parents=True, exist_ok=True)
        written = []
        pick = {("SoR", "raw"): "raw", ("SoR", "scaled"): "scaled", ("DTC", "scaled"): "dtc_scaled"}
        for base, variant, param, m, std in rows:
            tag = pick.get((base, variant))
            if tag is None:
                continue
            title = f"{base} {variant} ({param})" if param else f"{base} {variant}"
            written.append(cal.plot_calibration_curve(err_e, std, plot_dir / f"calibration_curve_{tag}.png",
                                                      title=title, overwrite=True))
            written.append(cal.plot_error_vs_uncertainty(err_e, std, plot_dir / f"error_vs_uncertainty_{tag}.png",
                                                         units="eV/Å", title=title, overwrite=True))
            written.append(cal.plot_z_histogram(err_e, std, plot_dir / f"z_histogram_{tag}.png", title=title,
                                                overwrite=True))
        written.append(cal.plot_parity(E["true"], E["pred"], plot_dir / "parity_forces.png",
                                       label="force component", units="eV/Å",
                                       title=f"EMT Cu {args.eval_T:g} K eval", overwrite=True))
        print(f"\nplots ({len(written)}): {plot_dir.relative_to(CACHE_DIR.parent.parent)}/ "
              + ", ".join(p.name for p in written))
    r = {v: (param, m) for b, v, param, m, _ in rows if b == "SoR"}
    return dict(zeta=int(model.kernel_.zeta), rmse=float(np.sqrt(np.mean(err_e ** 2))),
                raw_zms=r["raw"][1]["zms"], scale=float(r["scaled"][0].split("=")[1]),
                zms=r["scaled"][1]["zms"], cov=r["conformal"][1]["cov90"],
                rho=r["scaled"][1]["rho"], rho_star=r["scaled"][1]["rho_star"])


if __name__ == "__main__":
    main()
