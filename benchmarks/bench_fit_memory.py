"""Fit memory benchmark: a two-species fit with 2,000 sparse points within a memory budget.

Data: random fcc Cu(0.75)Au(0.25) alloys of 108 atoms (Vegard lattice constant, a new
decoration per trajectory), EMT Langevin MD at 300, 600, 900 and 1200 K (4 fs steps,
ten frames per trajectory, one every 10 steps after 40 steps of equilibration);
held-out frames from other trajectories. Model: gpal's default SOAP (n_max 8, l_max 6, r_cut 5 Å; 952 features for
two species), ``NormalizedDotProduct(zeta=4)``, fixed noises (0.002 eV/atom, 0.05 eV/Å,
0.005 eV/Å^3), FPS sparse points, ``hyperparameters="fixed"``.

Each fit runs in a fresh child process (``--child``) after a small warm-up fit, and
reports its wall time, its whole peak RSS (``VmHWM``: interpreter, numpy, numba and ASE
included) and the rise of the peak over the fit, and the held-out force RMSE. The
stacked rows a one-shot fit holds (``n_obs x n_sparse`` floats, at least twice: the rows
and the stacked copy QR factorises) are printed beside them. ``--compare-main
PYTHON:PATH`` fits the same data with another checkout (e.g. the previous release,
which always forms the whole stacked matrix) in its own child.

Measured (2 shared cores, load average 3-7; ``--frames 40 80 --budget-gb 0.25``; main =
the release before the memory budget, which forms the whole stacked matrix)::

    frames  n_obs  rows GB  time s  peak GB  F RMSE   main: time s  peak GB   peak ratio
        40  13240    0.21      64     1.10   0.0074            70     1.61         1.47
        80  26480    0.42     137     1.13   0.0065           124     2.93         2.60

The budgeted peak does not grow with the data; the one-shot peak grows by ~6 bytes per
byte of rows (rows, their whitened/stacked copies, QR workspace): at the issue's 1,000
frames (331k observations, 5.3 GB of rows) a one-shot fit would need ~33 GB; the budgeted
fit is measured below.

With ``--budget-gb 1`` (rows beyond 0.5 GB streamed; load average 6-8, so wall times
are inflated)::

    frames  n_obs  rows GB  time s  CPU s  peak GB  F RMSE eV/Å
        50  16550    0.26     705      -     1.52   0.0083
       200  66200    1.06     949      -     1.51   0.0065
       400 132400    2.12     692    442     1.69   0.0065

1,000 frames (331k observations, 5.3 GB of rows; ``--frames 1000 --budget-gb 1``; load
average 2-6 from other jobs on the 2 cores during the first run, 1-5 during the second)::

    frames  n_obs  rows GB  time s  CPU s  peak GB  F RMSE eV/Å
      1000 331000    5.30    1380   1002     2.98   0.0061   selection on a stacked copy
      1000 331000    5.30    1318   1022     1.79   0.0061   one species' rows at a time

The peak is whole-process ``VmHWM`` (0.44 GB of it before the fit). With a stacked copy
of all 108,000 descriptor rows (0.8 GB) beside each species' rows, the sparse selection
was the peak of the first run; it now gathers one species' rows at a time, and the fit drops
the descriptors once the sparse set is chosen (1.2 GB resident while the QR folds the
blocks in, against 2.0-2.4 GB before). The selection (all descriptors plus the Cu rows) is
still the peak, at 1.79 GB: within the issue's 4 GB with 2.2 GB to spare.

gap_fit (``--gap-frames``, same frames, SOAP n_max 8 / l_max 6 / r_cut 5, 1,500 Cu + 500
Au sparse points, which gap_fit, like gpal, caps at the environments available; run under
``prlimit --as`` of 12 GB and killed after 20 min wall; one thread, load average 3-7):
its memory estimate is 0.33 GB per frame (descriptor derivatives ``xPrime``), so 30 frames
(9.9 GB estimated) are the most that fit under 12 GB and 200 frames would need 65 GB. The
time bound comes first: its sparse covariance costs ~0.14 ms CPU per (sparse point x force
row), 357 CPU s for 810 Cu sparse points x 3,240 force rows on 10 frames (~22 CPU min for
the Cu descriptor alone on 20 frames), so 20 and 30 frames were killed at 20 min wall after
7.5 and 10.5 CPU min, unfinished. The largest common frame
count is 10 (every environment is a sparse point in both codes: 1,080)::

    frames  code     time s  CPU s  peak GB  F RMSE eV/Å
        10  gap_fit     868    420     3.18   0.1069
        10  gpal         14      7     0.70   0.0307
            gap_fit / gpal: time 61, CPU 59, peak 4.6, F RMSE 3.5

gpal's peak includes its interpreter, numpy, numba and ASE (0.44 GB before the fit);
gap_fit's is its own binary. The force RMSEs differ more than the sparse sets (the same
environments) would suggest: GAP's descriptor is one SOAP per central species and its e0
the average energy per atom; this was not investigated further here.

    gpal on more frames (same run settings): 20 frames 81 s (27 CPU s), 1.11 GB, 0.0123;
    30 frames 116 s (40 CPU s), 1.35 GB, 0.0104 eV/Å.

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_fit_memory.py --frames 200 400 \\
        --budget-gb 3 --compare-main /work/venv/bin/python:/work/main
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_fit_memory.py --quick
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_fit_memory.py --frames 1000 --budget-gb 1
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_fit_memory.py --frames 10 \\
        --budget-gb 1 --gap-frames 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def alloy_frames(n: int, seed: int) -> list:
    """``n`` labelled 108-atom Cu/Au frames from EMT MD at 300-1200 K (cached extxyz)."""
    from ase.io import read, write

    sys.path.insert(0, str(HERE))
    import _data

    path = _data.CACHE_DIR / f"fit_memory_CuAu_{n}_{seed}.extxyz"
    if path.exists():
        return read(path, ":")
    if n % 10 == 0:  # whole trajectories: the first n frames of a larger cached set
        for other in sorted(_data.CACHE_DIR.glob(f"fit_memory_CuAu_*_{seed}.extxyz")):
            if int(other.name.split("_")[3]) > n:
                return read(other, f":{n}")
    temps = (300.0, 600.0, 900.0, 1200.0)
    frames = []
    per_traj = 10  # many short trajectories: every subset mixes temperatures
    k = 0
    while len(frames) < n:
        t = temps[k % len(temps)]
        rng = np.random.default_rng(seed * 1000 + k)
        cell = _data._strained(_data.random_alloy(3, 0.25, rng), rng, 0.01)
        frames += _data._trajectory(cell, t, min(per_traj, n - len(frames)), seed * 1000 + k + 7,
                                    interval=10, equilibration=40, timestep_fs=4.0,
                                    friction_per_fs=0.02)
        k += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frames)
    return read(path, ":")


def _vm_hwm() -> float:
    """Peak resident set size of this process (GB), from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def child(args) -> dict:
    from gpal import SparseGP
    from gpal.kernels import NormalizedDotProduct
    from gpal.model import default_descriptor

    train = alloy_frames(args.frames[0], seed=1)
    test = alloy_frames(args.n_test, seed=2)

    def model(n_sparse, budget):
        kw = dict(hyperparameters="fixed", energy_noise=0.002, force_noise=0.05,
                  stress_noise=0.005, n_sparse=n_sparse)
        if budget is not None:
            kw["memory_budget_gb"] = budget
        return SparseGP(default_descriptor(train), NormalizedDotProduct(zeta=4), **kw)

    model(50, None).fit(train[:3])  # warm-up: numba compilation / cache, BLAS
    before = _vm_hwm()
    t0, c0 = time.perf_counter(), time.process_time()
    m = model(args.n_sparse, args.budget_gb).fit(train)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _vm_hwm()
    err = np.concatenate([(m.predict(a)["forces"] - a.get_forces()).ravel() for a in test])
    sol = m.solver_
    return {
        "time_s": elapsed, "cpu_s": cpu, "peak_gb": peak, "rise_gb": peak - before,
        "force_rmse": float(np.sqrt(np.mean(err**2))),
        "n_obs": int(sol.n_obs_), "n_sparse": int(sol.n_sparse_),
        "rows_kept": bool(getattr(sol, "keep_rows_", True)),
    }


def run_gap(n: int, args) -> dict:
    """gap_fit on the first ``n`` training frames, same SOAP sizes and sparse count.

    Runs under an address-space limit of ``--gap-memory-gb`` (``prlimit --as``) so that a
    fit that needs more memory fails cleanly instead of pushing the machine into swap or
    the OOM killer; returns time and peak RSS, or the failure and gap_fit's own memory
    estimate when it printed one.
    """
    import re
    import shutil

    sys.path.insert(0, str(HERE))
    from bench_fit_predict import fit_gap, gap_available

    ok, why = gap_available()
    if not ok:
        return {"error": why}
    frames = alloy_frames(n, seed=1)
    numbers = np.concatenate([a.numbers for a in frames])
    species = sorted(int(z) for z in np.unique(numbers))
    frac = {z: np.count_nonzero(numbers == z) / len(numbers) for z in species}
    counts = {z: int(round(args.n_sparse * frac[z])) for z in species}
    counts[species[0]] += args.n_sparse - sum(counts.values())
    workdir = HERE / ".cache" / "gap_fit_memory" / f"CuAu_{n}_M{args.n_sparse}"
    limit = int(args.gap_memory_gb * 1e9)
    import bench_fit_predict as bfp

    real = bfp.gap_fit_binary() or shutil.which("gap_fit")
    wrapper = workdir / "gap_fit_limited.sh"
    workdir.mkdir(parents=True, exist_ok=True)
    timeout = f"timeout -s KILL {int(args.gap_timeout_s)} " if args.gap_timeout_s else ""
    wrapper.write_text(f"#!/bin/sh\nexec {timeout}prlimit --as={limit} {real} \"$@\"\n")
    wrapper.chmod(0o755)
    old = bfp.gap_fit_binary
    bfp.gap_fit_binary = lambda: str(wrapper)
    try:
        res = fit_gap(frames, counts, workdir, seed=0)
        predict = bfp.gap_predictor(res["xml"], with_std=False)
        test = alloy_frames(args.n_test, seed=2)
        err = np.concatenate([(predict(a)["forces"] - a.get_forces()).ravel() for a in test])
        out = {"time_s": res["wall"], "cpu_s": res["cpu"], "peak_gb": res["peak_rss_mb"] / 1e3,
               "force_rmse": float(np.sqrt(np.mean(err**2))), "counts": counts}
    except RuntimeError as exc:
        log = (workdir / "gap_fit.log").read_text(errors="replace")
        if "(-9)" in str(exc) or "(137)" in str(exc):
            exc = RuntimeError(f"killed (time limit {args.gap_timeout_s:g} s or memory)")
        est = [" ".join(m.split()) for m in re.findall(r"(?m)^(?:PEAK|Free system memory)\s.*$", log)]
        out = {"error": str(exc).splitlines()[0], "estimate": ["gap_fit's estimate: " + e
                                                            for e in est[-2:]],
               "counts": counts}
    finally:
        bfp.gap_fit_binary = old
    return out


def run_child(python: str, path: str | None, n: int, args) -> dict:
    cmd = [python, __file__, "--child", "--frames", str(n), "--n-sparse", str(args.n_sparse),
           "--n-test", str(args.n_test)]
    if args.budget_gb is not None and path is None:
        cmd += ["--budget-gb", str(args.budget_gb)]
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = path
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[200, 400])
    p.add_argument("--n-sparse", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--budget-gb", type=float, default=None,
                   help="SparseGP(memory_budget_gb=...); default: gpal's default")
    p.add_argument("--compare-main", default=None, metavar="PYTHON:PATH")
    p.add_argument("--quick", action="store_true", help="20 and 40 frames, 300 sparse points")
    p.add_argument("--gap-frames", type=int, nargs="*", default=[],
                   help="also run gap_fit on this many frames (same SOAP sizes, sparse count)")
    p.add_argument("--gap-memory-gb", type=float, default=12.0,
                   help="address-space limit of gap_fit (it fails cleanly beyond it)")
    p.add_argument("--gap-timeout-s", type=float, default=1200.0,
                   help="gap_fit is killed after this many seconds (0: no limit)")
    p.add_argument("--no-gpal", action="store_true", help="only the gap_fit runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.frames, args.n_sparse, args.n_test = [20, 40], 300, 5
    for n in args.frames:  # build the data once, outside the timed children
        alloy_frames(n, seed=1)
    alloy_frames(args.n_test, seed=2)
    gap_rows = []
    for n in args.gap_frames:
        print(f"gap_fit on {n} frames ...", file=sys.stderr, flush=True)
        gap_rows.append((n, run_gap(n, args)))
    rows = []
    for n in ([] if args.no_gpal else args.frames):
        print(f"fitting {n} frames ...", file=sys.stderr, flush=True)
        mine = run_child(sys.executable, None, n, args)
        other = None
        if args.compare_main:
            python, path = args.compare_main.split(":", 1)
            other = run_child(python, path, n, args)
        rows.append((n, mine, other))
    budget = "default" if args.budget_gb is None else f"{args.budget_gb:g} GB"
    print(f"\nCu/Au 108-atom frames, {args.n_sparse} sparse points, one thread; memory budget "
          f"{budget}; held-out force RMSE on {args.n_test} frames")
    hdr = (f"{'frames':>7}{'n_obs':>9}{'rows GB':>9}{'time s':>9}{'CPU s':>9}{'peak GB':>9}"
           f"{'rise GB':>9}"
           f"{'F RMSE':>9}{'kept':>6}")
    if args.compare_main:
        hdr += f"{'main time':>11}{'main peak':>11}{'main rise':>11}{'peak ratio':>12}"
    print(hdr)
    for n, mine, other in rows:
        if "error" in mine:
            print(f"{n:>7}  failed: {mine['error']}")
            continue
        rows_gb = 8 * mine["n_obs"] * mine["n_sparse"] / 1e9
        line = (f"{n:>7}{mine['n_obs']:>9}{rows_gb:>9.2f}{mine['time_s']:>9.0f}"
                f"{mine.get('cpu_s', float('nan')):>9.0f}"
                f"{mine['peak_gb']:>9.2f}{mine['rise_gb']:>9.2f}{mine['force_rmse']:>9.4f}"
                f"{'yes' if mine['rows_kept'] else 'no':>6}")
        if other is not None:
            if "error" in other:
                line += f"  main failed: {other['error']}"
            else:
                line += (f"{other['time_s']:>11.0f}{other['peak_gb']:>11.2f}"
                         f"{other['rise_gb']:>11.2f}{other['peak_gb'] / mine['peak_gb']:>12.2f}")
        print(line)
    print("rows GB: n_obs x n_sparse float64, what a one-shot fit holds at least twice")
    for n, g in gap_rows:
        if "error" in g:
            print(f"gap_fit {n} frames, sparse {g.get('counts')}, limit {args.gap_memory_gb:g} "
                  f"GB: failed: {g['error']}; {' | '.join(g.get('estimate', []))}")
        else:
            line = (f"gap_fit {n} frames, sparse {g['counts']}: {g['time_s']:.0f} s "
                    f"(CPU {g['cpu_s']:.0f} s), peak {g['peak_gb']:.2f} GB, "
                    f"F RMSE {g['force_rmse']:.4f} eV/Å")
            same = next((m for k, m, _ in rows if k == n and "error" not in m), None)
            if same is not None:
                line += (f"; gap_fit / gpal: time {g['time_s'] / same['time_s']:.2f}, CPU "
                         f"{g['cpu_s'] / same['cpu_s']:.2f}, peak "
                         f"{g['peak_gb'] / same['peak_gb']:.2f}, F RMSE "
                         f"{g['force_rmse'] / same['force_rmse']:.2f}")
            print(line)


if __name__ == "__main__":
    main()
