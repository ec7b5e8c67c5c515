# %% [markdown]
# # Molecular dynamics on a gpal model, watching its uncertainty

# %%
import numpy as np
from ase import units
from ase.io import Trajectory, read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

import gpal
from _common import FAST, emt_frames, small_soap

model = gpal.SparseGP(small_soap(), n_sparse=60 if FAST else 200).fit(emt_frames(8 if FAST else 30, seed=1))

atoms = emt_frames(1, seed=3)[0]
atoms.calc = gpal.GPCalculator(model, record_std=True)  # std every step, kept in atoms.info
thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
dyn = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02 / units.fs, fixcm=False,
               rng=np.random.default_rng(1))

# %%
with Trajectory("example_md.traj", "w", atoms) as traj:
    dyn.attach(traj.write, interval=10)
    for step in range(0, 50 if FAST else 500, 10):
        dyn.run(10)
        std = atoms.calc.results["energies_std"]
        print(f"step {step + 10:4d}  T {atoms.get_temperature():6.0f} K  "
              f"max local-energy std {1000 * std.max():6.2f} meV")

# %%
frames = read("example_md.traj", ":")          # the stds travel with the trajectory
print("frames:", len(frames), "max std in last frame (meV):", 1000 * max(frames[-1].info["energies_std"]))
