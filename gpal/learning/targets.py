"""Learning aimed at a target property: exploration → exploitation inside the loop.

A :class:`TargetSet` names what the user studies: a few structures (NEB images, a
defect, an adsorbate on a surface), optionally a subset of their atoms, and a quantity
of them: their energies, their forces, or an energy difference such as a migration
barrier. The active learner (``ActiveLearner(..., targets=TargetSet(...))``) then asks,
for every frame its MD walkers offer, two questions:

* how much the frame's labels would teach the model globally: the information gain of
  its force labels, ``IG = Σ ½ log(1 + σ²/σ_n²)`` (as :meth:`gpal.SparseGP.select_frames`,
  but with one force noise σ_n for every component: with a ``force_noise_knee``,
  whose noise grows with the force, the two differ; by up to 47 % in a test, with the
  same ranking);
* how much of the target's posterior variance they would remove,
  ``ΔV = tr(C_tf (C_ff + Λ)⁻¹ C_ft)`` (the exact block form of the rank-1 GP update
  the targeted acquisition uses for one label), as a fraction
  ``ρ = ΔV / V`` of the target's current total variance V.

They are mixed as ``a = w · IG/IG_best + (1 − w) · ρ`` (both terms in [0, 1]; IG_best
the best candidate's), and the weight w follows an
:class:`gpal.selection.AcquisitionSchedule` on the calibrated global force uncertainty
u (the mean, over the last checked frames, of the largest calibrated learnable force
std, the trigger's own measure) relative to the trigger's threshold:
``w = w_floor + (1 − w_floor) · min(u / threshold, 1) ** exponent``. While the frames
the sampler visits are as uncertain as the trigger's threshold the learner explores
(w = 1); as the potential becomes globally sound, w falls toward the floor.

How the learner uses it (the rule)
    The :class:`gpal.Trigger` still decides *when* a walker's frame is uncertain. When
    several frames are, the targeted acquisition decides *which* are labelled (greedy,
    conditioning on the earlier picks; a pick is kept when its acquisition is at least
    a quarter of the first's). A frame the trigger passed over is labelled as well when
    ``(1 − w) · ρ ≥ min_reduction`` (its label alone would remove that share of the
    target's variance, discounted by the exploration weight), the target is not yet
    known to its tolerance, and the walker is under the trigger's rate cap.

Target uncertainty and the target stop
    The latent target values are linear functionals of the sparse GP's weights, so
    their joint posterior is exact: for a barrier ``E_a − E_b``,
    ``var = var_a + var_b − 2 cov_ab``, with ``var = s² · (learnable SoR part) +
    (DTC residual)``; ``s`` is the learner's force-std recalibration factor (it
    rescales the posterior covariance of the weights, which every functional shares)
    and the residual is the part of the prior the sparse set does not explain (labels
    cannot reduce it; the target structures' environments join the sparse set once,
    without an oracle call, so for energies it is small; a force is a derivative, which
    the environments' own kernel functions do not span, so its residual stays: on a Cu
    vacancy hop, default model, 0.0074 eV/Å beside a learnable 0.008, the std 1.36x the
    learnable part alone). With a ``tolerance`` the learner stops
    when the calibrated std of the target quantity (the largest one, for energies or
    forces) is under it, alongside the global stopping rule (whichever comes first).

Targeted exploration (``explore``)
    The frames above are only those the sampler visits, and MD from a minimum rarely
    visits a transition region: the frames chosen for a barrier's sake are then
    themselves far from the path. With ``explore=n`` the learner adds n MD walkers
    that start from the target structures (for a barrier, the image of highest
    predicted energy and its neighbours) with thermal momenta at the protocol's
    temperature, so the sampler itself crosses the region the target lives in; their
    frames are judged by the same trigger and acquisition as any walker's, from
    ``trigger.every`` steps after each start on, so the target structures themselves
    are not labelled. A walker starts again from its structure every
    ``restart_every`` steps (it has fallen into a basin the other walkers sample) and
    after a blow-up. The walkers' frames and their start structures are checkpointed
    and restored on resume.
"""

from __future__ import annotations

import copy
import math
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .._threads import policy as _thread_policy
from .._validation import check_atoms
from ..model import SparseGP
from ..selection import AcquisitionSchedule, greedy_select

__all__ = ["TargetSet", "TARGET_QUANTITIES"]

#: quantities a TargetSet can aim at
TARGET_QUANTITIES = ("energies", "forces", "barrier", "difference")


class TargetSet:
    """The structures and the quantity the active learner should get right.

    Parameters
    ----------
    structures : ase.Atoms or sequence of ase.Atoms
        Target structures (e.g. NEB images, initial state first). Their species must be
        among the model's.
    quantity : {"energies", "forces", "barrier", "difference"}, default "energies"
        ``"energies"``: the energy of each structure (eV); ``"forces"``: every force
        component of each structure (eV/Å); ``"barrier"``: ``E(image_max) − E(image_0)``
        (eV), image_max the structure of highest predicted energy after image 0 (chosen
        again at every evaluation; the barrier is negative, with the std of that
        difference, while every other image is predicted below image 0), the
        structures the images of one path (the same atoms in the same order);
        ``"difference"``: ``E(pair[0]) − E(pair[1])`` (eV).
    atoms : sequence of int, optional
        Atom indices (the same atoms, of the same species, in every structure): energies
        become the sum of these atoms' local energies, forces those of these atoms.
        Default: all atoms.
    pair : (int, int), optional
        The two structures of ``quantity="difference"``.
    tolerance : float, optional
        eV (eV/Å for forces): the learner stops when the calibrated std of the target
        quantity is under it, and labels no frame for the target's sake after that.
    w_floor : float, default 0.2
        The lowest exploration weight (:class:`gpal.selection.AcquisitionSchedule`).
    exponent : float, default 1.0
        Of the schedule: ``w = w_floor + (1 − w_floor) · min(u/u₀, 1) ** exponent``, u₀
        the trigger's threshold (the learner passes it; else the first u seen).
    min_reduction : float, default 0.1
        A frame the trigger passed over is labelled when ``(1 − w) · ρ`` reaches this
        (ρ: the share of the target's variance its label would remove).
    window : int, default 5
        The global uncertainty u of the schedule is the mean, over the last ``window``
        checked frames, of their largest calibrated learnable force std (eV/Å).
    n_sparse : int, default 20
        Environments of each target structure added to the sparse set (most uncertain
        first; near-duplicates skipped) before the loop starts; 0 adds none.
    label_structures : bool, default False
        Let the target structures themselves compete as candidates (as GP-NEB codes
        label their images): at a check where no walker frame is labelled, the not yet
        labelled target structure whose labels would remove the largest share ρ of the
        target's variance is labelled when ``(1 − w) · ρ ≥ min_reduction`` and the
        target is not yet known to its tolerance. Off by default: the oracle then only
        sees configurations the sampler visited.
    explore : int or sequence of int, default 1
        Targeted exploration: MD walkers that start from the target structures
        themselves (with thermal momenta at the protocol's temperature), in addition
        to the learner's walkers, so the sampler visits the target's region (e.g. the
        transition region of a barrier, which MD from a minimum rarely reaches). A
        count n: for ``"barrier"`` walker j starts from the j-th structure nearest (in
        index) to the image of highest predicted energy, the higher-energy neighbour
        first, chosen again on the current model at every start; for
        ``"difference"`` from ``pair[0]``, ``pair[1]``, then the others; else from
        the structures in order (cycling). A sequence: one walker per given
        structure index. Their frames are judged by the same trigger and target
        acquisition as every walker's, from ``trigger.every`` MD steps after each
        start on (the start itself, the target structure, is never labelled). 0:
        none (the walkers start from the learner's structures only).
    restart_every : int, default 100
        MD steps after which an exploring walker starts again from its target
        structure with fresh thermal momenta (it has drifted into a basin the other
        walkers sample); it also starts again after a blow-up rollback. 0: never
        (rollbacks then restore its last good frame, as for any walker).

    Attributes
    ----------
    weight_ : float or None, the current exploration weight w.
    schedule_ : AcquisitionSchedule
    labelled_ : list of int, target structures labelled (``label_structures``).

    Examples
    --------
    >>> targets = TargetSet(neb_images, quantity="barrier", tolerance=0.02)  # doctest: +SKIP
    >>> learner = ActiveLearner(initial, EMT(), targets=targets)             # doctest: +SKIP
    >>> targets.predict(learner.model)["std"]                                # doctest: +SKIP
    """

    def __init__(
        self,
        structures,
        *,
        quantity: str = "energies",
        atoms: Sequence[int] | None = None,
        pair: Sequence[int] | None = None,
        tolerance: float | None = None,
        w_floor: float = 0.2,
        exponent: float = 1.0,
        min_reduction: float = 0.1,
        window: int = 5,
        n_sparse: int = 20,
        label_structures: bool = False,
        explore: int | Sequence[int] = 1,
        restart_every: int = 100,
    ):
        if isinstance(structures, Atoms):
            structures = [structures]
        self.structures = [a.copy() for a in structures]
        if not self.structures:
            raise ValueError("TargetSet needs at least one structure")
        for k, a in enumerate(self.structures):
            check_atoms(a, what=f"target structures[{k}]")
            a.calc = None
        from ..io import savable_constraints

        savable_constraints(self.structures, "target structures")  # exploring walkers start there
        if quantity not in TARGET_QUANTITIES:
            raise ValueError(f"Invalid target quantity {quantity!r}; choose from {TARGET_QUANTITIES}")
        self.quantity = quantity
        n_min = min(len(a) for a in self.structures)
        if atoms is not None:
            given = list(np.atleast_1d(atoms))
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in given):
                raise ValueError(f"target atoms must be integer atom indices, got {given}")
            atoms = [int(i) for i in given]
            if not atoms or min(atoms) < 0 or max(atoms) >= n_min:
                raise ValueError(f"target atoms must be indices in [0, {n_min}), got {atoms}")
            if len(set(atoms)) != len(atoms):
                raise ValueError(f"target atoms list an atom twice: {atoms}")
        self.atoms = atoms
        nums = [a.numbers for a in self.structures]
        if quantity == "barrier" and any(len(n) != len(nums[0]) or np.any(n != nums[0]) for n in nums[1:]):
            k = next(k for k, n in enumerate(nums) if len(n) != len(nums[0]) or np.any(n != nums[0]))
            raise ValueError(f"quantity='barrier' needs the images of one path, the same atoms in the same "
                             f"order; target structure {k} ({self.structures[k].get_chemical_formula()}, "
                             f"{len(nums[k])} atoms) differs from structure 0 "
                             f"({self.structures[0].get_chemical_formula()}, {len(nums[0])} atoms)")
        if quantity == "barrier" and any(np.any(a.pbc != self.structures[0].pbc) for a in self.structures[1:]):
            k = next(k for k, a in enumerate(self.structures) if np.any(a.pbc != self.structures[0].pbc))
            raise ValueError(f"quantity='barrier' needs the images of one path, with the same periodicity; "
                             f"target structure {k} has pbc={self.structures[k].pbc.tolist()}, structure 0 "
                             f"pbc={self.structures[0].pbc.tolist()}")
        if atoms is not None and any(np.any(n[atoms] != nums[0][atoms]) for n in nums[1:]):
            k = next(k for k, n in enumerate(nums) if np.any(n[atoms] != nums[0][atoms]))
            raise ValueError(f"target atoms {atoms} are not the same species in every structure: structure "
                             f"{k} has {[chemical_symbols[z] for z in nums[k][atoms]]}, structure 0 "
                             f"{[chemical_symbols[z] for z in nums[0][atoms]]}")
        if quantity == "difference":
            if pair is None or len(pair) != 2:
                raise ValueError("quantity='difference' needs pair=(i, j), two structure indices")
            try:
                pair = (int(pair[0]), int(pair[1]))
            except (TypeError, ValueError):
                raise ValueError(f"pair must be two structure indices (integers), got {list(pair)!r}") from None
            if not all(0 <= p < len(self.structures) for p in pair) or pair[0] == pair[1]:
                raise ValueError(f"pair must be two different indices in [0, {len(self.structures)}), "
                                 f"got {pair}")
        elif pair is not None:
            raise ValueError("pair= is only used with quantity='difference'")
        if quantity in ("barrier", "difference") and len(self.structures) < 2:
            raise ValueError(f"quantity={quantity!r} needs at least two structures")
        self.pair = pair
        if tolerance is not None and not (np.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"target tolerance must be > 0, got {tolerance}")
        self.tolerance = None if tolerance is None else float(tolerance)
        if not 0 <= float(min_reduction) <= 1:
            raise ValueError(f"min_reduction must be in [0, 1], got {min_reduction}")
        self.min_reduction = float(min_reduction)
        if int(window) < 1:
            raise ValueError(f"window must be >= 1 (labelled frames), got {window}")
        if int(n_sparse) < 0:
            raise ValueError(f"n_sparse must be >= 0 (sparse points from the target structures), got {n_sparse}")
        self.window = int(window)
        self.n_sparse = int(n_sparse)
        if not 0 <= float(w_floor) <= 1:
            raise ValueError(f"w_floor must be in [0, 1] (the exploration weight's floor), got {w_floor}")
        self.w_floor = float(w_floor)
        self.exponent = float(exponent)
        self.schedule_ = AcquisitionSchedule(1.0, self.w_floor, exponent=self.exponent)
        self.label_structures = bool(label_structures)
        self.explore = self._check_explore(explore, len(self.structures))
        if isinstance(restart_every, bool) or not isinstance(restart_every, (int, np.integer)) or restart_every < 0:
            raise ValueError(f"restart_every must be an integer >= 0 (MD steps; 0: never), got {restart_every!r}")
        self.restart_every = int(restart_every)
        self.labelled_: list[int] = []
        self.weight_: float | None = None
        self._recent_u: list[float] = []
        self._logged_weight: float | None = None
        self._cache: dict = {}
        self._split_checked = None  # (a weak reference to the baseline whose local energies were checked)

    @staticmethod
    def _check_explore(explore, n: int) -> int | list[int]:
        """A walker count >= 0, or a list of distinct structure indices in [0, n)."""
        if isinstance(explore, (int, np.integer)) and not isinstance(explore, bool):
            if explore < 0:
                raise ValueError(f"explore must be a walker count >= 0 or a list of structure indices, "
                                 f"got {explore}")
            return int(explore)
        if isinstance(explore, (str, bytes, bool, float)) or not hasattr(explore, "__iter__"):
            raise ValueError(f"explore must be a walker count >= 0 or a list of structure indices, "
                             f"got {explore!r}")
        idx = list(explore)
        if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in idx):
            raise ValueError(f"explore indices must be integers, got {idx!r}")
        idx = [int(k) for k in idx]
        if not all(0 <= k < n for k in idx):
            raise ValueError(f"explore indices must be structure indices in [0, {n}), got {idx}")
        return idx

    @property
    def n_explore(self) -> int:
        """The number of exploring walkers (``explore``)."""
        return self.explore if isinstance(self.explore, int) else len(self.explore)

    def explore_start(self, model: SparseGP, slot: int) -> int:
        """The target structure exploring walker ``slot`` (0 ≤ slot < n_explore) starts from.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
            Ranks the images of a barrier by their predicted energies.
        slot : int
            Which exploring walker, 0 ≤ slot < :attr:`n_explore`.

        Returns
        -------
        int
            An index into :attr:`structures`.

        Raises
        ------
        ValueError
            ``slot`` out of that range.
        """
        if not 0 <= slot < self.n_explore:
            raise ValueError(f"slot must be in [0, {self.n_explore}), got {slot}")
        if not isinstance(self.explore, int):
            return self.explore[slot]
        n = len(self.structures)
        if self.quantity == "barrier":
            e = self._energies(model)
            top = int(np.argmax(e))
            # nearest in index first; at equal distance the higher predicted energy
            order = sorted(range(n), key=lambda k: (abs(k - top), -e[k]))
        elif self.quantity == "difference":
            order = list(self.pair) + [k for k in range(n) if k not in self.pair]
        else:
            order = list(range(n))
        return order[slot % n]

    def __repr__(self) -> str:
        extra = f", pair={self.pair}" if self.pair else ""
        return (f"TargetSet({len(self.structures)} structures, quantity={self.quantity!r}{extra}, "
                f"tolerance={self.tolerance}, weight={self.weight_})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(
        cls,
        file: str,
        *,
        index: str = ":",
        quantity: str = "energies",
        atoms: list | None = None,
        pair: list | None = None,
        tolerance: float | None = None,
        w_floor: float = 0.2,
        exponent: float = 1.0,
        min_reduction: float = 0.1,
        window: int = 5,
        n_sparse: int = 20,
        label_structures: bool = False,
        explore: int | list = 1,
        restart_every: int = 100,
    ) -> "TargetSet":
        """A TargetSet from a structure file (any ASE format; the ``[targets]`` TOML section).

        Parameters
        ----------
        file : str
            Structure file (NEB images, for instance), any format ASE reads.
        index : str, default ":"
            Which frames of the file (ASE index syntax).
        quantity : str, default "energies"
            energies, forces, barrier (E(image_max) − E(image_0)) or difference.
        atoms : list, optional
            Atom indices the quantity is restricted to.
        pair : list, optional
            The two structure indices of quantity = "difference".
        tolerance : float, optional
            Stop when the calibrated target std is under it, eV (eV/Å for forces).
        w_floor : float, default 0.2
            Lowest exploration weight.
        exponent : float, default 1.0
            Of the weight's schedule, w = w_floor + (1 − w_floor) min(u/u₀, 1) ** exponent.
        min_reduction : float, default 0.1
            Label a frame the trigger passed over when (1 − w) × (share of target variance removed) reaches it.
        window : int, default 5
            Checked frames whose mean largest calibrated force std is the schedule's u.
        n_sparse : int, default 20
            Environments of each target structure added to the sparse set at the start.
        label_structures : bool, default False
            Let the target structures themselves be labelled when that removes the most target variance.
        explore : int or list, default 1
            MD walkers started from the target structures (a count, or a list of structure indices).
        restart_every : int, default 100
            MD steps after which an exploring walker starts again from its target structure (0: never).
        """
        from ase.io import read

        from ..exceptions import GpalError

        path = Path(file)
        if not path.is_file():
            raise GpalError(f"target structure file {path} does not exist")
        try:
            frames = read(str(path), index=index)
        except Exception as exc:  # ASE raises many kinds for unreadable files
            raise GpalError(f"cannot read target structures from {path}: {exc}") from exc
        return cls(frames, quantity=quantity, atoms=atoms, pair=pair, tolerance=tolerance,
                   w_floor=w_floor, exponent=exponent, min_reduction=min_reduction, window=window,
                   n_sparse=n_sparse,
                   label_structures=label_structures, explore=explore, restart_every=restart_every)

    def to_dict(self) -> dict:
        """Settings and schedule state as JSON-able values (structures are written apart)."""
        return {
            "quantity": self.quantity, "atoms": self.atoms, "pair": list(self.pair) if self.pair else None,
            "tolerance": self.tolerance, "w_floor": self.w_floor, "exponent": self.exponent,
            "min_reduction": self.min_reduction, "window": self.window, "n_sparse": self.n_sparse,
            "label_structures": self.label_structures, "labelled": list(self.labelled_),
            "explore": self.explore if isinstance(self.explore, int) else list(self.explore),
            "restart_every": self.restart_every,
            "reference": self.schedule_.reference, "weight": self.weight_,
            "recent_uncertainty": list(self._recent_u), "logged_weight": self._logged_weight,
        }

    @classmethod
    def from_dict(cls, d: dict, structures) -> "TargetSet":
        """Inverse of :meth:`to_dict` (with the structures).

        Parameters
        ----------
        d : dict
            :meth:`to_dict`'s form; only ``quantity`` is required, a missing setting
            takes the constructor's default except ``explore``, which defaults to 0
            here (no exploring walkers).
        structures : ase.Atoms or sequence of ase.Atoms
            The target structures (saved apart from ``d``).

        Returns
        -------
        TargetSet
            With the settings and the schedule state (labelled structures, reference,
            weight, recent uncertainties) of ``d``.

        Raises
        ------
        KeyError
            ``d`` has no ``quantity``.
        ValueError
            Invalid settings or structures (as the constructor).
        """
        t = cls(structures, quantity=d["quantity"], atoms=d.get("atoms"), pair=d.get("pair"),
                tolerance=d.get("tolerance"), w_floor=d.get("w_floor", 0.2), exponent=d.get("exponent", 1.0),
                min_reduction=d.get("min_reduction", 0.1), window=d.get("window", 5),
                n_sparse=d.get("n_sparse", 20), label_structures=d.get("label_structures", False),
                explore=d.get("explore", 0), restart_every=d.get("restart_every", 100))
        t.labelled_ = [int(k) for k in d.get("labelled", [])]
        if d.get("reference"):
            t.schedule_.reference = float(d["reference"])
        t.weight_ = d.get("weight")
        t._recent_u = [float(u) for u in d.get("recent_uncertainty", [])]
        t._logged_weight = d.get("logged_weight")
        return t

    def save(self, run_dir) -> dict:
        """Write the structures to ``run_dir/targets.xyz`` (when they are not there yet,
        e.g. a resume with another TargetSet) and return :meth:`to_dict`.

        Parameters
        ----------
        run_dir : str or path-like
            An existing run directory.

        Returns
        -------
        dict
            :meth:`to_dict` plus ``constraints``, the structures' ASE constraints (extended
            XYZ keeps only some of them); :meth:`load` takes it back.
        """
        from ..io import constraints_state, read_frames, write_frames

        path = Path(run_dir) / "targets.xyz"
        if not path.exists() or not _same_structures(read_frames(path), self.structures):
            write_frames(path, self.structures, overwrite=True)  # whole or not at all
        # every ASE constraint (extended XYZ keeps only FixAtoms and FixCartesian)
        return {**self.to_dict(), "constraints": constraints_state(self.structures)}

    @classmethod
    def load(cls, d: dict, run_dir) -> "TargetSet":
        """The TargetSet a run saved with :meth:`save`.

        Parameters
        ----------
        d : dict
            What :meth:`save` returned.
        run_dir : str or path-like
            The run directory holding ``targets.xyz``.

        Returns
        -------
        TargetSet
            As :meth:`from_dict`, the structures read from ``run_dir/targets.xyz`` with
            their constraints restored.
        """
        from ..io import read_frames, restore_constraints

        structures = read_frames(Path(run_dir) / "targets.xyz")
        restore_constraints(structures, d.get("constraints"))
        return cls.from_dict(d, structures)

    # ------------------------------------------------------------------ model side
    @_thread_policy()
    def add_to_sparse(self, model: SparseGP, max_sparse: int | None = None) -> int:
        """Add the target structures' most uncertain environments to the model's sparse set.

        No oracle call: a sparse point only lets the model resolve that environment's
        local energy; the labels decide its value. Returns the number added.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
            Changed in place (:meth:`gpal.SparseGP.add_sparse_environments`,
            ``sparse_selection="variance"``).
        max_sparse : int, optional
            Cap on the size of the model's whole sparse set: each structure adds at most
            ``min(n_sparse, max_sparse - current size)``, and none once the cap is
            reached. None: ``n_sparse`` per structure.

        Returns
        -------
        int
            Environments added over all structures (near-duplicates of sparse points are
            skipped, so possibly fewer than asked).
        """
        added = 0
        for a in self.structures:
            n = self.n_sparse
            if max_sparse is not None:
                n = min(n, int(max_sparse) - len(model.sparse_X_))
            if n <= 0:
                break
            added += model.add_sparse_environments(a, n, sparse_selection="variance")
        self._cache = {}
        return added

    def _key(self, model) -> tuple:
        return (id(model.solver_), len(model.sparse_X_), repr(model.kernel_),
                id(model.descriptor_))

    def _structure_data(self, model) -> list[dict]:
        """Per structure: kernel rows of the selected local energies / forces (model's sparse set)."""
        key = self._key(model)
        if self._cache.get("key") == key:
            return self._cache["data"]
        Z = model.sparse_X_
        data = []
        # a force's prior variance depends on the kernel and descriptor, not the sparse set
        priors = getattr(self, "_force_priors", None)  # ((kernel repr, descriptor), {structure: prior})
        if priors is None or priors[0][0] != repr(model.kernel_) or priors[0][1] is not model.descriptor_:
            priors = self._force_priors = ((repr(model.kernel_), model.descriptor_), {})
        for k, a in enumerate(self.structures):
            model._check(a, what="target structure")
            X = model.descriptor_.create(a)
            sel = np.arange(len(a)) if self.atoms is None else np.asarray(self.atoms)
            K = model.local_kernel(a, X)[sel]
            d = {"X": X[sel], "numbers": a.numbers[sel], "row": K.sum(axis=0)}
            if self.quantity == "forces":
                f = model.observation_rows(a).forces
                d["force_rows"] = f[sel].reshape(3 * len(sel), len(Z))
                if k not in priors[1]:
                    priors[1][k] = _prior_force_variance(model, a, sel)
                d["force_prior"] = priors[1][k]
            data.append(d)
        self._cache = {"key": key, "data": data}
        return data

    def _prior_cross(self, model, da: dict, db: dict) -> float:
        """Σ_ij k(x_i, x_j) over the selected atoms of two structures (same species only)."""
        total = 0.0
        for z in np.intersect1d(np.unique(da["numbers"]), np.unique(db["numbers"])):
            ra, rb = da["X"][da["numbers"] == z], db["X"][db["numbers"] == z]
            total += float(np.sum(model.kernel_(ra, rb)))
        return total

    def _energies(self, model) -> np.ndarray:
        """Predicted energies (eV) of the structures (selected atoms' local energies)."""
        out = []
        calc = getattr(model, "baseline_", None)
        checked = self._split_checked() if self._split_checked is not None else None
        if self.atoms is not None and calc is not None and checked is not calc:
            from ..baseline import baseline_labels

            # (once per baseline: each target prediction would otherwise pay a baseline call)
            if baseline_labels(calc, self.structures[0])["energies_split"]:
                raise ValueError(
                    f"target atoms {self.atoms} need local energies, and the model's baseline "
                    f"({type(calc).__name__}) gives only a total energy (its share per atom would be "
                    "total / n_atoms); give the target without atoms= (whole structures)")
            self._split_checked = weakref.ref(calc)
        for a in self.structures:
            e = model.predict(a)["energies"]
            out.append(float(e.sum() if self.atoms is None else e[self.atoms].sum()))
        return np.array(out)

    def _functionals(self, model):
        """The target values as functionals of the GP weights.

        Returns
        -------
        values : ndarray (n_t,)
            Predicted values (eV or eV/Å).
        rows : ndarray (n_t, M)
            Their kernel rows (latent value = row · weights).
        resid : ndarray (n_t,)
            DTC residual variances (not reducible by labels), eV².
        labels : list of str
        """
        data = self._structure_data(model)
        sol = model.solver_
        if self.quantity == "forces":
            rows = np.concatenate([d["force_rows"] for d in data])
            values = []
            for a in self.structures:
                f = model.predict(a)["forces"]
                values.append((f if self.atoms is None else f[self.atoms]).ravel())
            labels = [f"F[{k}][{i}]" for k, d in enumerate(data) for i in range(d["force_rows"].shape[0])]
            prior = np.concatenate([d["force_prior"] for d in data])
            resid = np.clip(prior - sol.var_nystrom(rows), 0.0, None)
            return np.concatenate(values), rows, resid, labels
        energies = self._energies(model)
        if self.quantity == "energies":
            coeffs = [{k: 1.0} for k in range(len(data))]
            labels = [f"E[{k}]" for k in range(len(data))]
        else:
            if self.quantity == "barrier":  # the highest image after image 0 (its own
                a, b = 1 + int(np.argmax(energies[1:])), 0  # difference would be 0 ± 0)
            else:
                a, b = self.pair
            coeffs = [{a: 1.0, b: -1.0}]
            labels = [f"E[{a}]-E[{b}]"]
        rows, values, resid = [], [], []
        for c in coeffs:
            row = sum(w * data[k]["row"] for k, w in c.items())
            prior = sum(wa * wb * self._prior_cross(model, data[ka], data[kb])
                        for ka, wa in c.items() for kb, wb in c.items())
            nys = float(sol.var_nystrom(row[None])[0])
            rows.append(row)
            resid.append(max(prior - nys, 0.0))
            values.append(sum(w * energies[k] for k, w in c.items()))
        return np.array(values), np.array(rows), np.array(resid), labels

    @_thread_policy()
    def predict(self, model: SparseGP, scale: float = 1.0) -> dict:
        """The target quantity and its calibrated uncertainty under ``model``.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
        scale : float, default 1.0
            Recalibration factor of the learnable (SoR) std, e.g. the learner's
            force-std scale.

        Returns
        -------
        dict
            ``value`` (n_t,) eV or eV/Å, ``std`` (n_t,) calibrated
            ``sqrt(scale² · var_learnable + var_residual + var_noise)``, ``std_learnable``,
            ``std_residual``, ``std_noise`` (the oracle's energies as the model fits them:
            :meth:`_noise_variance`; 0 for forces), ``labels`` (n_t names, e.g.
            ``"E[3]-E[0]"``) and
            ``max_std`` (the largest std, what the stop compares with the tolerance).

        The residual part is that of the whole quantity, with the correlations of the
        atoms' residual prior terms ``k - Q`` between them: for a structure's energy it is
        larger than in ``model.predict(...)["energy_std"]``, which treats them as
        independent between atoms (measured on a 32-atom Cu cell: 0.028 against 0.010
        eV), so a target stop is the more cautious of the two. A force's residual is its
        prior variance (:func:`_prior_force_variance`) less the part its kernel row
        explains through the sparse set.
        """
        values, rows, resid, labels = self._functionals(model)
        sor = np.clip(model.solver_.var_sor(rows), 0.0, None)
        noise = self._noise_variance(model, len(values))
        std = np.sqrt(scale**2 * sor + resid + noise)
        return {"value": values, "std": std, "std_learnable": scale * np.sqrt(sor),
                "std_residual": np.sqrt(resid), "std_noise": np.sqrt(noise), "labels": labels,
                "max_std": float(std.max())}

    def _noise_variance(self, model: SparseGP, n_targets: int) -> np.ndarray:
        """The label noise of an energy quantity as the model sees the oracle's (eV², (n_t,)).

        The fitted energy noise (``energy_noise`` per atom, ``sqrt(N)`` per frame) is how
        closely the model reproduces the oracle's energies: for EMT labels, noise-free,
        all of it is the model's misfit. A quantity ``Σ_k w_k E_k`` of independent frames
        gets ``Σ_k w_k² σ² n_k`` (``n_k`` the structure's atoms, or the selected ones).
        Without it a Cu vacancy hop's barrier (EMT, 31 atoms, a small SOAP fitting
        energies to 34 meV per frame) was given stds of 14-17 meV with errors of 45-52
        meV (two runs of five), and its target stop certified a 0.05 eV tolerance it
        missed. Forces: none added (the learnable and residual parts only)."""
        if self.quantity == "forces":
            return np.zeros(n_targets)
        sigma = float(getattr(model, "noise_", {}).get("energy", 0.0) or 0.0)
        n = [len(a) if self.atoms is None else len(self.atoms) for a in self.structures]
        if self.quantity == "energies":
            return sigma**2 * np.array(n, dtype=float)
        if self.quantity == "barrier":  # E[a] - E[0]: the same atoms in both
            return np.full(n_targets, sigma**2 * 2.0 * n[0])
        a, b = self.pair
        return np.full(n_targets, sigma**2 * (n[a] + n[b]))

    @_thread_policy()
    def covariance(self, model: SparseGP, scale: float = 1.0) -> np.ndarray:
        """Calibrated joint posterior covariance of the structures' energies (eV²), (n, n).

        Learnable part ``scale² · r_a Σ r_bᵀ`` plus the DTC residual; for any pair,
        ``var(E_a − E_b) = C_aa + C_bb − 2 C_ab``.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
        scale : float, default 1.0
            Recalibration factor of the learnable (SoR) std.

        Returns
        -------
        ndarray of shape (n_structures, n_structures)
            eV². The energies are those of ``atoms`` (the sum of their local energies)
            when it is set, whatever ``quantity`` is.
        """
        data = self._structure_data(model)
        R = np.array([d["row"] for d in data])
        prior = np.array([[self._prior_cross(model, da, db) for db in data] for da in data])
        resid = prior - model.solver_.cov_nystrom(R)
        return scale**2 * model.solver_.cov_sor(R) + resid

    # ------------------------------------------------------------------ acquisition
    @staticmethod
    def _frame_rows(model, atoms: Atoms):
        """Kernel rows and noise stds of every label of a frame, and the force rows' slice."""
        obs = model.observation_rows(atoms)
        n = len(atoms)
        rows = [obs.energy[None], obs.forces.reshape(3 * n, -1)]
        noise = [np.array([model.noise_["energy"] * math.sqrt(n)]), np.full(3 * n, model.typical_force_noise())]
        if obs.stress is not None:
            rows.append(obs.stress)
            noise.append(model.stress_label_noise())
        return np.concatenate(rows), np.concatenate(noise), slice(1, 1 + 3 * n)

    @staticmethod
    def _scores(solver, A, noise, fslice, T, total_var, force_noise, scale: float = 1.0):
        """(IG of the force labels, share of the target's calibrated variance removed, mean
        and max force variance). The model's update with these labels (its own
        covariances and noise) removes ``Tr(C_tf (C_ff + N)⁻¹ C_ft)`` of the learnable
        variance, and the calibration scales what is left by ``scale²``: the calibrated
        variance removed is ``scale²`` times that, of ``total_var`` (calibrated,
        :meth:`_calibrated_var`). The IG and the variances returned are the model's own."""
        C_ff = solver.cov_sor(A)
        var_f = np.clip(np.diag(C_ff)[fslice], 0.0, None)
        s2 = float(scale) ** 2
        ig = 0.5 * float(np.sum(np.log1p(var_f / force_noise**2)))
        C_ff[np.diag_indices_from(C_ff)] += noise**2
        C_ft = solver.cov_sor(A, T)
        try:
            W = np.linalg.solve(np.linalg.cholesky(C_ff), C_ft)
            removed = float(np.sum(W * W))
        except np.linalg.LinAlgError:  # round-off only: C_ff holds the noise on its diagonal
            removed = float(np.sum(C_ft * (np.linalg.pinv(C_ff, hermitian=True) @ C_ft)))
        rho = s2 * removed / total_var if total_var > 0 else 0.0
        if not len(var_f):
            return ig, min(max(rho, 0.0), 1.0), 0.0, 0.0
        return ig, min(max(rho, 0.0), 1.0), float(np.mean(var_f)), float(np.max(var_f))

    @staticmethod
    def _calibrated_var(solver, rows, resid, scale: float = 1.0) -> tuple[float, float]:
        """(the target's total calibrated variance, ``scale²`` Σ learnable + Σ residual;
        the largest calibrated std of its quantities)."""
        sor = np.clip(solver.var_sor(rows), 0.0, None)
        return float(scale**2 * np.sum(sor) + np.sum(resid)), float(np.sqrt(scale**2 * sor + resid).max())


    @_thread_policy()
    def score_frames(self, model: SparseGP, frames, scale: float = 1.0) -> dict:
        """Information gain and target variance reduction of each frame, one at a time.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
        frames : sequence of ase.Atoms
        scale : float, default 1.0
            The force-std recalibration factor: the learnable covariances are ``scale²``
            times the model's.

        Returns
        -------
        dict
            ``information_gain`` (n,) nats of the force labels, ``reduction`` (n,) the
            share ρ of the target's total variance its labels would remove (energy,
            forces and stress labels, with their noise), ``force_std`` (n,) RMS
            learnable force std (eV/Å, uncalibrated), ``force_std_max`` (n,) the
            largest one.
        """
        _, T, resid, _ = self._functionals(model)
        total = self._calibrated_var(model.solver_, T, resid, scale)[0]
        out = {"information_gain": [], "reduction": [], "force_std": [], "force_std_max": []}
        f_noise = model.typical_force_noise()
        for a in frames:
            A, noise, fs = self._frame_rows(model, a)
            ig, rho, vf, vmax = self._scores(model.solver_, A, noise, fs, T, total, f_noise, scale)
            out["information_gain"].append(ig)
            out["reduction"].append(rho)
            out["force_std"].append(math.sqrt(vf))
            out["force_std_max"].append(math.sqrt(vmax))
        return {k: np.array(v) for k, v in out.items()}

    def update_weight(self, force_std: float, reference: float | None = None) -> float:
        """Feed one checked frame's largest calibrated learnable force std (eV/Å); returns w.

        ``reference`` (eV/Å, e.g. the trigger's threshold) is the uncertainty at and
        above which w = 1; None keeps the schedule's (the first value fed, unless set).

        Parameters
        ----------
        force_std : float
            The frame's largest calibrated learnable force std, eV/Å.
        reference : float, optional
            eV/Å; replaces the schedule's reference when > 0 (else ignored).

        Returns
        -------
        float
            The exploration weight w in [w_floor, 1] (also ``weight_``), from the mean u
            of the last ``window`` values fed. 1 while no reference is set and u <= 0.

        Raises
        ------
        ValueError
            u is not finite, or negative once a reference is set.
        """
        self._recent_u.append(float(force_std))
        del self._recent_u[: -self.window]
        u = float(np.mean(self._recent_u))
        if reference is not None and reference > 0:
            self.schedule_.reference = float(reference)
        if self.schedule_.reference is None and u <= 0:
            self.weight_ = 1.0
        else:
            self.weight_ = float(self.schedule_.update(u))
            del self.schedule_.history[:-1]  # the learner's log keeps the history
        return self.weight_

    def weight_changed(self) -> bool:
        """True (once) when w moved by at least 0.01 since it was last reported."""
        if self.weight_ is None:
            return False
        if self._logged_weight is None or abs(self.weight_ - self._logged_weight) >= 0.01:
            self._logged_weight = self.weight_
            return True
        return False

    @_thread_policy()
    def reached(self, model, scale: float = 1.0) -> bool:
        """True when a tolerance is set and the calibrated target std is at or under it.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
        scale : float, default 1.0
            Recalibration factor of the learnable (SoR) std (:meth:`predict`).

        Returns
        -------
        bool
            ``predict(model, scale)["max_std"] <= tolerance`` (eV, eV/Å for forces);
            False without a tolerance.
        """
        return self.tolerance is not None and self.predict(model, scale)["max_std"] <= self.tolerance

    @_thread_policy()
    def consider(self, model, atoms: Atoms, *, uncertain: bool, scale: float = 1.0,
                 reference: float | None = None) -> dict:
        """Judge one checked frame: update w and say whether the target wants its label.

        Parameters
        ----------
        model : gpal.SparseGP
        atoms : ase.Atoms
            The walker's current frame.
        uncertain : bool
            Whether the trigger already labels it.
        scale : float
            The learner's force-std recalibration factor.
        reference : float, optional
            The force uncertainty (eV/Å) at which w = 1: the learner passes its
            trigger's base threshold (with the ceiling, without the adaptive level).
            The frame's uncertainty here is ``scale x`` its largest projected force
            std, without the calibration's novelty term the trigger adds.

        Returns
        -------
        dict
            ``label`` (True: label it for the target's sake; never when ``uncertain``),
            ``weight``, ``reduction``, ``information_gain``, ``force_std`` (the largest
            calibrated learnable force std, eV/Å), ``target_std`` (eV or eV/Å).
        """
        values, T, resid, _ = self._functionals(model)
        total, target_std = self._calibrated_var(model.solver_, T, resid, scale)
        A, noise, fs = self._frame_rows(model, atoms)
        ig, rho, _, vmax = self._scores(model.solver_, A, noise, fs, T, total, model.typical_force_noise(), scale)
        u = scale * math.sqrt(vmax)
        w = self.update_weight(u, reference)
        known = self.tolerance is not None and target_std <= self.tolerance
        label = (not uncertain) and (not known) and (1.0 - w) * rho >= self.min_reduction and rho > 0
        return {"label": bool(label), "weight": w, "reduction": rho, "information_gain": ig,
                "force_std": u, "target_std": target_std}

    @_thread_policy()
    def pick_structure(self, model, scale: float = 1.0) -> int | None:
        """The target structure to label now (``label_structures``), or None.

        The not yet labelled structure whose labels would remove the largest share ρ of
        the target's variance, if ``(1 − w) · ρ ≥ min_reduction`` and the target is not
        yet known to its tolerance. It is marked as labelled.

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
        scale : float, default 1.0
            The force-std recalibration factor (the learnable covariances are
            ``scale²`` times the model's).

        Returns
        -------
        int or None
            An index into :attr:`structures`, appended to ``labelled_``. None when
            ``label_structures`` is off, no weight w has been computed yet
            (:meth:`update_weight`), the target std is at or under its tolerance, or no
            structure passes the test.
        """
        if not self.label_structures or self.weight_ is None:
            return None
        _, T, resid, _ = self._functionals(model)
        total, target_std = self._calibrated_var(model.solver_, T, resid, scale)
        if self.tolerance is not None and target_std <= self.tolerance:
            return None
        key = ("rows", self._key(model))
        if self._cache.get("rows_key") != key:
            self._cache["rows"] = [self._frame_rows(model, a) for a in self.structures]
            self._cache["rows_key"] = key
        best, best_rho = None, 0.0
        f_noise = model.typical_force_noise()
        for k, rows in enumerate(self._cache["rows"]):
            if k in self.labelled_:
                continue
            _, rho, _, _ = self._scores(model.solver_, *rows, T, total, f_noise, scale)
            if rho > best_rho:
                best, best_rho = k, rho
        if best is None or (1.0 - self.weight_) * best_rho < self.min_reduction:
            return None
        self.labelled_.append(best)
        return best

    @_thread_policy()
    def choose(self, model, frames: Sequence[Atoms], *, keep: float = 0.25,
               scale: float = 1.0) -> tuple[list[int], list[float]]:
        """Which of several uncertain frames to label: greedy targeted acquisition.

        Each pick maximises ``a = w · IG/IG_best + (1 − w) · ρ`` (IG_best: the best
        candidate's gain before any pick) under the posterior
        that already holds the earlier picks' labels (zero-valued rows in a copy of the
        factorisation: a variance does not depend on label values), as
        :func:`gpal.selection.greedy_select`, gpal's one greedy engine, does for all batches. Picks whose
        acquisition is under ``keep`` times the first pick's are dropped. ``scale``: the
        force-std recalibration factor (the learnable covariances are ``scale²`` times
        the model's).

        Parameters
        ----------
        model : gpal.SparseGP (fitted)
            Not changed (the picks condition a copy of its solver).
        frames : sequence of ase.Atoms
            The candidate frames.
        keep : float, default 0.25
            Picking stops at the first pick whose acquisition is under ``keep`` times the
            first pick's (and after the first pick when that one's is <= 0).
        scale : float, default 1.0

        Returns
        -------
        (list of int, list of float)
            Positions in ``frames`` in pick order, and their acquisition values. w is
            ``weight_``, 1 before the first :meth:`update_weight`.
        """
        w = 1.0 if self.weight_ is None else self.weight_
        _, T, resid, _ = self._functionals(model)
        solver = copy.copy(model.solver_)
        rows = [self._frame_rows(model, a) for a in frames]
        ig_best = []
        f_noise = model.typical_force_noise()

        def scores(idx):
            total = self._calibrated_var(solver, T, resid, scale)[0]
            sc = [self._scores(solver, *rows[k], T, total, f_noise, scale) for k in idx]
            if not ig_best:  # the first round's best: later gains are on the same scale
                ig_best.append(max(max(s[0] for s in sc), 1e-300))
            return [w * s[0] / ig_best[0] + (1.0 - w) * s[1] for s in sc]

        def observe(k):
            A, noise, _ = rows[k]
            solver.update(A, np.zeros(len(A)), noise)

        picks, values = greedy_select(len(frames), len(frames), scores, observe, keep=keep)
        return [int(k) for k in picks], [float(v) for v in values]


def _same_structures(a: list, b: list) -> bool:
    """Whether two lists of structures have the same atoms, positions, cells and pbc."""
    return len(a) == len(b) and all(
        len(x) == len(y) and np.array_equal(x.numbers, y.numbers) and np.allclose(x.positions, y.positions)
        and np.allclose(x.cell.array, y.cell.array) and np.array_equal(x.pbc, y.pbc) for x, y in zip(a, b))


def _prior_force_variance(model, atoms: Atoms, sel) -> np.ndarray:
    """Prior variance (eV²/Å²) of each force component of the atoms ``sel`` of ``atoms``
    under ``model``'s kernel, in the order of ``f[sel].reshape(-1)`` (atom, then x, y, z).

    The energy is a sum of local energies with prior covariance ``k(x_j, x_k)``, so
    ``Var F_a = Σ_jk v_jᵀ ∂²k(x_j, x_k)/∂x_j∂x_k v_k`` with ``v_j = ∂x_j/∂r_a``, over the
    environments ``j`` that atom ``a`` moves (itself and those it is a neighbour of). For
    a cosine kernel ``s² f(x̂_j·x̂_k)`` and ``w_j = (v_j − (x̂_j·v_j) x̂_j)/|x_j|`` (the
    derivative of the unit row) the double derivative contracts to
    ``s² [f'(c_jk) w_j·w_k + f''(c_jk) (w_j·x̂_k)(w_k·x̂_j)]``, same-species pairs only.
    What the sparse set cannot represent of it, ``Var F − q K_mm⁻¹ qᵀ`` for the force's
    kernel row ``q``, is the force's DTC residual. Zeros for a kernel that is not a
    cosine kernel (its residual is then left out).
    """
    from ..kernels import CosineKernel

    out = np.zeros(3 * len(sel))
    kernel = model.kernel_
    if not isinstance(kernel, CosineKernel):
        return out
    d = model.descriptor_.derivatives(atoms)
    X = np.asarray(d.descriptor, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    Xh = X * inv[:, None]
    numbers = np.asarray(atoms.numbers)
    s2 = float(kernel.signal_variance)
    for t, a in enumerate(np.asarray(sel, dtype=int)):
        moved = d.neighbor == a
        J = np.unique(np.concatenate([d.center[moved], [a]]))
        V = np.zeros((len(J), 3, X.shape[1]))
        np.add.at(V, np.searchsorted(J, d.center[moved]), d.dX[moved])
        V[np.searchsorted(J, a)] -= d.dX[d.offsets[a]:d.offsets[a + 1]].sum(axis=0)
        XJ = Xh[J]
        W = (V - np.einsum("jcf,jf->jc", V, XJ)[:, :, None] * XJ[:, None, :]) * inv[J][:, None, None]
        f1, f2 = kernel._f_derivatives(XJ @ XJ.T)
        same = numbers[J][:, None] == numbers[J][None, :]
        for c in range(3):
            Wc = W[:, c, :]
            A = Wc @ XJ.T  # A[j, k] = w_j · x̂_k
            out[3 * t + c] = s2 * float(np.sum(same * (f1 * (Wc @ Wc.T) + f2 * A * A.T)))
    return out
