"""Does gpal's active-learning loop, with its DEFAULTS, beat the honest baseline?

For each system the benchmark runs ``ActiveLearner`` the way a user would (structure,
oracle, run folder and the MD protocol: nothing else set) and compares the final model
with the honest baseline of DESIGN.md §7: a model with the same settings fitted to the
SAME NUMBER of frames taken evenly from an oracle MD trajectory run with the SAME
protocol (temperature ramp, time step, number of steps; another seed). The number of
frames is every oracle call the run made, as counted by a wrapper around the oracle
(bootstrap, validation and calibration calls included). The baseline additionally needed
the whole oracle MD trajectory (one oracle call per MD step), which is not counted.

Printed per system (targets in brackets):

* held-out force RMSE and energy RMSE per atom of both models on an independent oracle
  MD trajectory (same protocol, third seed), and AL / baseline [force <= 0.8, energy <= 1];
* labels per walker in any 100-step window of MD, from the run's ``log.jsonl`` (bootstrap
  labels excluded, reported apart) [max <= 3];
* force z-scores z = (F_pred - F_ref) / forces_std per component on the independent
  trajectory, raw and ``calibrated=True``: mean z^2 [0.8-1.25] and the fraction with
  |z| <= 1.645 (90 % interval) [0.87-0.93]; and the coverage of the 90 % interval gpal
  gives, the split-conformal quantile the learner stores times the calibrated std;
* oracle calls reported by the run (``summary.json``: ``oracle_calls`` and any breakdown
  fields) against oracle calls made (distinct configurations the wrapper computed);
* force RMSE of both models on each sixth of the test trajectory (the ramp in time
  order) and the run's MD labels per sixth of its steps: where along the ramp the loop
  spent its labels and where it wins or loses;
* wall time of the run and its MD / oracle / update split.

Systems (``--system``): ``metal-defect`` (EMT Pt with a vacancy), ``alloy`` (random EMT
Cu-Ni), ``molecule`` (ethanol with GFN2-xTB; needs ``pip install tblite``) and ``cu``
(pure EMT Cu, the development system, quick); and seven held out, run only to check the
defaults on systems they were not developed on: ``interstitial`` (EMT Ni with a relaxed
self-interstitial), ``alloy-agpd`` (random EMT Ag-Pd), ``butane`` (trans-butane with
GFN2-xTB), ``cf4`` (CF4 with GFN2-xTB, 1 fs steps), ``au-surface`` (an EMT Au(111) slab
with an adatom), ``methanol`` (GFN2-xTB) and ``water`` (a periodic box of 12 water
molecules with GFN1-xTB, 330 K); and two added after them to check a rule about cells of
100 atoms or more, ``cu-divacancy`` (EMT Cu with two neighbouring vacancies) and
``au100-slab`` (a 112-atom EMT Au(100) slab); and two of kinds not covered before,
``alloy-cunipd`` (a random EMT Cu-Ni-Pd alloy, three species) and ``pyridine`` (an
aromatic ring with GFN2-xTB). Their protocols are in ``SYSTEMS`` below.
Oracle trajectories are cached as extxyz under ``--cache-dir`` (gitignored), keyed by
everything that changes them, so reruns only pay for the learner.

Measured on the old loop (branch bench at 1f9e6fb, defaults, seed 0), 2026-11-29, on a
2-core machine shared with other jobs (load average 6-10, so wall times are inflated),
AL runs stopped after 15 min (``--max-run-minutes``) and evaluated from their checkpoint:

| system | F RMSE AL / base (eV/Å) | ratio | E RMSE AL / base (meV/atom) | labels/100 steps | z² raw (cov90) | oracle calls rep. / counted | wall |
|---|---|---|---|---|---|---|---|
| metal-defect | 0.0034 / 0.0055 | 0.62 | 0.033 / 0.028 (1.16) | 3 | 0.17 (0.999) | 17 / 17 | 213 s |
| alloy | 0.0643 / 0.0252 | 2.55 | 0.998 / 0.243 (4.10) | 40 | 6.85 (0.486) | 44 / 44 | 900 s, stopped at step 39 of 5000 |
| molecule | 0.740 / 0.0486 | 15.2 | 21.8 / 0.730 (29.9) | 100 | 1.58 (0.826) | 162 / 162 | 901 s, stopped at step 157 of 4000 |
| cu (2000 steps) | 0.0037 / 0.0040 | 0.93 | 0.031 / 0.029 (1.06) | 13 | 0.29 (0.996) | 20 / 20 | 164 s |

No run stored a calibration (no validation frames by default), so calibrated = raw.
The default trigger (local-energy std > 0.05 eV, every step) labelled every MD step on
the alloy and the molecule (DESIGN.md §7); the alloy and molecule AL models therefore saw
only the start of the ramp, while the test frames span all of it.

The current figures (three learner seeds per system) are in README.md, "Active learning
with its defaults, against the honest baseline".

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_loop.py                      (all three)
      python benchmarks/bench_loop.py --system cu --quick                   (smoke run)
      python benchmarks/bench_loop.py --system alloy --tuned --out alloy.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.data import atomic_numbers  # noqa: E402
from ase.calculators.calculator import Calculator, all_changes  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import Stationary, thermalize_momenta  # noqa: E402

import gpal  # noqa: E402
from gpal import ActiveLearner, MDSettings  # noqa: E402

HERE = Path(__file__).resolve().parent
_VERSION = 1  # bump when the trajectory recipe changes, so stale caches are not reused
FRICTION = 0.02  # 1/fs: MDSettings' default, used by the oracle trajectories too
Z90 = 1.6448536269514722  # two-sided 90 % Gaussian interval

# --------------------------------------------------------------------------- tuned mode
# Settings for the --tuned run, passed on top of the defaults. Easy to edit:
#   "learner": ActiveLearner keyword arguments (n_bootstrap, sparse_per_label, ...)
#   "trigger": gpal.Trigger keyword arguments (quantity, threshold, every, ...)
#   "md":      extra MDSettings keyword arguments (friction, ...)
#   "model":   gpal.SparseGP keyword arguments (n_sparse, force_noise, ...)
# TUNED applies to every system; TUNED_BY_SYSTEM[name] is merged on top of it.
# Tuned: two bootstrap frames instead of four (rattled-lattice frames are the least
# informative part of a small budget); on the molecule's 0.5 fs steps a check every 10 steps.
TUNED: dict = {"learner": {"n_bootstrap": 2}}
TUNED_BY_SYSTEM: dict = {"molecule": {"trigger": {"every": 10}}}


# --------------------------------------------------------------------------- systems
def pt_vacancy(rng):
    """Pt fcc 3x3x3 cubic (108 sites, a = 3.92 Å) with one atom removed: 107 atoms."""
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True).repeat(3)
    del atoms[int(rng.integers(len(atoms)))]
    return atoms


def random_fcc_alloy(rng, host: str, guest: str, a_host: float, a_guest: float):
    """Random 50/50 fcc 3x3x3 cubic alloy, 108 atoms, at the Vegard lattice constant."""
    atoms = bulk(host, "fcc", a=0.5 * (a_host + a_guest), cubic=True).repeat(3)
    numbers = np.full(len(atoms), atomic_numbers[host])
    numbers[rng.choice(len(atoms), size=len(atoms) // 2, replace=False)] = atomic_numbers[guest]
    atoms.numbers = numbers
    return atoms


def cuni_alloy(rng):
    """Random Cu50Ni50 fcc 3x3x3 cubic, 108 atoms, Vegard a = (3.61 + 3.52) / 2 Å."""
    return random_fcc_alloy(rng, "Cu", "Ni", 3.61, 3.52)


def cu_bulk(rng):
    """Pure Cu fcc 3x3x3 cubic, 108 atoms, a = 3.61 Å."""
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)


def ethanol(rng):
    """Ethanol (ase.build.molecule('CH3CH2OH'), 9 atoms), no cell."""
    return molecule("CH3CH2OH")


def ni_interstitial(rng):
    """Ni fcc 3x3x3 cubic (108 atoms, a = 3.52 Å) with one extra Ni put in an octahedral
    hole and relaxed with EMT (BFGS, fmax 0.01 eV/Å; the user's preparation, not counted):
    109 atoms (held out: not a system the defaults were developed on)."""
    from ase.optimize import BFGS

    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat(3)
    atoms.append("Ni")
    atoms.positions[-1] = 3.52 * np.array([1.5, 1.0, 1.0]) + rng.normal(0.0, 0.05, 3)
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    atoms.calc = None
    return atoms


def cu_divacancy(rng):
    """Cu fcc 3x3x3 cubic (108 sites, a = 3.61 Å) without two nearest-neighbour atoms: 106
    atoms (held out: added after the defaults, to check them on a defect they were not
    developed on)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    i = int(rng.integers(len(atoms)))
    d = atoms.get_distances(i, range(len(atoms)), mic=True)
    d[i] = np.inf
    del atoms[[i, int(np.argmin(d))]]
    return atoms


def au100_slab(rng):
    """Au(100) slab, ase.build.fcc100('Au', size=(4, 4, 7), vacuum=8, periodic=True): 112
    atoms, both surfaces free (held out: added after the defaults)."""
    from ase.build import fcc100

    return fcc100("Au", size=(4, 4, 7), vacuum=8.0, periodic=True)


def agpd_alloy(rng):
    """Random Ag50Pd50 fcc 3x3x3 cubic, 108 atoms, Vegard a = (4.09 + 3.89) / 2 Å (held out)."""
    return random_fcc_alloy(rng, "Ag", "Pd", 4.09, 3.89)


def butane(rng):
    """trans-Butane (ase.build.molecule('trans-butane'), 14 atoms), no cell (held out)."""
    return molecule("trans-butane")


def cunipd_alloy(rng):
    """Random Cu36Ni36Pd36 fcc 3x3x3 cubic, 108 atoms, three species, Vegard a = (3.61 +
    3.52 + 3.89) / 3 Å (held out: added after the defaults, a first alloy of three species)."""
    atoms = bulk("Cu", "fcc", a=(3.61 + 3.52 + 3.89) / 3, cubic=True).repeat(3)
    numbers = np.repeat([atomic_numbers[s] for s in ("Cu", "Ni", "Pd")], len(atoms) // 3)
    atoms.numbers = rng.permutation(numbers)
    return atoms


def pyridine(rng):
    """Pyridine (ase.build.molecule('C5H5N'), 11 atoms), no cell (held out: added after the
    defaults, a first aromatic ring and three species)."""
    return molecule("C5H5N")


def cf4(rng):
    """Tetrafluoromethane (ase.build.molecule('CF4'), 5 atoms), no cell (held out)."""
    return molecule("CF4")


def au_adatom_surface(rng):
    """Au(111) slab (ase.build.fcc111('Au', size=(3, 3, 4), vacuum=8, periodic=True): 36
    atoms, 3x3 surface cell, 4 layers, 16 Å of vacuum, periodic in all three directions)
    with one Au adatom put 2.3 Å above an fcc hollow of the top layer, the slab and adatom
    relaxed with EMT (BFGS, fmax 0.01 eV/Å; the user's preparation, not counted): 37 atoms
    (held out)."""
    from ase.build import add_adsorbate, fcc111
    from ase.optimize import BFGS

    atoms = fcc111("Au", size=(3, 3, 4), vacuum=8.0, periodic=True)
    add_adsorbate(atoms, "Au", 2.3, "fcc")
    atoms.positions[-1, :2] += rng.normal(0.0, 0.05, 2)
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    atoms.calc = None
    atoms.info.pop("adsorbate_info", None)  # a dict extxyz cannot write (warns on every frame)
    return atoms


def methanol(rng):
    """Methanol (ase.build.molecule('CH3OH'), 6 atoms), no cell (held out)."""
    return molecule("CH3OH")


def water_box(rng):
    """12 water molecules packed at random in a cubic periodic box at 1.00 g/cm³ (L =
    7.16 Å, O-O > 2.5 Å and other pairs > 1.7 Å apart), relaxed with GFN1-xTB (FIRE,
    fmax 0.1 eV/Å, at most 200 steps; the user's preparation, not counted): 36 atoms, a
    periodic molecular liquid (held out)."""
    from ase import Atoms
    from ase.geometry import get_distances
    from ase.optimize import FIRE

    n = 12
    side = (n * 18.015 * 1.66054) ** (1 / 3)
    w = molecule("H2O")
    w.positions -= w.get_center_of_mass()
    atoms = Atoms(cell=[side] * 3, pbc=True)
    while len(atoms) < 3 * n:
        m = w.copy()
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.translate(rng.uniform(0, side, 3))
        if len(atoms):
            d = get_distances(m.positions, atoms.positions, cell=atoms.cell, pbc=True)[1]
            oo = np.outer(m.numbers == 8, atoms.numbers == 8)
            if np.any(d[oo] < 2.5) or np.any(d[~oo] < 1.7):
                continue
        atoms += m
    atoms.wrap()
    atoms.calc = xtb_gfn1()
    FIRE(atoms, logfile=None).run(fmax=0.1, steps=200)
    atoms.calc = None
    return atoms


def xtb_gfn1():
    from tblite.ase import TBLite

    return TBLite(method="GFN1-xTB", verbosity=0)


def emt():
    return EMT()


def xtb():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


SYSTEMS = {
    "metal-defect": dict(
        build=pt_vacancy, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1400.0), timestep=2.0, steps=5000, quick_steps=500,
        stride=2,  # oracle trajectory A keeps every 2nd step as baseline candidates
    ),
    "alloy": dict(
        build=cuni_alloy, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1200.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    "molecule": dict(
        build=ethanol, oracle=xtb, oracle_name="GFN2-xTB (tblite)",
        temperature=(300.0, 800.0), timestep=0.5, steps=4000, quick_steps=400, stride=1,
    ),
    # held out: systems the defaults were not developed on (same kinds of protocol)
    "interstitial": dict(
        build=ni_interstitial, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1400.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    "alloy-agpd": dict(
        build=agpd_alloy, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1000.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    "cf4": dict(  # no hydrogen: 1 fs steps
        build=cf4, oracle=xtb, oracle_name="GFN2-xTB (tblite)",
        temperature=(300.0, 800.0), timestep=1.0, steps=4000, quick_steps=400, stride=1,
    ),
    "butane": dict(
        build=butane, oracle=xtb, oracle_name="GFN2-xTB (tblite)",
        temperature=(300.0, 700.0), timestep=0.5, steps=4000, quick_steps=400, stride=1,
    ),
    "au-surface": dict(
        build=au_adatom_surface, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 900.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    "methanol": dict(
        build=methanol, oracle=xtb, oracle_name="GFN2-xTB (tblite)",
        temperature=(300.0, 800.0), timestep=0.5, steps=4000, quick_steps=400, stride=1,
    ),
    "water": dict(
        build=water_box, oracle=xtb_gfn1, oracle_name="GFN1-xTB (tblite)",
        temperature=(330.0, 330.0), timestep=0.5, steps=2000, quick_steps=300, stride=1,
    ),
    # held out, added later: one-species cells of >= 100 atoms with defects
    "cu-divacancy": dict(
        build=cu_divacancy, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1100.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    "au100-slab": dict(
        build=au100_slab, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 900.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    # held out, added later: kinds not covered above (three species; an aromatic ring)
    "alloy-cunipd": dict(
        build=cunipd_alloy, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1100.0), timestep=2.0, steps=5000, quick_steps=500, stride=2,
    ),
    "pyridine": dict(
        build=pyridine, oracle=xtb, oracle_name="GFN2-xTB (tblite)",
        temperature=(300.0, 800.0), timestep=0.5, steps=4000, quick_steps=400, stride=1,
    ),
    "cu": dict(
        build=cu_bulk, oracle=emt, oracle_name="EMT",
        temperature=(300.0, 1200.0), timestep=2.0, steps=2000, quick_steps=400, stride=2,
    ),
}
N_TEST = 48  # frames of the independent trajectory B, evenly over the whole ramp


# --------------------------------------------------------------------------- oracle wrapper
def config_key(atoms) -> str:
    """A hash of one configuration (numbers, positions, cell, pbc)."""
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.positions, float), 8).tobytes())
    h.update(np.round(np.asarray(atoms.cell.array, float), 8).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()


class CountingCalculator(Calculator):
    """Wraps a real ASE calculator and counts what it computes.

    ``n_calculate`` counts ``calculate`` calls; ``n_distinct`` the distinct configurations
    among them (the oracle calls the run actually made). Energy, forces and (for 3D
    periodic cells) stress are computed together, so asking for stress after energy does
    not cost a second call.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.n_calculate = 0
        self.configs: set[str] = set()
        self.wall_time = 0.0

    @property
    def n_distinct(self) -> int:
        return len(self.configs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.inner
        self.n_calculate += 1
        self.configs.add(config_key(a))
        t0 = time.perf_counter()
        energy = float(a.get_potential_energy())
        results = {"energy": energy, "free_energy": energy, "forces": np.array(a.get_forces())}
        if np.all(a.pbc) and a.cell.volume > 1e-6:
            results["stress"] = np.array(a.get_stress())
        self.wall_time += time.perf_counter() - t0
        self.results = results


# --------------------------------------------------------------------------- oracle MD
def temperature_at(T, frac):
    t0, t1 = T
    return float(t0 + (t1 - t0) * min(max(frac, 0.0), 1.0))


def labelled_copy(atoms, step) -> Atoms:
    out = Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy())
    e = float(atoms.get_potential_energy())
    res = {"energy": e, "free_energy": e, "forces": np.array(atoms.get_forces())}
    if np.all(atoms.pbc):
        res["stress"] = np.array(atoms.get_stress())
    out.calc = SinglePointCalculator(out, **res)
    out.info["md_step"] = int(step)
    return out


def oracle_md(structure, calc, *, steps, timestep, temperature, seed, keep_steps):
    """Langevin MD on the oracle with the learner's protocol; labelled frames at ``keep_steps``.

    Protocol as in gpal's learner: momenta from Maxwell-Boltzmann at the start
    temperature, centre-of-mass momentum removed, Langevin with friction 0.02/fs, and
    before MD step k (k = 0 .. steps-1) the target temperature set to
    T0 + (T1 - T0) k / (steps - 1). Frame ``s`` is the configuration after ``s`` steps.
    """
    keep = set(int(s) for s in keep_steps)
    rng = np.random.default_rng(seed)
    a = structure.copy()
    a.calc = calc
    thermalize_momenta(a, temperature_K=temperature[0], rng=rng)
    Stationary(a)
    dyn = Langevin(a, timestep * units.fs, temperature_K=temperature[0],
                   friction=FRICTION / units.fs, fixcm=False, rng=rng)
    frames = []
    for k in range(steps):
        dyn.set_temperature(temperature_K=temperature_at(temperature, k / max(steps - 1, 1)))
        dyn.run(1)
        if k + 1 in keep:
            frames.append(labelled_copy(a, k + 1))
    return frames


def cached_trajectory(name, spec, structure, *, steps, seed, keep_steps, cache_dir, role):
    params = dict(version=_VERSION, system=name, role=role, steps=int(steps), seed=int(seed),
                  timestep=spec["timestep"], temperature=list(spec["temperature"]),
                  friction=FRICTION, oracle=spec["oracle_name"],
                  keep=[int(s) for s in keep_steps],
                  structure=config_key(structure))
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"loop_{name}_{role}_{steps}_{digest}.extxyz"
    if path.exists():
        frames = read(path, index=":")
        print(f"  {role}: {len(frames)} cached frames <- {path}")
        return frames, 0.0
    t0 = time.perf_counter()
    frames = oracle_md(structure, spec["oracle"](), steps=steps, timestep=spec["timestep"],
                       temperature=spec["temperature"], seed=seed, keep_steps=keep_steps)
    dt = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.extxyz")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    frames = read(path, index=":")  # exactly what a rerun will see
    print(f"  {role}: {steps} oracle MD steps in {dt:.0f} s, {len(frames)} frames kept -> {path}")
    return frames, dt


def evenly(frames, n, phase=0.5):
    """``n`` frames evenly spaced over ``frames`` (at ``phase`` of each of n equal bins)."""
    L = len(frames)
    if n >= L:
        return list(frames)
    idx = [int((k + phase) * L / n) for k in range(n)]
    return [frames[i] for i in idx]


PHASES = (0.5, 0.25, 0.75)  # the baseline's frames at three offsets within their bins


def baseline_spread(learner, model, traj_a, traj_b, n):
    """Force and energy RMSE of the baseline at ``n`` frames for each offset in PHASES."""
    out = []
    for ph in PHASES:
        base, _ = fit_like(learner, evenly(traj_a, n, ph), model=model)
        m = evaluate(base, traj_b)
        out.append({"phase": ph, "force_rmse": m["force_rmse"], "energy_rmse_per_atom": m["energy_rmse_per_atom"]})
    return out


def frames_to_match(learner, model, traj_a, traj_b, target, n0, n_max):
    """Fewest evenly spaced oracle-MD frames (searched on a 1.25x ladder from ``n0``) whose
    model reaches force RMSE ``target`` on the test frames; None if ``n_max`` does not."""
    n, last = max(int(n0), 1), None
    while n <= n_max:
        base, _ = fit_like(learner, evenly(traj_a, n), model=model)
        rmse = evaluate(base, traj_b)["force_rmse"]
        print(f"    baseline with {n} frames: force RMSE {rmse:.4f} eV/Å", flush=True)
        if rmse <= target:
            return {"frames": n, "force_rmse": rmse}
        last = n
        n = max(n + 1, int(round(1.25 * n)))
    return {"frames": None, "searched_up_to": last}


# --------------------------------------------------------------------------- baseline fit
def fit_like(learner, frames, *, match_sparse=True, model=None):
    """A model with the learner's final settings fitted to ``frames``, optimised as it does.

    Settings: ``learner.model.get_params()`` (the descriptor the learner's model actually
    used when its own was left to the default). With ``match_sparse`` the number of sparse
    environments is the final model's (the learner grows its sparse set as it labels), so
    both models have the same capacity. Hyperparameters: as ``ActiveLearner._optimize``,
    ``optimize_hyperparameters(optimize_noise=learner.optimize_noise)`` if the learner
    optimises at all (``optimize_every``). ``model`` replaces ``learner.model`` (e.g. the
    last checkpoint of an aborted run).
    """
    model = learner.model if model is None else model
    params = dict(model.get_params(deep=False))
    if params.get("descriptor") is None and getattr(model, "descriptor_", None) is not None:
        params["descriptor"] = model.descriptor_
    sparse = getattr(model, "sparse_X_", None)
    n_final = 0 if sparse is None else len(sparse)
    if match_sparse and n_final:
        params["n_sparse"] = int(n_final)
    base = gpal.SparseGP(**params).fit(frames)
    info = {"n_sparse_asked": params.get("n_sparse"), "n_sparse": int(len(base.sparse_X_)),
            "learner_n_sparse": int(n_final), "optimized": False}
    if getattr(learner, "optimize_every", 1.5):
        kw = {"optimize_noise": bool(getattr(learner, "optimize_noise", False))}
        try:
            base.optimize_hyperparameters(**kw)
            info["optimized"] = True
        except Exception as exc:  # as the learner: log and keep the unoptimised model
            info["optimize_error"] = f"{type(exc).__name__}: {exc}"
        info.update(kw)
    info["kernel"] = repr(getattr(base, "kernel_", None))
    info["learner_kernel"] = repr(getattr(model, "kernel_", None))
    return base, info


# --------------------------------------------------------------------------- metrics
def evaluate(model, frames):
    """Force/energy errors and force z-scores (raw and calibrated) on labelled frames."""
    f_err, f_std_raw, f_std_cal, e_err, f_int, f_num = [], [], [], [], [], []
    has_cal = bool(getattr(model, "calibration_", None))  # without one, calibrated == raw
    for a in frames:
        raw = model.predict(a, return_std=True, forces_std=True, calibrated=False)
        cal = model.predict(a, return_std=True, forces_std=True, calibrated=True) if has_cal else raw
        f_err.append((raw["forces"] - a.get_forces()).ravel())
        f_std_raw.append(raw["forces_std"].ravel())
        f_std_cal.append(cal["forces_std"].ravel())
        f_num.append(np.repeat(a.numbers, 3))
        if "forces_interval90" in cal:
            f_int.append(cal["forces_interval90"].ravel())
        e_err.append((raw["energy"] - a.get_potential_energy()) / len(a))
    err = np.concatenate(f_err)
    out = {
        "force_rmse": float(np.sqrt(np.mean(err**2))),
        "force_mae": float(np.mean(np.abs(err))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean(np.square(e_err)))),
        # the RMSE split into the mean error (an offset of every frame of the test
        # trajectory's composition, which no force, relative energy or MD sees) and the
        # spread about it (what relative energies see): rmse² = mean² + std²
        "energy_mean_error_per_atom": float(np.mean(e_err)),
        "energy_error_std_per_atom": float(np.std(e_err)),
        "reference_force_rms": float(np.sqrt(np.mean(np.concatenate(
            [a.get_forces().ravel() for a in frames]) ** 2))),
        "calibration_stored": dict(getattr(model, "calibration_", {}) or {}),
    }
    for tag, stds in (("raw", f_std_raw), ("calibrated", f_std_cal)):
        z = err / np.maximum(np.concatenate(stds), 1e-12)
        out[f"z2_mean_{tag}"] = float(np.mean(z**2))
        out[f"coverage90_{tag}"] = float(np.mean(np.abs(z) <= Z90))
        num = np.concatenate(f_num)  # per species: a shared calibration is honest on average only
        out[f"z2_by_species_{tag}"] = {str(s): float(np.mean(z[num == s] ** 2)) for s in np.unique(num)}
        out[f"coverage90_by_species_{tag}"] = {str(s): float(np.mean(np.abs(z[num == s]) <= Z90))
                                               for s in np.unique(num)}
    # the 90 % interval gpal gives (predict(..., calibrated=True)["forces_interval90"], what
    # its conformal stopping bound uses): the split-conformal quantile of the learner's own
    # held-out errors, in calibrated stds, times the calibrated std
    out["conformal_q90"] = out["calibration_stored"].get("forces_std", {}).get("conformal_q90")
    out["coverage90_conformal"] = (float(np.mean(np.abs(err) <= np.concatenate(f_int)))
                                   if len(f_int) == len(frames) else None)
    return out


N_BLOCKS = 6  # the test trajectory's ramp cut in this many consecutive blocks


def block_force_rmse(model, frames, n_blocks=N_BLOCKS):
    """Force RMSE (eV/Å) on each of ``n_blocks`` consecutive blocks of ``frames`` (the ramp
    in time order: block k holds temperatures from the k-th n_blocks-th of the ramp)."""
    sq = [float(np.mean((model.predict(a)["forces"] - a.get_forces()) ** 2)) for a in frames]
    edges = np.linspace(0, len(frames), n_blocks + 1).astype(int)
    return [float(np.sqrt(np.mean(sq[i:j]))) for i, j in zip(edges[:-1], edges[1:])]


def label_histogram(records, steps, n_blocks=N_BLOCKS):
    """MD labels (bootstrap apart) per block of ``steps / n_blocks`` MD steps, from log.jsonl."""
    at = []
    for r in records:
        if r.get("event") == "label" and r.get("reason") != "bootstrap" and r.get("step") is not None:
            at += [int(r["step"])] * int(r.get("n", 1))
    return np.histogram(at, bins=n_blocks, range=(0, steps))[0].tolist()


def read_log(run_dir):
    path = Path(run_dir) / "log.jsonl"
    recs = []
    if path.exists():
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        recs.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    return recs


def label_windows(records, window=100):
    """Max labels per walker in any ``window``-step window (bootstrap labels apart).

    A label event's ``walker`` may be an int, a list (one entry per labelled frame) or
    missing (walker 0); ``n`` is the number of frames (default 1).
    """
    per_walker: dict[int, list[int]] = {}
    n_boot = n_md = 0
    reasons: dict[str, int] = {}
    for r in records:
        if r.get("event") != "label":
            continue
        n = int(r.get("n", 1))
        reason = str(r.get("reason", ""))
        if reason == "bootstrap" or r.get("step") is None:
            n_boot += n
            continue
        reasons[reason] = reasons.get(reason, 0) + n
        n_md += n
        w = r.get("walker", 0)
        walkers = list(w) if isinstance(w, (list, tuple)) else [w] * n
        if len(walkers) != n:
            walkers = (walkers + [walkers[-1] if walkers else 0] * n)[:n]
        for wk in walkers:
            per_walker.setdefault(int(wk if wk is not None else 0), []).append(int(r["step"]))
    best, where = 0, None
    for wk, steps in per_walker.items():
        steps.sort()
        j = 0
        for i, s in enumerate(steps):
            while steps[j] <= s - window:
                j += 1
            if i - j + 1 > best:
                best, where = i - j + 1, (wk, steps[j], s)
    return {"max_labels_per_walker_per_100_steps": best,
            "window": None if where is None else {"walker": where[0], "first_step": where[1],
                                                  "last_step": where[2]},
            "md_labels": n_md, "bootstrap_labels": n_boot, "labels_by_reason": reasons,
            "walkers": sorted(per_walker)}


# --------------------------------------------------------------------------- one AL run
class RunTimeout(BaseException):
    """Raised by the alarm when a run exceeds --max-run-minutes (not an Exception, so the
    learner's oracle error handling does not swallow it)."""


def _alarm(signum, frame):
    raise RunTimeout()


def summary_dict(summary):
    if summary is None:
        return {}
    if is_dataclass(summary):
        return asdict(summary)
    if isinstance(summary, dict):
        return dict(summary)
    return dict(getattr(summary, "__dict__", {}))


def build_learner(structure, oracle, run_dir, spec, tuned, random_state=0):
    md_kw = dict(temperature=tuple(spec["temperature"]), timestep=spec["timestep"])
    seed = {"random_state": random_state} if random_state else {}  # 0 is the default
    if tuned is None:  # defaults: exactly what a user writes
        return ActiveLearner(structure, oracle, run_dir=run_dir, md=MDSettings(**md_kw), **seed)
    kwargs = dict(tuned.get("learner", {}))
    md_kw.update(tuned.get("md", {}))
    if tuned.get("trigger"):
        kwargs["trigger"] = gpal.Trigger(**tuned["trigger"])
    model = gpal.SparseGP(**tuned["model"]) if tuned.get("model") else None
    kwargs = {**seed, **kwargs}
    return ActiveLearner(structure, oracle, model, run_dir=run_dir, md=MDSettings(**md_kw), **kwargs)


def run_learner(name, spec, structure, steps, cache_dir, tuned, max_minutes, random_state=0):
    runs = Path(cache_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}_{'tuned' if tuned is not None else 'defaults'}_",
                                    dir=runs))
    counter = CountingCalculator(spec["oracle"]())
    learner = build_learner(structure, counter, run_dir, spec, tuned, random_state)
    aborted = False
    old = signal.signal(signal.SIGALRM, _alarm) if max_minutes else None
    if max_minutes:
        signal.alarm(int(max_minutes * 60))
    t0 = time.perf_counter()
    summary = None
    try:
        summary = learner.run(steps)
    except RunTimeout:
        aborted = True
    finally:
        if max_minutes:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    wall = time.perf_counter() - t0
    sj = run_dir / "summary.json"
    reported = json.loads(sj.read_text()) if (sj.exists() and not aborted) else summary_dict(summary)
    if aborted:  # no summary: what the learner knows so far
        times = dict(getattr(learner, "_times", {}) or {})
        oracle = getattr(learner, "oracle", None)
        reported = {"steps": getattr(learner, "step", None),
                    "oracle_calls": getattr(oracle, "n_calls", None),
                    "time_md": times.get("md"), "time_oracle": times.get("oracle"),
                    "time_update": times.get("update"), "aborted": True}
    model = learner.model
    if aborted and (run_dir / "model.npz").exists():
        # the alarm may have interrupted a model update: use the last checkpoint (written
        # atomically after every label), which is the model after the last complete update
        model = gpal.load(run_dir / "model.npz")
    return learner, model, counter, run_dir, reported, wall, aborted


# --------------------------------------------------------------------------- one system
def bench_system(name, args, tuned_modes):
    spec = SYSTEMS[name]
    steps = args.steps or (spec["quick_steps"] if args.quick else spec["steps"])
    rng = np.random.default_rng(args.seed)
    structure = spec["build"](rng)
    seed_a, seed_b = 10_000 + args.seed, 20_000 + args.seed
    print(f"\n=== {name}: {structure.get_chemical_formula()} ({len(structure)} atoms), "
          f"{spec['oracle_name']}, Langevin {spec['temperature'][0]:.0f} -> "
          f"{spec['temperature'][1]:.0f} K over {steps} steps of {spec['timestep']} fs ===")
    stride = spec["stride"]
    traj_a, t_a = cached_trajectory(name, spec, structure, steps=steps, seed=seed_a,
                                    keep_steps=range(stride, steps + 1, stride),
                                    cache_dir=args.cache_dir, role="baseline_A")
    test_steps = [int(round((k + 1) * steps / N_TEST)) for k in range(N_TEST)]
    traj_b, t_b = cached_trajectory(name, spec, structure, steps=steps, seed=seed_b,
                                    keep_steps=test_steps, cache_dir=args.cache_dir, role="test_B")
    protocol = {
        "structure": structure.get_chemical_formula(), "n_atoms": len(structure),
        "cell": structure.cell.array.round(4).tolist(), "pbc": structure.pbc.tolist(),
        "oracle": spec["oracle_name"], "temperature_K": list(spec["temperature"]),
        "timestep_fs": spec["timestep"], "friction_per_fs": FRICTION, "steps": steps,
        "seed": args.seed, "learner_seed": args.learner_seed, "seed_trajectory_A": seed_a, "seed_trajectory_B": seed_b,
        "trajectory_A_stride": stride, "trajectory_A_frames": len(traj_a),
        "test_frames": len(traj_b), "test_steps": test_steps,
    }
    results = {"protocol": protocol, "runs": {}}
    for mode, tuned in tuned_modes:
        print(f"\n--- {name}: active learning ({mode}) ---")
        learner, model, counter, run_dir, reported, wall, aborted = run_learner(
            name, spec, structure, steps, args.cache_dir, tuned, args.max_run_minutes, args.learner_seed)
        records = read_log(run_dir)
        windows = label_windows(records)
        n_made = counter.n_distinct
        print(f"  run folder {run_dir}; wall {wall:.0f} s" + ("  ABORTED (time limit)" if aborted else ""))
        t0 = time.perf_counter()
        al = evaluate(model, traj_b)
        base_frames = evenly(traj_a, n_made)
        base, fit_info = fit_like(learner, base_frames, model=model)
        base_m = evaluate(base, traj_b)
        spread = baseline_spread(learner, model, traj_a, traj_b, n_made)
        match = (frames_to_match(learner, model, traj_a, traj_b, al["force_rmse"], n_made + 1,
                                 min(4 * n_made, len(traj_a)))
                 if al["force_rmse"] < base_m["force_rmse"] and not args.quick else None)
        t_eval = time.perf_counter() - t0
        oracle_keys = {k: v for k, v in reported.items()
                       if any(s in k for s in ("oracle", "call", "bootstrap", "label", "valid"))}
        res = {
            "mode": mode, "tuned_settings": tuned, "run_dir": str(run_dir), "aborted": aborted,
            "wall_time": wall, "time_md": reported.get("time_md"),
            "time_oracle": reported.get("time_oracle"), "time_update": reported.get("time_update"),
            "time_check": reported.get("time_check"),
            "n_checks": sum(1 for e in read_log(run_dir) if e.get("event") == "check"),
            "reported": oracle_keys, "reported_oracle_calls": reported.get("oracle_calls"),
            "counted_oracle_calls": n_made, "counted_calculate_calls": counter.n_calculate,
            "counted_oracle_wall_time": counter.wall_time,
            "steps_done": reported.get("steps"), "labels": windows,
            "al": al, "baseline": base_m, "baseline_fit": fit_info,
            "baseline_frames": len(base_frames), "baseline_phases": spread,
            "force_rmse_ratio_median_phase": al["force_rmse"] / float(np.median([b["force_rmse"] for b in spread])),
            "baseline_frames_to_match": match,
            "baseline_frames_short": len(base_frames) < n_made,
            "force_rmse_ratio": al["force_rmse"] / base_m["force_rmse"],
            "block_force_rmse": {"al": block_force_rmse(model, traj_b), "baseline": block_force_rmse(base, traj_b)},
            "labels_per_block": label_histogram(records, steps),
            "energy_rmse_ratio": al["energy_rmse_per_atom"] / max(base_m["energy_rmse_per_atom"], 1e-300),
            "eval_time": t_eval, "summary": reported,
        }
        results["runs"][mode] = res
        print_system(name, protocol, res)
    return results


# --------------------------------------------------------------------------- output
def _f(x, fmt=".4f"):
    return "n/a" if x is None else format(x, fmt)


def verdict(ok):
    return "ok" if ok else "MISSED"


def print_system(name, protocol, r):
    al, b = r["al"], r["baseline"]
    lab = r["labels"]
    n = r["counted_oracle_calls"]
    print(f"\n  {name} [{r['mode']}]: results (targets in brackets)")
    print(f"    test set: {protocol['test_frames']} frames evenly over the whole ramp of an "
          f"independent oracle MD trajectory (seed {protocol['seed_trajectory_B']}); "
          f"RMS reference force {al['reference_force_rms']:.3f} eV/Å")
    print(f"    force RMSE   AL {al['force_rmse']:.4f}  baseline {b['force_rmse']:.4f} eV/Å  "
          f"AL/baseline {r['force_rmse_ratio']:.2f}  [<= 0.8: {verdict(r['force_rmse_ratio'] <= 0.8)}]")
    print(f"    energy RMSE  AL {1e3 * al['energy_rmse_per_atom']:.3f}  baseline "
          f"{1e3 * b['energy_rmse_per_atom']:.3f} meV/atom  AL/baseline {r['energy_rmse_ratio']:.2f}  "
          f"[<= 1: {verdict(r['energy_rmse_ratio'] <= 1.0)}]")
    if "energy_error_std_per_atom" in al:
        print(f"      as mean error (offset) and spread: AL {1e3 * al['energy_mean_error_per_atom']:+.3f} "
              f"and {1e3 * al['energy_error_std_per_atom']:.3f}, baseline "
              f"{1e3 * b['energy_mean_error_per_atom']:+.3f} and {1e3 * b['energy_error_std_per_atom']:.3f} "
              f"meV/atom; spread AL/baseline "
              f"{al['energy_error_std_per_atom'] / max(b['energy_error_std_per_atom'], 1e-300):.2f}")
    print(f"    baseline: {r['baseline_frames']} frames evenly from a {protocol['steps']}-step oracle MD "
          f"trajectory (seed {protocol['seed_trajectory_A']}), which itself needed "
          f"{protocol['steps']} oracle calls; {r['baseline_fit']['n_sparse']} sparse points "
          f"(AL model {r['baseline_fit']['learner_n_sparse']})"
          + ("  (fewer frames than calls: trajectory too short)" if r["baseline_frames_short"] else ""))
    sp = r.get("baseline_phases") or []
    if sp:
        print("    baseline at other offsets of its evenly spaced frames: "
              + ", ".join(f"{b['force_rmse']:.4f}" for b in sp)
              + f" eV/Å; AL / median {r['force_rmse_ratio_median_phase']:.2f}")
    bl = r.get("block_force_rmse")
    if bl:
        print("    force RMSE by sixth of the ramp (AL / baseline): "
              + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(bl["al"], bl["baseline"]))
              + f"; MD labels per sixth of the run {r['labels_per_block']}")
    m = r.get("baseline_frames_to_match")
    if m:
        print("    evenly spaced frames the baseline needs to match the AL force RMSE: "
              + (f"{m['frames']} ({m['frames'] / n:.2f}x the AL's oracle calls)" if m["frames"]
                 else f"more than {m['searched_up_to']}"))
    w = lab["window"]
    print(f"    labels per walker in any 100-step window: max {lab['max_labels_per_walker_per_100_steps']}"
          f"  [<= 3: {verdict(lab['max_labels_per_walker_per_100_steps'] <= 3)}]"
          + (f" (walker {w['walker']}, steps {w['first_step']}-{w['last_step']})" if w else "")
          + f"; MD labels {lab['md_labels']} {lab['labels_by_reason']}, bootstrap {lab['bootstrap_labels']}")
    for tag in ("raw", "calibrated"):
        z2, cov = al[f"z2_mean_{tag}"], al[f"coverage90_{tag}"]
        print(f"    force z {tag:<10}: mean z² {z2:.3g} [0.8-1.25: {verdict(0.8 <= z2 <= 1.25)}]  "
              f"|z|<=1.645 {cov:.3f} [0.87-0.93: {verdict(0.87 <= cov <= 0.93)}]")
        by = al.get(f"z2_by_species_{tag}", {})
        if len(by) > 1:
            from ase.data import chemical_symbols
            print("      by species: " + ", ".join(
                f"{chemical_symbols[int(s)]} z² {v:.3g} |z|<=1.645 {al[f'coverage90_by_species_{tag}'][s]:.3f}"
                for s, v in by.items()))
    if al.get("coverage90_conformal") is not None:
        cov = al["coverage90_conformal"]
        print(f"    conformal 90 % interval (±{al['conformal_q90']:.3g} calibrated stds): coverage {cov:.3f}"
              f" [0.87-0.93: {verdict(0.87 <= cov <= 0.93)}]")
    if not al["calibration_stored"]:
        print("      (the AL model stores no calibration: calibrated = raw)")
    print(f"    oracle calls reported {r['reported_oracle_calls']}  counted {n} distinct configurations "
          f"({r['counted_calculate_calls']} calculate calls)"
          + ("" if r["reported_oracle_calls"] == n else "  <- MISMATCH"))
    print(f"      reported fields: {r['reported']}")
    parts = [r.get(k) for k in ("time_md", "time_oracle", "time_update")]
    other = r["wall_time"] - sum(parts) if all(x is not None for x in parts) else None
    print(f"    wall time {r['wall_time']:.0f} s (MD {_f(r['time_md'], '.0f')}, oracle "
          f"{_f(r['time_oracle'], '.0f')}, updates {_f(r['time_update'], '.0f')}, rest "
          f"{_f(other, '.0f')} s; oracle wall inside the wrapper {r['counted_oracle_wall_time']:.1f} s)"
          + (f"  ABORTED at the time limit after {r['steps_done']} of {protocol['steps']} steps"
             if r["aborted"] else ""))
    if r.get("time_check") is not None and r.get("n_checks") and r.get("steps_done") and r.get("time_md"):
        # the learner's MD time includes its checks
        step = (r["time_md"] - r["time_check"]) / r["steps_done"]
        check = r["time_check"] / r["n_checks"]
        print(f"    uncertainty checks: {r['n_checks']} in {r['time_check']:.1f} s, {1e3 * check:.0f} ms each "
              f"= {check / step:.0f} MD steps of the model ({1e3 * step:.1f} ms per step)")


def print_summary(all_results):
    rows = []
    for name, res in all_results.items():
        for mode, r in res["runs"].items():
            rows.append((name, mode, r))
    if not rows:
        return
    print("\nsummary (force RMSE eV/Å, energy RMSE meV/atom, on the independent trajectory)")
    head = (f"{'system':<13}{'mode':<9}{'F AL':>8}{'F base':>8}{'ratio':>7}{'E AL':>7}{'E base':>7}"
            f"{'ratio':>7}{'lab/100':>8}{'z2 raw':>8}{'cov raw':>8}{'z2 cal':>8}{'cov cal':>8}"
            f"{'cov conf':>9}{'calls rep':>10}{'counted':>8}{'wall s':>8}")
    print(head)
    for name, mode, r in rows:
        al, b = r["al"], r["baseline"]
        print(f"{name:<13}{mode:<9}{al['force_rmse']:8.4f}{b['force_rmse']:8.4f}{r['force_rmse_ratio']:7.2f}"
              f"{1e3 * al['energy_rmse_per_atom']:7.3f}{1e3 * b['energy_rmse_per_atom']:7.3f}"
              f"{r['energy_rmse_ratio']:7.2f}{r['labels']['max_labels_per_walker_per_100_steps']:8d}"
              f"{al['z2_mean_raw']:8.3g}{al['coverage90_raw']:8.3f}{al['z2_mean_calibrated']:8.3g}"
              f"{al['coverage90_calibrated']:8.3f}{_f(al.get('coverage90_conformal'), '9.3f'):>9}"
              f"{str(r['reported_oracle_calls']):>10}"
              f"{r['counted_oracle_calls']:8d}{r['wall_time']:8.0f}"
              + ("  aborted" if r["aborted"] else ""))
    print("targets: F ratio <= 0.8, E ratio <= 1, labels/100 steps <= 3, z2 0.8-1.25, coverage 0.87-0.93;"
          " the baseline also needed the whole oracle MD trajectory")


def _json_default(obj):
    from gpal.io import json_default

    try:
        return json_default(obj)
    except TypeError:  # anything else is recorded by its repr
        return repr(obj)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", nargs="+", default=["metal-defect", "alloy", "molecule"],
                   choices=sorted(SYSTEMS))
    p.add_argument("--steps", type=int, default=None, help="MD steps (default: the system's)")
    p.add_argument("--tuned", action="store_true",
                   help="also run with the settings in TUNED / TUNED_BY_SYSTEM (top of this file)")
    p.add_argument("--seed", type=int, default=0,
                   help="alloy decoration / vacancy site and trajectory seeds (A = 10000+S, B = 20000+S)")
    p.add_argument("--learner-seed", type=int, default=0,
                   help="the learner's random_state (bootstrap choice, MD noise); the system and "
                        "trajectories stay those of --seed (the README's seeds 0 / 1 / 2)")
    p.add_argument("--cache-dir", default=str(HERE / ".cache"))
    p.add_argument("--out", default=None, help="JSON results (default <cache-dir>/bench_loop_results.json)")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run (~1 min per system)")
    p.add_argument("--max-run-minutes", type=float, default=15.0,
                   help="stop an AL run after this long and evaluate what it has (0: no limit)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=None,
                   help="run the defaults with these ActiveLearner keywords changed instead "
                        "(values read as JSON, else as strings), e.g. stored_frames=projected")
    p.add_argument("--summarize", nargs="+", metavar="JSON", default=None,
                   help="print the tables of earlier --out files (merged) and exit; runs nothing")
    args = p.parse_args(argv)
    if args.summarize:
        merged = {}
        for path in args.summarize:
            merged.update(json.loads(Path(path).read_text())["results"])
        for name, res in merged.items():
            for r in res["runs"].values():
                print_system(name, res["protocol"], r)
        print_summary(merged)
        return
    out = Path(args.out) if args.out else Path(args.cache_dir) / "bench_loop_results.json"
    all_results = {}
    for name in args.system:
        if SYSTEMS[name]["oracle"] is xtb:
            try:
                import tblite.ase  # noqa: F401
            except ImportError:
                print(f"\n{name}: tblite is not installed (pip install tblite): skipped")
                continue
        modes = [("defaults", None)]
        if args.set:
            extra = {}
            for item in args.set:
                key, _, value = item.partition("=")
                try:
                    extra[key] = json.loads(value)
                except json.JSONDecodeError:
                    extra[key] = value
            modes = [("defaults+" + ",".join(args.set), {"learner": extra})]
        if args.tuned:
            tuned = {k: dict(v) for k, v in TUNED.items()}
            for k, v in TUNED_BY_SYSTEM.get(name, {}).items():
                tuned.setdefault(k, {}).update(v)
            modes.append(("tuned", tuned))
        all_results[name] = bench_system(name, args, modes)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"argv": sys.argv[1:], "gpal": getattr(gpal, "__version__", "?"),
                                   "results": all_results}, indent=1, default=_json_default))
    print_summary(all_results)
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
