"""Defaults and constants of gpal's sparse-GP potential (noises, candidates, bounds, budgets)."""

from __future__ import annotations

import numpy as np

from ..descriptors import SOAP
from ..descriptors.soap import poly_weighting

__all__ = ["ZETA_CANDIDATES", "L_MAX_CANDIDATES", "SIGMA_CANDIDATES", "SIGNAL_VARIANCE_BOUNDS", "DEFAULT_NOISE", "NOISE_BOUNDS",
           "DEFAULT_MEMORY_BUDGET_GB", "default_descriptor"]

_SPARSE_SELECTIONS = ("fps", "random", "cur")
# observation groups
_E, _F, _S = 0, 1, 2
_GROUP_NAMES = ("energy", "force", "stress")
_HYPERPARAMETER_MODES = ("evidence", "fixed")
#: exponents of the dot-product kernel the evidence chooses from when no kernel is given
ZETA_CANDIDATES = (2, 3, 4)
#: SOAP l_max the evidence chooses from when no descriptor is given (at most the default's)
L_MAX_CANDIDATES = (3, 6)
#: SOAP Gaussian widths (Å) the evidence chooses from when no descriptor is given (the
#: same sparse environments described with each width; a narrower width resolves
#: molecular geometry better and has fewer neighbours within its cutoff)
SIGMA_CANDIDATES = (0.3, 0.5)
#: training frames from which a default fit also chooses the SOAP width, ranks its
#: candidates on a subset of frames and lets the winner pick its own sparse
#: environments. Below it (e.g. an active learner's bootstrap of a few rattled frames)
#: the evidence rests on too few labels: on a 4-frame bootstrap of a Pt vacancy it took
#: sigma 0.3 with the force noise at its bound, and the loop never labelled an MD frame
#: (force RMSE 2.3x that of the same number of oracle MD frames, against 0.92x).
_MIN_FRAMES_DESCRIPTOR_SEARCH = 10
#: with several candidates, they are ranked by their evidence on evenly spaced training
#: frames holding at least this many labels per sparse point (all frames if fewer);
#: only the winner is then fitted to all frames
_RANK_ROWS_PER_SPARSE = 2
#: range of the default kernel's signal variance (eV²) when the evidence chooses it: in a
#: crystal all cosines are close to 1 and the varying part of σ² c^ζ is a small fraction
#: of σ², so σ² itself can exceed the kernel's own default bound of 1e3
SIGNAL_VARIANCE_BOUNDS = (1e-3, 1e5)
#: the noise levels a model starts from (and keeps with ``hyperparameters="fixed"``)
DEFAULT_NOISE = {"energy": 0.002, "force": 0.05, "stress": 0.005}
#: physical ranges of the noise levels: energy eV/atom (0.1 meV/atom .. 1 eV/atom),
#: force eV/Å (1 meV/Å .. 10 eV/Å), stress eV/Å^3 (about 1.6 MPa .. 16 GPa)
NOISE_BOUNDS = {"energy": (1e-4, 1.0), "force": (1e-3, 10.0), "stress": (1e-5, 0.1)}
_UNITS = {"energy": "eV/atom", "force": "eV/Å", "stress": "eV/Å^3"}
#: a fitted force noise above this share of the labels' RMS force component is said
#: (SparseGP.fit, ActiveLearner): the model leaves much of the forces unexplained
#: (diamond Si, 8 atoms, periodic GFN1-xTB: 0.37-0.40; n_sparse=2 on Cu: 0.46; the
#: worst of 127 benchmark runs on EMT metals, xTB molecules and water: 0.29)
UNEXPLAINED_FORCE_SHARE = 0.35


def unexplained_forces(force_noise: float, rms_force: float) -> str | None:
    """The start of the warning :meth:`gpal.SparseGP.fit` and the active learner give when
    the evidence's force noise (eV/Å) exceeds :data:`UNEXPLAINED_FORCE_SHARE` of the
    labels' RMS force component (eV/Å); None below it. Each caller adds its own likely
    causes."""
    if not (rms_force > 0 and force_noise > UNEXPLAINED_FORCE_SHARE * rms_force):
        return None
    return (f"the evidence puts the force noise at {force_noise:.3g} eV/Å, {100 * force_noise / rms_force:.0f} % "
            f"of the labels' RMS force component ({rms_force:.3g} eV/Å): the model leaves much of the forces "
            "unexplained")
#: memory (GB) a model may hold in observation rows when ``memory_budget_gb`` is None
DEFAULT_MEMORY_BUDGET_GB = 2.0
#: new sparse points up to which stored frames get their new kernel columns from the
#: SOAP adjoint (one expansion and one backward pass for all the points, no descriptor
#: derivatives); beyond it, from one descriptor-derivative pass per frame. Measured on
#: 108-atom Cu, n_max 8, l_max 6, one thread: the adjoint takes ~10 ms + ~0.8 ms per
#: point, the derivative pass ~40 ms + ~0.3 ms per point; crossover 60-70 points
_ADJOINT_MAX_COLUMNS = 64
#: elements of the kernel-gradient block (n_atoms x points x n_features) one adjoint
#: pass takes (32 MB); more points go in several passes
_ADJOINT_BLOCK = 4_000_000


def default_descriptor(frames) -> SOAP:
    """gpal's default SOAP for ``frames``: r_cut 5 Å, n_max 8, l_max 6, sigma 0.5, smooth cutoff.

    The ``poly`` weighting with ``r0 = r_cut`` makes the descriptor go smoothly to zero at
    the cutoff, which MD needs for energy conservation. ``periodic=True`` whatever the
    frames: each structure's own ``pbc`` decides, so a model fitted on molecules treats a
    periodic cell as periodic, and one fitted on crystals treats a cluster as a cluster.

    Parameters
    ----------
    frames : iterable of ase.Atoms
        The structures the descriptor will see; only their species are read.

    Returns
    -------
    SOAP
        ``species`` the sorted atomic numbers found in ``frames``, ``r_cut = 5.0`` Å,
        ``sigma = 0.5`` Å, ``weighting={"function": "poly", "r0": 5.0, "c": 1, "m": 1}``.

    Raises
    ------
    ValueError
        ``frames`` holds no atoms (a SOAP needs at least one species).
    """
    species = sorted({int(z) for a in frames for z in np.unique(a.numbers)})
    periodic = True
    return SOAP(
        species=species,
        r_cut=5.0,
        n_max=8,
        l_max=6,
        sigma=0.5,
        periodic=periodic,
        weighting=poly_weighting(5.0),
    )
