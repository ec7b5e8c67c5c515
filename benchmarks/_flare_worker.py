"""A FLARE sparse-GP calculator served over stdin/stdout, for ``bench_md.py --flare-python``.

FLARE (mir-group/flare) is built into its own Python environment, so ``bench_md`` runs this
script with that environment's interpreter and talks to it one JSON line per request:

* start-up: ``argv`` = training frames (extxyz with energies, forces and stress), number
  of sparse environments, cutoff (Å), n_max, l_max, kernel power. The worker fits a FLARE
  ``SGP_Wrapper`` (B2 descriptor, Chebyshev radial basis, quadratic cutoff; a
  ``NormalizedDotProduct`` kernel; energy, force and stress labels; sparse environments
  drawn at random, the same number from every frame) and prints one line
  ``{"ready": ..., "fit_s": ...}``.
* then each line ``{"numbers", "positions", "cell", "pbc"}`` is answered by
  ``{"energy", "forces", "stress", "cpu"}``: FLARE's own ASE calculator
  (``SGP_Calculator``, local-energy uncertainties, FLARE's default ``variance_type``),
  and the worker's CPU seconds spent on that request.

The hyperparameters are FLARE's defaults (no optimisation): the cost of a prediction does
not depend on their values. Threads: the caller sets ``OMP_NUM_THREADS`` for this process.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(argv) -> None:
    path, n_sparse, cutoff, n_max, l_max, power = argv
    n_sparse, cutoff, n_max, l_max, power = int(n_sparse), float(cutoff), int(n_max), int(l_max), int(power)
    from ase import Atoms
    from ase.io import read
    from flare.bffs.sgp import SGP_Wrapper
    from flare.bffs.sgp._C_flare import B2, NormalizedDotProduct
    from flare.bffs.sgp.calculator import SGP_Calculator

    t0 = time.perf_counter()
    train = read(path, ":")
    species = sorted({int(z) for a in train for z in a.numbers})
    species_map = {z: k for k, z in enumerate(species)}
    b2 = B2("chebyshev", "quadratic", [0.0, cutoff], [], [len(species), n_max, l_max])
    kernel = NormalizedDotProduct(2.0, power)
    # FLARE's SparseGP keeps raw pointers to the kernel and descriptor: they must outlive it
    keep = (kernel, b2)
    gp = SGP_Wrapper([kernel], [b2], cutoff, 0.001 * len(train[0]), 0.05, 0.0006, species_map,
                     variance_type="local", energy_training=True, force_training=True,
                     stress_training=True)
    rng = np.random.default_rng(0)
    per_frame = np.full(len(train), n_sparse // len(train))
    per_frame[: n_sparse - per_frame.sum()] += 1
    for a, k in zip(train, per_frame):
        s = a.get_stress()
        envs = sorted(rng.choice(len(a), min(int(k), len(a)), replace=False).tolist())
        gp.update_db(a, a.get_forces(), custom_range=envs, energy=a.get_potential_energy(),
                     stress=-np.array([s[0], s[5], s[4], s[1], s[3], s[2]]),  # FLARE's order, sign
                     mode="specific", update_qr=False)
    gp.sparse_gp.update_matrices_QR()
    calc = SGP_Calculator(gp)
    print(json.dumps({"ready": True, "n_sparse": int(gp.sparse_gp.n_sparse), "n_frames": len(train),
                      "fit_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        c0 = time.process_time()
        atoms = Atoms(numbers=req["numbers"], positions=req["positions"], cell=req["cell"], pbc=req["pbc"])
        atoms.calc = calc
        calc.reset()
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()
        stress = atoms.get_stress()
        out = {"energy": energy, "forces": forces.tolist(), "stress": stress.tolist(),
               "cpu": time.process_time() - c0}
        print(json.dumps(out), flush=True)
    del keep


if __name__ == "__main__":
    main(sys.argv[1:])
