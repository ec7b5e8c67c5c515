# %% [markdown]
# # On-the-fly active learning of copper with EMT as the oracle
# MD runs on the GP; only frames where it is uncertain go to the oracle.

# %%
from ase.build import bulk
from ase.calculators.emt import EMT

from gpal import ActiveLearner, MDSettings, SparseGP, Trigger
from _common import FAST, emt_frames, small_soap

learner = ActiveLearner(
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2 if FAST else 3),
    EMT(),                                   # any ASE calculator: DFT, xTB, ...
    SparseGP(small_soap(), n_sparse=50 if FAST else 100),
    run_dir="cu_active_run",
    md=MDSettings(temperature=(300, 1200), timestep=1.0),
    trigger=Trigger(quantity="energies_std", threshold=0.05),
    validation=emt_frames(3 if FAST else 10, temperature=1200, size=(2, 2, 2) if FAST else (3, 3, 3), seed=7),
)
summary = learner.run(100 if FAST else 3000)
print(summary)
print("files:", sorted(p.name for p in learner.run_dir.iterdir()))
