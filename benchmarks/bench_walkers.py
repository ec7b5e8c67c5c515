"""Walkers on a dask cluster: 4 walkers on 2 workers against 1 worker (gpal.learning.walkers).

The same learning run (EMT Cu, 32 atoms, temperature ramp 300 -> 1500 K, trigger at
0.008 eV/Å, 4 walkers, the same total MD steps) four ways:

* ``serial``: the walkers step in the learner's process (``walker_executor=None``,
  today's loop; its own random streams, so its trajectory differs);
* ``1 worker``: the walkers' segments on a dask LocalCluster with one worker process;
* ``2 workers``: the same on a LocalCluster with two worker processes;
* ``2 overlap``: as ``2 workers``, but each round's segments start on the old model as
  soon as the previous round's are back, while the learner labels and updates
  (``learner._walker_overlap``), to decide whether walkers should wait for the labels.

The two dask runs are the same computation (each segment is seeded from walker and
step, not from the worker that runs it): the benchmark checks that their labelled
frames are identical, so their oracle calls and errors must be equal, and only the
wall time may differ. Printed for each run: wall time of ``learner.run`` (workers
started and warmed before the clock starts), oracle calls, held-out force RMSE on an
independent EMT trajectory (another seed, 900 K), the learner's share of the rounds
(walkers idle while it labels and updates) and the machine load
(``os.getloadavg()``) before and after, since the machine is shared. Target: 2 workers
<= 0.65 x the wall time of 1 worker, same or fewer oracle calls for the same error.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_walkers.py            (about 3-6 min)
      OMP_NUM_THREADS=1 python benchmarks/bench_walkers.py --quick    (smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from gpal import SOAP, ActiveLearner, MDSettings, SparseGP, Trigger

POLY = {"function": "poly", "r0": 4.5, "c": 1, "m": 1}


def start():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))


def model():
    return SparseGP(SOAP(species=["Cu"], periodic=True, r_cut=4.5, n_max=5, l_max=4, sigma=0.5,
                         weighting=POLY), n_sparse=60)


def held_out(n=20, every=20, equilibrate=200, seed=12345, temperature=900.0):
    """Frames of an independent EMT Langevin trajectory with their EMT forces (eV/Å)."""
    a = start()
    a.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(a, temperature_K=temperature, rng=rng)
    dyn = Langevin(a, 2.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False,
                   rng=rng)
    dyn.run(equilibrate)
    frames = []
    for _ in range(n):
        dyn.run(every)
        f = a.copy()
        f.info["forces"] = a.get_forces().copy()
        frames.append(f)
    return frames


def force_rmse(m, frames) -> float:
    err = [m.predict(f)["forces"] - f.info["forces"] for f in frames]
    return float(np.sqrt(np.mean(np.square(err))))


def warm():
    """Import gpal and load its compiled kernels in a worker (before the clock starts)."""
    a = start()
    a.calc = EMT()
    frames = []
    for k in range(2):
        b = a.copy()
        b.positions += np.random.default_rng(k).normal(0, 0.05, b.positions.shape)
        b.calc = EMT()
        b.get_forces()
        frames.append(b)
    m = model().fit(frames)
    m.predict(a, return_std=True, forces_std=True)
    return os.getpid()


#: the trigger of the runs: one that fires on EMT Cu, or (--default-trigger) gpal's default
TRIGGER = {"trigger": Trigger(threshold=0.008, every=10)}


def learner(run_dir, steps_per_segment, walker_executor=None):
    return ActiveLearner(start(), "ase.calculators.emt:EMT", model(), run_dir=run_dir, progress=False,
                         md=MDSettings(temperature=(300, 1500), timestep=2.0), n_walkers=4,
                         **TRIGGER, check_every=steps_per_segment,
                         n_sparse_initial=60, sparse_per_label=8, random_state=0,
                         walker_executor=walker_executor)


def rounds(run_dir):
    recs = [json.loads(line) for line in open(Path(run_dir) / "log.jsonl")]
    r = [x for x in recs if x.get("event") == "round"]
    segs = [x for x in recs if x.get("event") == "segment"]
    md = sum(x["md_wall"] for x in r)
    lw = sum(x["learner_wall"] for x in r)
    # critical path: per round, the busiest worker's summed segment run time, plus the
    # learner's time; what the wall time would be if nothing else competed for the cores
    busy: dict = {}
    for x in segs:
        busy[(x["round"], x["pid"])] = busy.get((x["round"], x["pid"]), 0.0) + x["run"]
    crit = lw + sum(max(v for (rr, _), v in busy.items() if rr == x["round"]) for x in r)
    steps = sum(x["steps"] for x in segs)
    return {"rounds": len(r), "md_wall": md, "learner_wall": lw, "critical_path": crit,
            "ms_per_step": 1e3 * sum(x["run"] for x in segs) / max(steps, 1),
            "pids": len({x["pid"] for x in segs}),
            "wait_mean": float(np.mean([x["wait"] for x in segs])) if segs else 0.0}


def run_one(name, tmp, steps, segment, test, n_workers=None, overlap=False, speculate=True):
    run_dir = Path(tmp) / name.replace(" ", "_")
    load0 = os.getloadavg()
    if n_workers is None:
        L = learner(run_dir, segment)
        t0 = time.perf_counter()
        s = L.run(steps)
        wall = time.perf_counter() - t0
        info = {}
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(warm)
            L = learner(run_dir, segment, client.get_executor())
            L._walker_overlap = overlap  # the next segments start on the old model while it labels
            L._walker_speculate = speculate  # a quiet walker's next segment starts at once
            t0 = time.perf_counter()
            s = L.run(steps)
            wall = time.perf_counter() - t0
        info = rounds(run_dir)
    load1 = os.getloadavg()
    out = {"name": name, "wall": wall, "oracle_calls": s.oracle_calls, "labelled": s.labelled_frames,
           "force_rmse": force_rmse(L.model, test), "load_before": load0, "load_after": load1,
           "positions": [a.positions.round(6).tobytes() for a in L.model.frames_], **info}
    print(f"  {name:<10} wall {wall:7.1f} s  oracle calls {s.oracle_calls:3d}  held-out force RMSE "
          f"{out['force_rmse']:.4f} eV/Å  load {load0[0]:.2f} -> {load1[0]:.2f}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="MD steps per walker (4 walkers)")
    p.add_argument("--segment", type=int, default=50, help="steps per segment (the learner's check_every)")
    p.add_argument("--quick", action="store_true", help="100 steps, segments of 25")
    p.add_argument("--default-trigger", action="store_true",
                   help="gpal's default Trigger() (what a user who sets nothing gets) instead of 0.008 eV/Å")
    p.add_argument("--no-serial", action="store_true", help="skip the in-process reference run")
    p.add_argument("--keep", metavar="DIR", help="keep the run folders in DIR (default: a temporary folder)")
    p.add_argument("--only-two", action="store_true", help="only the 2-worker run (a quick look at its log)")
    p.add_argument("--no-overlap", action="store_true",
                   help="skip the 2-worker run whose walkers keep running on the old model while it labels")
    args = p.parse_args(argv)
    steps, segment = (100, 25) if args.quick else (args.steps, args.segment)
    if args.default_trigger:
        TRIGGER.clear()
    print(f"4 walkers x {steps} MD steps, segments of {segment}; EMT Cu 32 atoms; "
          f"cores {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    test = held_out()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        if args.only_two:
            run_one("2 workers", tmp, steps, segment, test, n_workers=2)
            return
        if not args.no_serial:
            res["serial"] = run_one("serial", tmp, steps, segment, test)
        res["1"] = run_one("1 worker", tmp, steps, segment, test, n_workers=1)
        res["2"] = run_one("2 workers", tmp, steps, segment, test, n_workers=2)
        if not args.no_overlap:
            res["2o"] = run_one("2 overlap", tmp, steps, segment, test, n_workers=2, overlap=True)
    one, two = res["1"], res["2"]
    print()
    print(f"2 workers / 1 worker wall time : {two['wall'] / one['wall']:.3f}  (target <= 0.65)")
    print(f"oracle calls 2 workers / 1     : {two['oracle_calls']} / {one['oracle_calls']}; held-out "
          f"force RMSE {two['force_rmse']:.4f} / {one['force_rmse']:.4f} eV/Å; same labelled frames: "
          f"{two['positions'] == one['positions']}")
    if "serial" in res:
        s = res["serial"]
        print(f"serial (in-process) reference  : wall {s['wall']:.1f} s, oracle calls {s['oracle_calls']}, "
              f"force RMSE {s['force_rmse']:.4f} eV/Å")
    if "2o" in res:
        o = res["2o"]
        print(f"2 workers, walkers on the old model while labels are computed: wall {o['wall']:.1f} s "
              f"({o['wall'] / two['wall']:.3f} x waiting), oracle calls {o['oracle_calls']}, force RMSE "
              f"{o['force_rmse']:.4f} eV/Å, {o['rounds']} rounds")
    print(f"critical path 2 workers / 1    : {two['critical_path']:.1f} / {one['critical_path']:.1f} s = "
          f"{two['critical_path'] / one['critical_path']:.3f} (per round the busiest worker's segment "
          "run times plus the learner's time)")
    print(f"MD time per walker step in a segment, 2 workers / 1: {two['ms_per_step']:.1f} / "
          f"{one['ms_per_step']:.1f} ms (the same work: a ratio near 2 means the two workers shared "
          "the cores the one worker had, i.e. the machine had no spare core)")
    for r in (one, two):
        share = r["learner_wall"] / max(r["md_wall"] + r["learner_wall"], 1e-9)
        print(f"{r['name']:<10}: {r['rounds']} rounds, worker pids {r['pids']}, mean segment wait "
              f"{r['wait_mean'] * 1e3:.0f} ms; learner's share of the rounds (walkers idle) {share:.1%}")
    print(f"load average (1, 5, 15 min) at the end: {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":  # dask's worker processes re-import this file
    main()
