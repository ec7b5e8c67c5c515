# %% [markdown]
# # Active learning of a molecule with GFN2-xTB as the oracle
# Needs `pip install tblite` (an ASE calculator); skipped with a message otherwise.
#
# gpal's defaults, as a user runs them: the model (SOAP and kernel chosen by the
# evidence), the calibrated force-std trigger, the bootstrap and the stopping of label
# bursts are all left to the learner; only the MD protocol is given (a temperature ramp
# 300 -> 800 K, 0.5 fs steps for the hydrogens). The same run is the molecule of
# `benchmarks/bench_loop.py` (about 50 oracle calls over 4000 steps; held-out force
# RMSE about 0.06-0.08 eV/Å against an RMS force of about 1 eV/Å). Start it with
# `OMP_NUM_THREADS=1` on a busy machine: tblite's OpenMP threads then make each xTB call
# hundreds of times slower (0.8 s against 2 ms for one water molecule).

# %%
import sys

try:
    from tblite.ase import TBLite  # noqa: F401
except ImportError:
    print("tblite is not installed: `pip install tblite` to run this example (skipped)")
    sys.exit(0)

from ase.build import molecule

from gpal import ActiveLearner, MDSettings, OracleSpec
from _common import FAST

learner = ActiveLearner(
    molecule("CH3CH2OH"),
    OracleSpec("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
    run_dir="ethanol_xtb_run",
    md=MDSettings(temperature=(300.0, 800.0), timestep=0.5),
)
print(learner.run(60 if FAST else 4000))
