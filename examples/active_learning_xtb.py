# %% [markdown]
# # Active learning of a molecule with GFN2-xTB as the oracle
# Needs `pip install tblite` (an ASE calculator); skipped with a message otherwise.

# %%
import sys

try:
    from tblite.ase import TBLite  # noqa: F401
except ImportError:
    print("tblite is not installed: `pip install tblite` to run this example (skipped)")
    sys.exit(0)

from ase.build import molecule

from gpal import SOAP, ActiveLearner, MDSettings, OracleSpec, SparseGP, Trigger
from _common import FAST

ethanol = molecule("CH3CH2OH")
soap = SOAP(species=["H", "C", "O"], r_cut=4.0, n_max=6 if not FAST else 3, l_max=4 if not FAST else 2,
            sigma=0.5, periodic=False, weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1})
learner = ActiveLearner(
    ethanol,
    OracleSpec("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
    SparseGP(soap, n_sparse=60, energy_noise=0.005, force_noise=0.05),
    run_dir="ethanol_xtb_run",
    md=MDSettings(temperature=500, timestep=0.5),
    trigger=Trigger(quantity="energies_std", threshold=0.1, adaptive=True, threshold_min=0.05),
    rattle=0.05,
)
print(learner.run(60 if FAST else 4000))
