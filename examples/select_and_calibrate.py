# %% [markdown]
# # Which frames to label, which kernel, and how far to trust the stds
# A pool of unlabelled MD snapshots at several temperatures; an oracle (EMT here) that is
# expensive in real life. We (1) bootstrap with farthest-point sampling, (2) choose the
# kernel exponent by the evidence of the labels we have, (3) pick further frames in
# batches by the information gain of their force labels, and (4) calibrate the force
# stds on a held-out trajectory and check them on a hotter, independent one.

# %%
import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import gpal
from gpal import calibration as cal
from gpal.selection import frame_farthest_point_sampling
from _common import FAST, emt_frames, small_soap


def unlabelled(frames, temperature):
    out = []
    for a in frames:
        b = a.copy()
        b.calc = None
        b.info["temperature"] = temperature
        out.append(b)
    return out


def label(atoms):
    """The oracle: one expensive call per frame in real life."""
    a = atoms.copy()
    a.calc = EMT()
    e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
    a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
    return a


n_pool = 8 if FAST else 40
pool = sum((unlabelled(emt_frames(n_pool, temperature=T, seed=10 + k), T)
            for k, T in enumerate((300.0, 700.0, 1100.0))), [])
print(f"pool: {len(pool)} unlabelled snapshots at 300, 700 and 1100 K")

# %% [markdown]
# ## 1. Bootstrap: farthest-point sampling of whole frames in SOAP space

# %%
soap = small_soap()
start = frame_farthest_point_sampling([soap.create(a) for a in pool], 3, random_state=0)
train = [label(pool[i]) for i in start]
left = [i for i in range(len(pool)) if i not in set(start)]

# %% [markdown]
# ## 2. Kernel exponent by the evidence (no test set needed)

# %%
template = gpal.SparseGP(soap, n_sparse=40 if FAST else 200, random_state=0)
zetas = (1, 2, 4) if FAST else (1, 2, 3, 4, 6)
sel = gpal.select_kernel_by_evidence(template, train,
                                     [gpal.NormalizedDotProduct(zeta=z) for z in zetas])
print(sel)
model = sel.model

# %% [markdown]
# ## 3. Batches by force information gain, refitting between batches

# %%
for batch in range(2 if FAST else 4):
    picks = model.select_frames([pool[i] for i in left], 3 if FAST else 5)
    new = [left[j] for j in picks]
    train += [label(pool[i]) for i in new]
    left = [i for i in left if i not in set(new)]
    model = gpal.SparseGP(soap, sel.model.kernel_, n_sparse=template.n_sparse,
                          random_state=0).fit(train)
    model.optimize_hyperparameters()
    print(f"batch {batch + 1}: {len(train)} labelled frames, temperatures of the picks: "
          + ", ".join(f"{pool[i].info['temperature']:g} K" for i in new))

# %% [markdown]
# ## 4. Calibrate on a held-out trajectory, check on a hotter independent one

# %%
calib = emt_frames(4 if FAST else 15, temperature=700.0, seed=101)
check = emt_frames(4 if FAST else 15, temperature=1100.0, seed=202)
rc, rk = model.residuals(calib), model.residuals(check)
scale = cal.StdCalibrator().fit(rc["force_error"], rc["force_std"])
# the stored quantile multiplies the calibrated std: fit it on calibrated stds
conformal = cal.SplitConformal(alpha=0.1).fit(rc["force_error"], scale.transform(rc["force_std"]))
model.set_calibration(forces_std={"scale": scale.scale_, "conformal_q90": conformal.quantile_})
raw = cal.uncertainty_metrics(rk["force_error"], rk["force_std"])
fixed = cal.uncertainty_metrics(rk["force_error"], scale.transform(rk["force_std"]))
# the 90 % interval the model now reports with its predictions, on the check frames
covered = np.mean(np.concatenate([
    (np.abs(p["forces"] - a.get_forces()) <= p["forces_interval90"]).ravel()
    for a in check for p in [model.predict(a, forces_std=True, calibrated=True)]]))
print(f"force RMSE on the check trajectory: {fixed['rmse']:.4f} eV/Å")
print(f"ZMS raw {raw['zms']:.2f} -> calibrated {fixed['zms']:.2f} (1 is honest); "
      f"90 % conformal interval covers {covered:.0%}")
cal.plot_calibration_curve(rk["force_error"], scale.transform(rk["force_std"]),
                           "calibration_curve.png", title="calibrated force stds")
print("model.predict(atoms, forces_std=True, calibrated=True) now returns calibrated stds;"
      " calibration_curve.png shows how honest they are")
