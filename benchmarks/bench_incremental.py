"""Incremental learning benchmark: the cost of one label against the size of the model.

What it measures (108-atom fcc Cu cells from EMT Langevin MD at 300-1200 K; gpal's
default SOAP, n_max 8, l_max 6, r_cut 5 Å; ``NormalizedDotProduct(zeta=4)``, fixed
noises, 200 sparse points fitted on the first frames):

* ``update([frame], n_sparse=10)``: one new labelled 108-atom frame that also brings 10
  new sparse environments (what :class:`gpal.ActiveLearner` does per label), on a model
  holding ``--small`` (10) and ``--large`` (200) frames; the median of ``--repeats``
  additions, each on a fresh copy of the model that first took one untimed label (the
  learner's steady state: a fit leaves no spare room in the row buffer, which then
  grows geometrically). The ratio large/small is the issue's target (<= 1.5);
* ``add_sparse_environments(frame, 3)``: the learner's sparse refresh (no label);
* ``update([frame], n_sparse=0)``: a label without new sparse points;
* accuracy: after the additions to the small model, predictions (mean, SoR variance of
  a test frame's local energies) and the log marginal likelihood against a solver
  refitted from scratch on the same frames and sparse set, relative differences;
* ``--compare-main PYTHON:PATH`` reruns the timing part with another checkout of gpal
  (e.g. the previous release) in a child process and prints its times beside these.

Measured (2 shared cores, other jobs keeping the load average at 3-8, so single times
vary by ~2x between runs; median of 3; the ``fit`` row, which this version does not
change, shows how the load treated the two checkouts)::

    operation              10 frames  200 frames  ratio   main: 10    200   ratio  main/this
    label, 10 new sparse     0.27 s     3.78 s    14.2      0.74 s  10.9 s  14.7     2.89
    sparse refresh, 3        0.14 s     3.02 s    22.0      0.34 s   4.58 s 13.3     1.52
    label, no new sparse     0.09 s     0.08 s    0.86      0.15 s   0.10 s  0.67    1.29
    fit                      2.12 s     20.6 s     9.7      3.31 s  33.3 s  10.1     1.62
    one stored frame's columns for 10 new sparse points: 13.3 ms, main 53.7 ms (4.0x)
    incremental vs refit (M = 223, cond(R) 2.8e9): mean 2.5e-9, SoR variance 4.2e-10,
    log marginal likelihood 2.1e-11 (max relative differences; main 3.8e-10, 3.9e-10,
    1.2e-11, and this version with descriptor-derivative columns 2.6e-9, 4.3e-10,
    2.1e-11: round-off amplified by cond(R), not the column method)

The next release (training and force-std rows block by block, CosineKernel.contract_rows)
against this one as "main", quiet machine (load 1.0-1.3)::

    operation              10 frames  200 frames  ratio   main: 10    200   ratio  main/this
    label, 10 new sparse     0.19 s     1.81 s     9.3      0.20 s   2.27 s 11.1     1.25
    sparse refresh, 3        0.10 s     1.42 s    14.7      0.10 s   1.51 s 15.8     1.07
    label, no new sparse     0.07 s     0.06 s    0.81      0.13 s   0.08 s  0.66    1.37
    fit                      1.72 s     12.8 s     7.5      1.98 s  20.8 s  10.5     1.62
    one stored frame's columns for 10 new sparse points: 7.5 ms, main 9.3 ms

Two earlier runs under heavier load (7-8), where the fit took the same time in both
checkouts (main/this 0.99 and 0.91): label with 10 new sparse points 0.43 / 6.6 s
against main's 0.62-0.93 / 12.7-13.4 s (main/this 1.9-2.0 at 200 frames).

A label without new sparse points costs the same at 10 and 200 frames. With new sparse
points every stored frame needs its kernel columns for the new points; they now come
from one SOAP expansion and one backward pass for all the points
(:meth:`SOAPExpansion.backward` with K gradients: each pair's radial functions and
harmonics once, one BLAS product per centre), ~16 ms per 108-atom frame for 10 points
on a quiet core against ~45 ms for the frame's descriptor derivatives before. What
remains per frame (10 points, one quiet core): expansion and neighbour list 2.3 ms,
kernel gradient 1.4 ms, backward pass ~10 ms (pair geometry ~2.5, pair Jacobian ~2.5,
fold of the gradients ~2, product ~2.4; a later profile by stage, fastest of 15:
geometry 1.7, fold 1.1, Jacobian 2.25, product 2.45, 7.7 ms in all), forces and stress
0.3 ms. The Jacobian's and the fold's pair loops vectorise already (AVX2 in numba's
assembly), unlike the one-gradient pass's, whose rewrite as loops from index 0 took
it from 3.5 to 2.4 ms per frame; the product is BLAS. The factor update
(Gram-Schmidt on the whitened rows, O(rows x M x k)) takes ~0.05 s at 10 frames and
~0.6-1.2 s at 200, half of it copying the row buffer when its column capacity grows
(every M/4 new points). The 1.5x target would need ~0.5 ms per stored frame: exact
columns need every pair's descriptor derivative against every new point (>= ~750
flops per pair and point), or a cache of the derivatives (28 MB per frame, 5.8 GB for
200 frames).

Since ``exact_frames`` (:meth:`gpal.SparseGP.update`): a label's new sparse points get
exact kernel columns for the most recent ``--window`` (10) stored frames only, the older
ones projected through the old sparse set (a streaming sparse GP; exact again after
``SparseGP.refit()`` or a hyperparameter refit). Times are now the mean of a sequence of
6 operations on one model after one untimed (the row buffer's geometric growth
amortised, as in a run); quiet machine (load 1.4-1.5), one thread::

    operation                  small     large  large/small
    label, 10 new sparse       0.256     2.773        10.84
    sparse refresh, 3          0.091     1.302        14.29
    label, no new sparse       0.065     0.060         0.93
    label, 10 new, window      0.204     0.209         1.02
    refresh, 3, window         0.094     0.083         0.88
    label, 10 new, proj.       0.084     0.097         1.16     (exact_frames=0)
    fit                        1.656    15.181         9.17

    6 labels (+10 sparse each) on a 40-frame model, force RMSE on 10 held-out frames:
    exact 0.0014 eV/Å, window of 10 frames 0.0016 (1.10x), projected 0.0019 (1.31x),
    projected then refit 0.0014

What a window costs is its frames' columns (10.6 ms per 108-atom frame for 10 points)
plus the new frame's rows; what it loses, until the next refit, is what older frames
say about the new points.

Run (single-threaded, as the issue's figures)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_incremental.py \\
        --compare-main /work/venv/bin/python:/work/main
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_incremental.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def frames_108(n: int, seed: int = 0, symbol: str = "Cu") -> list:
    """``n`` labelled 108-atom fcc frames from EMT Langevin MD at 300-1200 K (cached)."""
    from ase.io import read, write

    sys.path.insert(0, str(HERE))
    import _data

    temps = (300.0, 600.0, 900.0, 1200.0)
    path = _data.CACHE_DIR / f"incremental_{symbol}_{n}_{seed}.extxyz"
    if path.exists():
        return read(path, ":")
    frames = []
    for t_index, (t, count) in enumerate(zip(temps, _data._split(n, len(temps)))):
        rng = np.random.default_rng(seed * 100 + t_index)
        cell = _data._strained(_data.fcc_cell(_data.A_CU, 3, symbol), rng, 0.01)
        frames += _data._trajectory(cell, t, count, seed * 100 + t_index + 7, interval=10,
                                    equilibration=40, timestep_fs=4.0, friction_per_fs=0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frames)
    return read(path, ":")


def n_extra(args) -> int:
    """Frames beyond the ``--large`` model's: the timed labels, the warm-up, the test."""
    return 2 * args.repeats + 2


def make_model(frames, n_sparse):
    from gpal import SparseGP
    from gpal.kernels import NormalizedDotProduct
    from gpal.model import default_descriptor

    model = SparseGP(default_descriptor(frames), NormalizedDotProduct(zeta=4), n_sparse=n_sparse,
                     hyperparameters="fixed", energy_noise=0.002, force_noise=0.05,
                     stress_noise=0.005)
    return model.fit(frames)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timings(args) -> dict:
    """Median seconds per operation for the small and the large model."""
    frames = frames_108(args.large + n_extra(args))
    base, extra = frames[: args.large], frames[args.large:]
    out = {}
    for name, n in (("small", args.small), ("large", args.large)):
        t0 = time.perf_counter()
        model = make_model(base[:n], args.n_sparse)
        out[f"fit_{name}"] = time.perf_counter() - t0
        if name == "small":  # one stored frame's kernel columns for 10 new sparse points
            from gpal._threads import limited  # the threads update() would use

            Z, zsp = model.sparse_X_[-10:], model.sparse_species_[-10:]
            model._new_columns(model.frames_[0], Z, zsp)  # compiled before timing
            with limited():
                out["columns"] = float(np.median([timed(lambda a=a: model._new_columns(a, Z, zsp))
                                                  for a in model.frames_]))
        for op, fn in (
            ("label+10", lambda m, a: m.update([a], n_sparse=10)),
            ("refresh3", lambda m, a: m.add_sparse_environments(a, 3)),
            ("label+0", lambda m, a: m.update([a], n_sparse=0)),
            ("label+10w", lambda m, a: m.update([a], n_sparse=10, exact_frames=args.window)),
            ("refresh3w", lambda m, a: m.add_sparse_environments(a, 3, exact_frames=args.window)),
            ("label+10p", lambda m, a: m.update([a], n_sparse=10, exact_frames=0)),
        ):
            # the learner's steady state: one untimed operation of the same kind (a fit
            # leaves no spare room in the row buffer, which then grows geometrically),
            # then the mean of a sequence on the same model (the buffer's growth amortised)
            m = copy.deepcopy(model)
            fn(m, extra[-1])
            ts = [timed(lambda a=a, m=m: fn(m, a)) for a in extra[: 2 * args.repeats]]
            out[f"{op}_{name}"] = float(np.mean(ts))
            del m
        print(f"  [{name}: {n} frames done]", file=sys.stderr, flush=True)
    return out


def accuracy(args) -> dict:
    """Incremental model against a refit from scratch on the same frames and sparse set."""
    from gpal.sparse_gp import SparseGPSolver

    frames = frames_108(args.large + n_extra(args))
    model = make_model(frames[: args.small], args.n_sparse)
    adds = frames[args.large: args.large + 3]
    model.update(adds[:1], n_sparse=10)
    model.add_sparse_environments(adds[1], 3)
    model.update(adds[1:], n_sparse=10)
    Z, zsp = model.sparse_X_, model.sparse_species_
    ref = SparseGPSolver().fit(model._k_mm(Z, zsp), model._stacked_rows(model.frames_, Z, zsp),
                               model.solver_.y_, model.solver_.noise_std_, jitter=model.jitter)
    test = frames[-1]
    X = model.descriptor_.create(test)
    K = model._k_xm(X, test.numbers, Z, zsp)
    mean_new, mean_ref = K @ model.alpha_, K @ ref.alpha_
    var_new, var_ref = model.solver_.var_sor(K), ref.var_sor(K)
    lml_new = model.solver_.log_marginal_likelihood()
    lml_ref = ref.log_marginal_likelihood()
    # a window of exact columns / none against exact ones over a sequence of labels on a
    # model of --accuracy-frames frames, then the refit
    n0 = args.accuracy_frames
    exact = make_model(frames[:n0], args.n_sparse)
    window, proj = copy.deepcopy(exact), copy.deepcopy(exact)
    for a in frames[args.large: args.large + 2 * args.repeats]:
        exact.update([a], n_sparse=10)
        window.update([a], n_sparse=10, exact_frames=args.window)
        proj.update([a], n_sparse=10, exact_frames=0)
    held_out = frames[n0: n0 + 10]

    def force_rmse(m):
        d = np.concatenate([(m.predict(a)["forces"] - a.get_forces()).ravel() for a in held_out])
        return float(np.sqrt(np.mean(d**2)))

    f_proj, f_exact, f_window = force_rmse(proj), force_rmse(exact), force_rmse(window)
    f_refit = force_rmse(proj.refit())
    return {
        "labels": 2 * args.repeats, "f_proj": f_proj, "f_exact": f_exact, "f_refit": f_refit,
        "f_window": f_window,
        "mean_rel": float(np.max(np.abs(mean_new - mean_ref)) / np.max(np.abs(mean_ref))),
        "var_rel": float(np.max(np.abs(var_new - var_ref)) / np.max(np.abs(var_ref))),
        "lml_rel": float(abs(lml_new - lml_ref) / abs(lml_ref)),
        "cond_R": float(np.linalg.cond(ref.R_)),
        "n_sparse": int(len(Z)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", type=int, default=10)
    p.add_argument("--large", type=int, default=200)
    p.add_argument("--n-sparse", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--window", type=int, default=10,
                   help="exact_frames of the windowed rows (the most recent frames' columns)")
    p.add_argument("--accuracy-frames", type=int, default=40,
                   help="frames of the model the accuracy of the window is measured on")
    p.add_argument("--quick", action="store_true", help="small=4, large=20, 1 repeat")
    p.add_argument("--compare-main", default=None, metavar="PYTHON:PATH",
                   help="interpreter and gpal checkout to time the same operations with")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.small, args.large, args.repeats, args.accuracy_frames = 4, 20, 1, 8
    warnings.simplefilter("ignore")
    if args.json:  # child mode: timings only
        print(json.dumps(timings(args)))
        return
    other = None
    load0 = os.getloadavg()
    if args.compare_main:
        python, path = args.compare_main.split(":", 1)
        cmd = [python, __file__, "--json", "--small", str(args.small), "--large", str(args.large),
               "--n-sparse", str(args.n_sparse), "--repeats", str(args.repeats)]
        env = dict(os.environ, PYTHONPATH=path)
        frames_108(args.large + n_extra(args))  # build the cache once
        print(f"timing {path} ...", file=sys.stderr, flush=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        other = json.loads(res.stdout.strip().splitlines()[-1])
    print("timing this checkout ...", file=sys.stderr, flush=True)
    mine = timings(args)
    acc = accuracy(args)
    print(f"\n108-atom Cu, {args.n_sparse} sparse points, one thread; mean of a sequence of "
          f"{2 * args.repeats} (after one untimed); seconds")
    hdr = f"{'operation':<22}{'small':>10}{'large':>10}{'large/small':>13}"
    if other:
        hdr += f"{'main small':>12}{'main large':>12}{'main l/s':>10}{'main/this (large)':>19}"
    print(hdr)
    for op, label in (("label+10", "label, 10 new sparse"), ("refresh3", "sparse refresh, 3"),
                      ("label+0", "label, no new sparse"),
                      ("label+10w", "label, 10 new, window"), ("refresh3w", "refresh, 3, window"),
                      ("label+10p", "label, 10 new, proj."),
                      ("fit", "fit")):
        key = (lambda name: f"{op}_{name}") if op != "fit" else (lambda name: f"fit_{name}")
        if key("small") not in mine:
            continue
        s, L = mine[key("small")], mine[key("large")]
        row = f"{label:<22}{s:>10.3f}{L:>10.3f}{L / s:>13.2f}"
        if other and key("small") in other:
            os_, oL = other[key("small")], other[key("large")]
            row += f"{os_:>12.3f}{oL:>12.3f}{oL / os_:>10.2f}{oL / L:>19.2f}"
        print(row)
    print(f"(small = {args.small} frames, large = {args.large} frames)")
    row = f"one stored frame's columns for 10 new sparse points: {1e3 * mine['columns']:.1f} ms"
    if other and "columns" in other:
        row += f", main {1e3 * other['columns']:.1f} ms (main/this {other['columns'] / mine['columns']:.2f})"
    print(row)
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min) at the start {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, "
          f"at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"\nincremental vs refit from scratch after 2 labels (+10 sparse each) and a refresh "
          f"(+3), M = {acc['n_sparse']}, cond(R) ~ {acc['cond_R']:.2g}:")
    print(f"  local-energy mean {acc['mean_rel']:.2e}, SoR variance {acc['var_rel']:.2e}, "
          f"log marginal likelihood {acc['lml_rel']:.2e} (max relative differences)")
    print(f"\n{acc['labels']} labels (+10 sparse each) on a {args.accuracy_frames}-frame model, "
          f"force RMSE on 10 held-out frames: exact {acc['f_exact']:.4f} eV/Å, window of "
          f"{args.window} frames {acc['f_window']:.4f} ({acc['f_window'] / acc['f_exact']:.3f}x), "
          f"projected {acc['f_proj']:.4f} ({acc['f_proj'] / acc['f_exact']:.3f}x), projected "
          f"then refit {acc['f_refit']:.4f}")


if __name__ == "__main__":
    main()
