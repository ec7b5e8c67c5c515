"""Threading benchmark: gpal's default threading against one thread, quiet and under load.

What it measures, in one run and in one process (A/B interleaved, so that whatever else
runs on the machine affects both sides alike):

* ``fit``: ``SparseGP(n_sparse=200).fit`` on 20 frames of 108-atom EMT Cu
  (``benchmarks/_data.py``; SOAP r_cut 4.5 Å, n_max 6, l_max 4, sigma 0.5 Å; kernel
  ``NormalizedDotProduct(zeta=4)``), descriptors included;
* ``predict``: ``model.predict(atoms, return_std=True)`` on one 108-atom frame (the mean
  of ``--calls`` calls per repeat, an MD step's cost);
* ``calibrate``: what the learner's calibration after each label computes, the
  leave-one-frame-out residuals of 10 training frames and the two-term calibrator with
  its cross-fitted conformal quantile.

Each is timed in the modes given by ``--modes`` (default ``default,all,one``):

``default``
    gpal's default threading (no context manager, no environment variable);
``one``
    one thread everywhere, set by hand and independently of gpal's policy:
    ``numba.set_num_threads(1)`` and ``threadpoolctl.threadpool_limits(1)``;
``all``
    gpal's policy with the thread count forced to every available core,
    ``gpal.threads(len(os.sched_getaffinity(0)))``: no look at the load (small model
    evaluations still use one BLAS thread);
``lib``
    the libraries' own defaults, gpal's policy switched off
    (``gpal._threads._policy_disabled()``): every numba and BLAS thread, whatever the
    load and the block size;
``nb1``, ``blas1``
    one numba thread only, or one BLAS thread only;

in two phases: ``quiet`` (nothing started by the benchmark; other users' processes are
whatever they are, so the load average is printed) and ``loaded`` (one busy-loop
process, ``python -c 'while 1: pass'``, pinned to one of this process's cores and killed
at the end). Each repeat runs every mode once, the order rotating between repeats;
the figures are medians over ``--repeats`` (default 7) repeats after one warm-up, and
ratios are mode / ``one`` of the same phase.

``lib`` leaves the libraries' threads of its calls (OpenBLAS's, the OpenMP runtime's)
spinning into the next mode's calls in the same process: with ``lib`` among the modes,
quiet ``predict`` in ``default`` mode took 12.4 ms (1.55x one thread), without it 4.4 ms
(0.58x). Compare ``default`` with ``one`` in a run without ``lib``.

This release, ``--modes default,one --repeats 5`` (quiet: nothing else running), ratio to
one thread: quiet fit 0.83x, predict 0.58x, calibrate 0.89x; beside a busy process 0.97x,
0.96x, 0.99x. The calibration before the learner's steps ran under the policy, as
``lib`` approximates it: 3.13x quiet and 6.10x beside the busy process (in ``gpal learn``'s
demo beside other work: 18.3 s of calibration, now 1.3 s).

Run::

    PYTHONPATH=. python benchmarks/bench_threads.py   # 17 min with 4 modes at load 6-12
    PYTHONPATH=. python benchmarks/bench_threads.py --modes lib,all,default,one
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import numba
from threadpoolctl import threadpool_limits

import gpal
from gpal import _threads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import cu_dataset  # noqa: E402


def _mode(name: str):
    """Context manager for one threading mode."""
    if name == "default":
        return contextlib.nullcontext()
    if name == "lib":
        return _threads._policy_disabled()
    if name == "all":
        return gpal.threads(_threads.available_cores())
    stack = contextlib.ExitStack()

    def numba_one():
        old = numba.get_num_threads()
        numba.set_num_threads(1)
        stack.callback(numba.set_num_threads, old)

    if name == "one":
        numba_one()
        stack.enter_context(threadpool_limits(limits=1))
    elif name == "nb1":
        numba_one()
    elif name == "blas1":
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
    else:
        raise ValueError(f"unknown mode {name!r}")
    return stack


def _busy_loop(cpu: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    with contextlib.suppress(OSError):
        os.sched_setaffinity(proc.pid, {cpu})
    return proc


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().strip()


def _run_phase(phase, modes, tasks, repeats) -> dict:
    times = {(t, m): [] for t in tasks for m in modes}
    chosen = []
    for r in range(repeats + 1):  # repeat 0 is a warm-up
        chosen.append(_threads.default_threads())
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        for task, func in tasks.items():
            for m in order:
                with _mode(m):
                    t0 = time.perf_counter()
                    n = func()
                    dt = (time.perf_counter() - t0) / n
                if r > 0:
                    times[(task, m)].append(dt)
        print(f"  {phase} repeat {r}/{repeats} done; /proc/loadavg {_loadavg()}", flush=True)
    print(f"  {phase}: threads gpal's default chose at the start of each repeat: {chosen}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10, help="predict calls per repeat")
    ap.add_argument("--modes", default="default,all,one")
    ap.add_argument("--phases", default="quiet,loaded")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--n-sparse", type=int, default=200)
    args = ap.parse_args()
    modes = args.modes.split(",")
    if "one" not in modes:
        modes.append("one")

    train, test = cu_dataset(n_train_large=args.frames, n_train_small=0, n_test_large=1, n_test_small=0)
    train = [a for a in train if len(a) == 108][: args.frames]
    atoms = next(a for a in test if len(a) == 108)
    soap = gpal.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4, sigma=0.5, periodic=True)

    def make():
        return gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=4), n_sparse=args.n_sparse)

    model = make().fit(train)

    def fit():
        make().fit(train)
        return 1

    def predict():
        for _ in range(args.calls):
            model.predict(atoms, return_std=True)
        return args.calls

    from gpal.calibration import fit_two_term_conformal

    def calibrate():  # what ActiveLearner.calibrate does after each label (no oracle call)
        loo = model.loo_residuals(range(min(len(train), 10)))
        fit_two_term_conformal(loo["force_error"], loo["force_std"], loo["force_noise"],
                               loo["force_novelty"], loo["force_frame"])
        return 1

    tasks = {"fit": fit, "predict": predict, "calibrate": calibrate}
    cpus = sorted(os.sched_getaffinity(0))
    print(f"gpal bench_threads: {len(train)} frames x 108 atoms, {args.n_sparse} sparse; "
          f"cpus available {cpus}; numba {numba.__version__} layer {numba.config.THREADING_LAYER!r}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"policy threads {_threads.default_threads()}")
    results = {}
    for phase in args.phases.split(","):
        print(f"phase {phase}: /proc/loadavg {_loadavg()}", flush=True)
        proc = _busy_loop(cpus[-1]) if phase == "loaded" else None
        try:
            if proc is not None:
                time.sleep(1.0)
            results[phase] = _run_phase(phase, modes, tasks, args.repeats)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    print(f"\nmedians of {args.repeats} repeats (fit, calibrate: s per call; predict: ms per call, return_std=True); "
          "ratio = mode / one")
    print(f"{'phase':8s} {'task':8s} " + " ".join(f"{m:>16s}" for m in modes))
    for phase, times in results.items():
        for task in tasks:
            ref = statistics.median(times[(task, "one")])
            scale = 1e3 if task == "predict" else 1.0
            cells = []
            for m in modes:
                med = statistics.median(times[(task, m)])
                cells.append(f"{med * scale:8.3f} ({med / ref:4.2f}x)")
            print(f"{phase:8s} {task:8s} " + " ".join(f"{c:>16s}" for c in cells))
    print(f"/proc/loadavg at end {_loadavg()}")


if __name__ == "__main__":
    main()
