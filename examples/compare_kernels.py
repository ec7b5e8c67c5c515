# %% [markdown]
# # Which kernel? Compare choices on the same data

# %%
from gpal import NormalizedDotProduct, SquaredExponential, compare_kernels
from gpal.compare import Candidate, default_candidates
from _common import FAST, emt_frames

train = emt_frames(6 if FAST else 30, seed=1)
test = emt_frames(2 if FAST else 10, seed=2)
small = {"r_cut": 4.0, "n_max": 4, "l_max": 3, "sigma": 0.5}
candidates = (
    [Candidate("dot ζ=2", NormalizedDotProduct(zeta=2), small),
     Candidate("SE ℓ=0.5", SquaredExponential(length_scale=0.5), small)]
    if FAST else default_candidates()
)
table = compare_kernels(train, test, candidates, n_sparse=40 if FAST else 200,
                        plot="kernel_comparison.png")
print(table)                 # in a notebook, the table renders as HTML
print("best:", table.best()["name"])
