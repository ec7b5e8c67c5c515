# %% [markdown]
# # Learning a vacancy-migration barrier: exploration, then the target
# A vacancy hop in EMT copper (31 atoms). EMT is the oracle: an NEB with it gives the
# images and the reference barrier. The active learner explores by MD at 1000 K; with
# the NEB images as targets it also labels frames that remove much of the barrier's
# variance once the potential is globally sound, and stops when the calibrated std of
# the barrier is under the tolerance. One more MD walker (``TargetSet(explore=1)``, the
# default) starts from the image of highest predicted energy and again every 100 steps,
# so the sampler crosses the transition region itself.

# %%
import json

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from gpal import ActiveLearner, MDSettings, SparseGP
from gpal import TargetSet
from _common import FAST, small_soap

# %% the reference: a climbing-image NEB with the oracle
a0 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
site = a0.positions[0].copy()
initial = a0.copy()
del initial[0]                                       # the vacancy
hop = int(np.argmin(np.linalg.norm(initial.positions - site, axis=1)))
final = initial.copy()
final.positions[hop] = site                          # a neighbour hopped into it
for s in (initial, final):
    s.calc = EMT()
    BFGS(s, logfile=None).run(fmax=0.01)
images = [initial] + [initial.copy() for _ in range(3)] + [final]
for im in images[1:-1]:
    im.calc = EMT()
neb = NEB(images, climb=True, method="improvedtangent")
neb.interpolate(mic=True)
FIRE(neb, logfile=None).run(fmax=0.05, steps=100 if FAST else 500)
e_ref = np.array([im.get_potential_energy() for im in images])
print(f"EMT barrier: {e_ref.max() - e_ref[0]:.4f} eV")

# %% the targeted loop
targets = TargetSet(images, quantity="barrier", tolerance=0.01)   # stop at a 10 meV std
learner = ActiveLearner(
    initial, EMT(),
    SparseGP(small_soap(), n_sparse=60) if FAST else None,         # None: gpal's defaults
    run_dir="targeted_barrier_run",
    md=MDSettings(temperature=1000),
    targets=targets,
    progress=not FAST,
)
summary = learner.run(60 if FAST else 2000)
print(summary)

# %% the barrier, its calibrated std and what the oracle says
scale = learner.model.calibration_.get("forces_std", {}).get("scale", 1.0)
p = targets.predict(learner.model, scale)
print(f"model barrier {p['labels'][0]}: {p['value'][0]:.4f} ± {p['std'][0]:.4f} eV "
      f"(EMT {e_ref.max() - e_ref[0]:.4f} eV)")
if FAST:  # (a smoke test: 60 steps with a small SOAP, whose std misses extrapolation to the saddle)
    print("fast mode: a small descriptor and 60 steps; the barrier and its std are not converged "
          "(the full run gives the barrier within a few meV, inside its std)")
with open(learner.run_dir / "log.jsonl") as fh:
    weights = [json.loads(line) for line in fh if '"target_weight"' in line]
print("exploration weight w along the run:", [(r["step"], round(r["weight"], 2)) for r in weights][:10])
