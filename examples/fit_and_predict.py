# %% [markdown]
# # Fit a gpal model and predict with uncertainties
# Labelled frames in, a sparse GP potential out: energies, forces, stress and their stds.

# %%
import numpy as np
from ase.io import read, write

import gpal
from _common import FAST, emt_frames, small_soap

train = emt_frames(8 if FAST else 30, seed=1)
test = emt_frames(3 if FAST else 10, seed=2)
write("example_train.xyz", train)    # extxyz with labels, as ASE writes it
frames = read("example_train.xyz", ":")  # ... and as a user would load them

# %%
model = gpal.SparseGP(small_soap(), n_sparse=60 if FAST else 200).fit(frames)
model.optimize_hyperparameters()     # signal variance and noise levels, analytic gradients
print(model)

# %%
res = model.predict(test[0], return_std=True, forces_std=True)
print("energy  %.4f eV  (reference %.4f eV, std %.4f eV)"
      % (res["energy"], test[0].get_potential_energy(), res["energy_std"]))
err = np.concatenate([(model.predict(a)["forces"] - a.get_forces()).ravel() for a in test])
print("force RMSE on test: %.4f eV/Å" % np.sqrt(np.mean(err**2)))
print("mean force std    : %.4f eV/Å (raw: the projected std, smaller than the error; "
      "select_and_calibrate.py calibrates it)" % res["forces_std"].mean())

# %%
path = model.save("example_model.npz")  # arrays in .npz + JSON metadata, no pickle
again = gpal.load(path)
assert np.allclose(again.predict(test[0])["forces"], res["forces"])
print("saved and reloaded", path)
