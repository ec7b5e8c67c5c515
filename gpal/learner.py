"""On-the-fly active learning: MD on the GP, the oracle only where the GP is guessing.

The loop (one round per MD step of every walker)::

    bootstrap:  candidates (rattled/strained copies of the start structures)
                -> farthest-point sampling in descriptor space -> oracle -> fit
    each step:  MD step of every walker on the current GP (ASE dynamics)
                uncertainty of the new frame above the trigger?  -> collect it
                blow-up (atoms overlap, huge forces, runaway temperature)?
                    -> roll back to the walker's last good frame and collect that
                collected frames -> oracle (concurrently) -> appended to train.xyz at
                once -> model.update(frames, most uncertain environments) -> continue
    schedule:   hyperparameters re-optimised every ``optimize_every`` labels;
                checkpoint (model + learner state) every ``checkpoint_every`` labels;
                stopping rule checked every ``check_every`` steps.

Everything a run produces lives in its run folder::

    train.xyz     every labelled frame, appended the moment the oracle returns
    log.jsonl     one JSON record per logged step / event (labels, rollbacks, failures)
    model.npz     the latest model checkpoint (gpal.load)
    state.json    learner state for ``resume``; walkers.npz positions and momenta
    summary.json  final summary; learning_curve.png and validation plots

After a crash (even ``kill -9``) :meth:`ActiveLearner.resume` reloads the checkpoint and
adds every label in train.xyz that the checkpointed model had not seen yet: no label is
lost and none is asked for twice.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from . import selection
from ._validation import as_rng, check_atoms
from .calculator import GPCalculator
from .exceptions import GpalError, OracleError, OverlappingAtomsError
from .io import append_frame, read_frames
from .oracle import Oracle, OracleSpec, as_oracle_spec
from .potential import SparseGP

log = logging.getLogger(__name__)

__all__ = ["ActiveLearner", "Trigger", "MDSettings", "Summary"]

_TRIGGER_QUANTITIES = ("energies_std", "forces_std")


@dataclass
class Trigger:
    """When the model is guessing: a threshold on the per-atom uncertainty.

    Parameters
    ----------
    quantity : {"energies_std", "forces_std"}
        ``"energies_std"``: DTC std of the local energies (eV), cheap, every step.
        ``"forces_std"``: std of force components (eV/Å; max over components), costs an
        explicit derivative pass per check.
    threshold : float
        Absolute threshold in the quantity's unit (eV or eV/Å); with
        ``relative_to_noise=True`` a multiple of the model's noise (``energy_noise`` for
        energies_std, ``force_noise`` for forces_std).
    relative_to_noise : bool
    adaptive : bool
        VASP-style adaptation: after each label the threshold becomes
        ``max(threshold_min, (1 + adapt_margin) * mean of the last adapt_window
        uncertainties seen at unlabelled checks)``, so only configurations clearly more
        uncertain than the recent trajectory trigger.
    threshold_min : float
        Floor of the adaptive threshold (same unit as ``threshold``).
    every : int, default 1
        Check the uncertainty every this many MD steps (blow-up checks still run every
        step). Use it with ``"forces_std"``, whose evaluation costs several MD steps.
    calibrated : bool, default False
        Compare the *calibrated* force std (raw std times the recalibration factor that
        the learner fits on its ``validation`` frames after every update) with the
        threshold, so that the threshold means eV/Å of expected error. Only for
        ``"forces_std"``; the learner then needs ``validation`` frames. Until the first
        validation the factor is 1.

    Notes
    -----
    Local-energy stds are cheap but include a part that labels cannot remove: only sums
    of local energies (total energies) and their gradients (forces, stress) are
    observed, so the split of an energy between the atoms of a rare environment (a
    point defect, say) stays uncertain while its forces are already well known. A
    threshold on ``energies_std`` close to that floor keeps firing on such frames;
    ``"forces_std"`` measures what MD needs directly.
    """

    quantity: str = "energies_std"
    threshold: float = 0.05
    relative_to_noise: bool = False
    adaptive: bool = False
    threshold_min: float = 0.005
    adapt_window: int = 50
    adapt_margin: float = 0.5
    every: int = 1
    calibrated: bool = False

    def __post_init__(self):
        if self.calibrated and self.quantity != "forces_std":
            raise ValueError("Trigger(calibrated=True) needs quantity='forces_std' (the "
                             "learner's recalibration factor is fitted for force stds)")
        if int(self.every) < 1:
            raise ValueError(f"trigger every must be >= 1 step, got {self.every}")
        if self.quantity not in _TRIGGER_QUANTITIES:
            raise ValueError(f"Invalid trigger quantity {self.quantity!r}; choose from {_TRIGGER_QUANTITIES}")
        if not self.threshold > 0:
            raise ValueError(f"trigger threshold must be > 0, got {self.threshold}")

    def absolute(self, model: SparseGP) -> float:
        if not self.relative_to_noise:
            return float(self.threshold)
        noise = model.noise_["energy"] if self.quantity == "energies_std" else model.noise_["force"]
        return float(self.threshold * noise)


@dataclass
class MDSettings:
    """The sampler: Langevin MD by default, any ASE dynamics through ``factory``.

    Parameters
    ----------
    temperature : float or (float, float)
        Kelvin; a pair ramps linearly from the first to the second over the run.
    timestep : float
        Femtoseconds.
    friction : float
        Langevin friction, 1/fs.
    factory : callable, optional
        ``factory(atoms, timestep_ase_units, temperature_K, rng) -> ase dynamics``;
        replaces Langevin (e.g. VelocityVerlet, NPT). Must return an object with
        ``run(steps)``; ``set_temperature(temperature_K=...)`` is used when present.
    """

    temperature: float | tuple = 300.0
    timestep: float = 1.0
    friction: float = 0.02
    factory: Callable | None = None

    def temperature_at(self, frac: float) -> float:
        if isinstance(self.temperature, (tuple, list)):
            t0, t1 = self.temperature
            return float(t0 + (t1 - t0) * min(max(frac, 0.0), 1.0))
        return float(self.temperature)


@dataclass
class Summary:
    """What a run did."""

    steps: int
    oracle_calls: int
    oracle_failures: int
    labelled_frames: int
    bootstrap_frames: int
    rollbacks: int
    sparse_refreshes: int
    wall_time: float
    time_md: float
    time_oracle: float
    time_update: float
    stopped_early: bool = False
    stop_reason: str = ""
    validation: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            "gpal active learning summary",
            f"  MD steps (per walker) : {self.steps}",
            f"  oracle calls          : {self.oracle_calls} ({self.bootstrap_frames} bootstrap, "
            f"{self.oracle_failures} failed)",
            f"  labelled frames       : {self.labelled_frames}",
            f"  rollbacks             : {self.rollbacks}",
            f"  sparse refreshes      : {self.sparse_refreshes} (uncertain frames resolved without the oracle first)",
            f"  wall time             : {self.wall_time:.1f} s (MD {self.time_md:.1f}, oracle "
            f"{self.time_oracle:.1f}, model updates {self.time_update:.1f})",
        ]
        if self.stopped_early:
            lines.append(f"  stopped early         : {self.stop_reason}")
        for key, val in self.validation.items():
            lines.append(f"  validation {key:<11}: {val:.4g}")
        return "\n".join(lines)


class _Progress:
    """A one-line progress display on a terminal; periodic lines otherwise."""

    def __init__(self, total: int, enabled: bool = True):
        self.total = max(int(total), 1)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.last_pct = -10

    def update(self, done: int, text: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        pct = 100.0 * done / self.total
        if self.tty:
            if now - self.last < 0.2 and done < self.total:
                return
            bar = "#" * int(pct / 5)
            sys.stderr.write(f"\r[{bar:<20}] {pct:5.1f}% {done}/{self.total} {text}   ")
            sys.stderr.flush()
        elif pct >= self.last_pct + 10 or done == self.total:
            self.last_pct = int(pct // 10) * 10
            sys.stderr.write(f"[gpal] {pct:5.1f}% {done}/{self.total} {text} ({now - self.t0:.0f} s)\n")
        self.last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class _Walker:
    """One MD trajectory on the GP."""

    def __init__(self, index, atoms, md: MDSettings, rng, calc, temperature):
        self.index = index
        self.atoms = atoms
        self.md = md
        self.rng = rng
        self.atoms.calc = calc
        self.dyn = self._make_dyn(temperature)
        self.good = self.snapshot()

    def _make_dyn(self, temperature):
        ts = self.md.timestep * units.fs
        if self.md.factory is not None:
            return self.md.factory(self.atoms, ts, temperature, self.rng)
        return Langevin(
            self.atoms, ts, temperature_K=temperature, friction=self.md.friction / units.fs,
            fixcm=False, rng=self.rng,
        )

    def set_temperature(self, temperature):
        if hasattr(self.dyn, "set_temperature"):
            self.dyn.set_temperature(temperature_K=temperature)

    def snapshot(self):
        return (self.atoms.positions.copy(), self.atoms.get_momenta().copy(), self.atoms.cell.array.copy())

    def keep_if_good(self, temperature: float) -> None:
        """Remember this frame for rollbacks unless it is already running hot.

        "Hot" is beyond 4 standard deviations of the canonical kinetic temperature,
        T (1 + 4 sqrt(2 / 3N)), so a frame on its way to a blow-up is not kept.
        """
        n = max(len(self.atoms), 1)
        if self.atoms.get_temperature() <= temperature * (1.0 + 4.0 * np.sqrt(2.0 / (3.0 * n))):
            self.good = self.snapshot()

    def restore(self, snap):
        pos, mom, cell = snap
        self.atoms.set_cell(cell)
        self.atoms.positions = pos
        self.atoms.set_momenta(mom)
        self.atoms.calc.reset()

    def step(self):
        self.dyn.run(1)


def _uncertainty(calc: GPCalculator, atoms: Atoms, quantity: str) -> float:
    if quantity == "energies_std":
        return float(np.max(calc.get_uncertainty(atoms, "energies_std")))
    return float(np.max(calc.get_uncertainty(atoms, "forces_std")))


class ActiveLearner:
    """On-the-fly active learning of a gpal SparseGP.

    Parameters
    ----------
    structures : ase.Atoms or list of ase.Atoms
        Start structure(s). Each gets ``n_walkers`` MD walkers with different seeds.
    oracle : ASE calculator, OracleSpec or "module:Name"
        The reference method. A live calculator runs in this process; a spec can run in
        ``executor`` (process pool, dask).
    model : SparseGP, optional
        Settings of the model to learn (it is fitted on the bootstrap data). Default
        ``SparseGP(n_sparse=...)`` with gpal's default descriptor.
    run_dir : str or Path, default "gpal_run"
    md : MDSettings, optional
    trigger : Trigger, optional
    n_walkers : int, default 1
    n_bootstrap : int, default 4
        Frames labelled before MD starts, chosen by FPS among ``n_candidates``
        rattled/strained copies of the start structures.
    n_candidates : int, default 64
    rattle : float, default 0.05
        Å, std of the candidates' random displacements (strains up to ``2*rattle/a``).
    n_sparse_initial : int, default 100
    sparse_per_label : int, default 10
        New sparse environments taken from each labelled frame (its most uncertain).
    optimize_every : float, default 1.5
        Re-optimise hyperparameters (log marginal likelihood) after the bootstrap and
        then whenever the number of labels has grown by this factor since the last time
        (a geometric schedule: the cost of each optimisation grows with the data, the
        total stays about that of the last one); 0 never.
    sparse_refresh : bool, default True
        Before labelling an uncertain frame, add its most uncertain environments to the
        sparse set and look again (no oracle call); see :meth:`_refresh_sparse`.
    max_sparse : int, default 2000
        Upper bound of the sparse set (prediction cost grows with it).
    optimize_noise : bool, default False
        Also optimise the noise levels; by default they stay as given (they encode the
        accuracy asked for) and only kernel hyperparameters (signal variance) move.
    checkpoint_every : int, default 1
        Write model + state every this many labels.
    max_oracle_calls : int, optional
        Stop when reached.
    validation : list of ase.Atoms, optional
        Labelled frames used to calibrate the uncertainty and report errors.
    stopping : gpal.calibration.StoppingRule, optional
    check_every : int, default 100
        Steps between stopping-rule checks.
    executor : concurrent.futures.Executor, optional
        Runs oracle calls concurrently (the walkers' MD runs in this process).
    oracle_timeout : float, optional
    oracle_retries : int, default 1
    on_oracle_failure : {"skip", "stop"}, default "skip"
    max_force : float, default 20.0
        eV/Å; larger predicted forces count as a blow-up.
    max_temperature : float, optional
        K; default 3 x the highest MD temperature + 500 K.
    log_every : int, default 10
    progress : bool, default True
    random_state : int, default 0
    """

    def __init__(
        self,
        structures,
        oracle,
        model: SparseGP | None = None,
        *,
        run_dir="gpal_run",
        md: MDSettings | None = None,
        trigger: Trigger | None = None,
        n_walkers: int = 1,
        n_bootstrap: int = 4,
        n_candidates: int = 64,
        rattle: float = 0.05,
        n_sparse_initial: int = 100,
        sparse_per_label: int = 10,
        optimize_every: float = 1.5,
        optimize_noise: bool = False,
        sparse_refresh: bool = True,
        max_sparse: int = 2000,
        checkpoint_every: int = 1,
        max_oracle_calls: int | None = None,
        validation: Sequence[Atoms] | None = None,
        stopping=None,
        check_every: int = 100,
        executor=None,
        oracle_timeout: float | None = None,
        oracle_retries: int = 1,
        on_oracle_failure: str = "skip",
        max_force: float = 20.0,
        max_temperature: float | None = None,
        log_every: int = 10,
        progress: bool = True,
        random_state: int = 0,
    ):
        if isinstance(structures, Atoms):
            structures = [structures]
        self.structures = [a.copy() for a in structures]
        for k, a in enumerate(self.structures):
            check_atoms(a, what=f"structures[{k}]")
            a.calc = None
        self.oracle_spec = as_oracle_spec(oracle)
        self.model = model if model is not None else SparseGP(n_sparse=n_sparse_initial)
        self.run_dir = Path(run_dir)
        self.md = md or MDSettings()
        self.trigger = trigger or Trigger()
        if on_oracle_failure not in ("skip", "stop"):
            raise ValueError(f"on_oracle_failure must be 'skip' or 'stop', got {on_oracle_failure!r}")
        self.n_walkers = int(n_walkers)
        self.n_bootstrap = int(n_bootstrap)
        self.n_candidates = int(n_candidates)
        self.rattle = float(rattle)
        self.n_sparse_initial = n_sparse_initial
        self.sparse_per_label = int(sparse_per_label)
        self.optimize_every = float(optimize_every)
        self.optimize_noise = bool(optimize_noise)
        self.sparse_refresh = bool(sparse_refresh)
        self.max_sparse = int(max_sparse)
        self.n_refresh = 0
        self._last_opt = 0
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.max_oracle_calls = max_oracle_calls
        self.validation = list(validation) if validation is not None else None
        if self.trigger.calibrated and not self.validation:
            raise ValueError("Trigger(calibrated=True) needs validation frames: the "
                             "recalibration factor is fitted on them")
        self.stopping = stopping
        self.check_every = int(check_every)
        self.executor = executor
        self.oracle = Oracle(
            self.oracle_spec, executor=executor, timeout=oracle_timeout, retries=oracle_retries
        )
        self.on_oracle_failure = on_oracle_failure
        self.max_force = float(max_force)
        tmax = self.md.temperature if not isinstance(self.md.temperature, (tuple, list)) else max(self.md.temperature)
        self.max_temperature = float(max_temperature) if max_temperature else 3.0 * tmax + 500.0
        self.log_every = int(log_every)
        self.progress = progress
        self.random_state = random_state
        # run state
        self.step = 0
        self.bootstrap_done = False
        self.n_labelled = 0
        self.rollbacks = 0
        self.threshold_ = None
        self._recent_unc: list[float] = []
        self._times = {"md": 0.0, "oracle": 0.0, "update": 0.0}
        self.walkers: list[_Walker] = []
        self.total_steps = 0
        self._stopped = (False, "")
        self._val_history: list = []

    # ------------------------------------------------------------------ files
    @property
    def train_path(self) -> Path:
        return self.run_dir / "train.xyz"

    def _log(self, record: dict) -> None:
        record = {"time": time.time(), **record}
        with open(self.run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")

    def _write_json_atomic(self, path: Path, obj) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def checkpoint(self) -> None:
        """Write the model and the learner state (atomically)."""
        if self.model.alpha_ is None:
            return
        self.model.save(self.run_dir / "model.npz")
        arrays = {}
        for w in self.walkers:
            pos, mom, cell = w.good
            arrays[f"positions_{w.index}"] = pos
            arrays[f"momenta_{w.index}"] = mom
            arrays[f"cell_{w.index}"] = cell
            arrays[f"numbers_{w.index}"] = w.atoms.numbers
            arrays[f"pbc_{w.index}"] = w.atoms.pbc
        tmp = self.run_dir / "walkers.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.run_dir / "walkers.npz")
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "bootstrap_done": self.bootstrap_done,
            "n_labelled": self.n_labelled,
            "model_frames": len(self.model.frames_),
            "oracle_calls": self.oracle.n_calls,
            "oracle_failures": self.oracle.n_failures,
            "rollbacks": self.rollbacks,
            "n_refresh": self.n_refresh,
            "last_optimization": self._last_opt,
            "threshold": self.threshold_,
            "recent_uncertainty": self._recent_unc[-self.trigger.adapt_window:],
            "n_walkers_total": len(self.walkers),
            "times": self._times,
            "trigger": asdict(self.trigger),
            "md": {k: v for k, v in asdict(self.md).items() if k != "factory"},
            "oracle": self.oracle_spec.to_dict() if isinstance(self.oracle_spec, OracleSpec) else None,
            "settings": {
                "n_walkers": self.n_walkers,
                "n_bootstrap": self.n_bootstrap,
                "sparse_per_label": self.sparse_per_label,
                "optimize_every": self.optimize_every,
                "optimize_noise": self.optimize_noise,
                "sparse_refresh": self.sparse_refresh,
                "max_sparse": self.max_sparse,
                "checkpoint_every": self.checkpoint_every,
                "max_oracle_calls": self.max_oracle_calls,
                "check_every": self.check_every,
                "max_force": self.max_force,
                "max_temperature": self.max_temperature,
                "random_state": self.random_state,
            },
        }
        self._write_json_atomic(self.run_dir / "state.json", state)

    # ------------------------------------------------------------------ labelling
    def _label(self, frames: list[Atoms], reason: str) -> list[Atoms]:
        t0 = time.perf_counter()
        labelled, failures = self.oracle.label(frames)
        self._times["oracle"] += time.perf_counter() - t0
        good = []
        for a in labelled:
            if a is None:
                continue
            a.info["gpal_step"] = self.step
            a.info["gpal_reason"] = reason
            append_frame(self.train_path, a)  # on disk before anything else happens
            self.n_labelled += 1
            good.append(a)
        for f in failures:
            self._log({"event": "oracle_failure", "step": self.step, "reason": f.reason, "attempts": f.attempts})
        if failures and self.on_oracle_failure == "stop":
            self.checkpoint()
            raise OracleError(
                f"oracle failed on {len(failures)} frame(s) at step {self.step}: "
                f"{failures[0].reason}. Everything so far is saved in {self.run_dir}; "
                "fix the oracle and resume."
            )
        self._log({"event": "label", "step": self.step, "reason": reason, "n": len(good),
                   "oracle_calls": self.oracle.n_calls})
        return good

    def _add_to_model(self, frames: list[Atoms]) -> None:
        if not frames:
            return
        t0 = time.perf_counter()
        if self.model.alpha_ is None:
            self.model.fit(frames)
        else:
            self.model.update(frames, n_sparse=self.sparse_per_label * len(frames), sparse_selection="variance")
        if self.optimize_every and self.n_labelled >= self.optimize_every * max(self._last_opt, 1):
            self._optimize()
        self._times["update"] += time.perf_counter() - t0
        for w in self.walkers:
            w.atoms.calc.reset()
        if self.trigger.adaptive and self._recent_unc:
            recent = self._recent_unc[-self.trigger.adapt_window:]
            self.threshold_ = max(
                self.trigger.threshold_min, (1 + self.trigger.adapt_margin) * float(np.mean(recent))
            )
        if self.validation:  # one point of the learning curve per model update
            self.validate()
        if self.n_labelled % self.checkpoint_every < len(frames):
            self.checkpoint()

    def _optimize(self) -> None:
        self._last_opt = self.n_labelled
        try:
            self.model.optimize_hyperparameters(optimize_noise=self.optimize_noise)
            self._log({"event": "hyperparameters", "step": self.step,
                       "kernel": repr(self.model.kernel_), "noise": self.model.noise_})
        except (GpalError, np.linalg.LinAlgError, ValueError) as exc:
            self._log({"event": "hyperparameters_failed", "step": self.step, "reason": str(exc)})

    # ------------------------------------------------------------------ bootstrap
    def _candidates(self, rng) -> list[Atoms]:
        cands = []
        per = max(1, self.n_candidates // len(self.structures))
        for s in self.structures:
            for _ in range(per):
                a = s.copy()
                if np.all(a.pbc):
                    size = np.cbrt(abs(a.cell.volume) / max(len(a), 1))
                    strain = 2 * self.rattle / max(size, 1.0) * rng.uniform(-1, 1, (3, 3))
                    strain = 0.5 * (strain + strain.T)
                    a.set_cell(a.cell.array @ (np.eye(3) + strain), scale_atoms=True)
                a.positions += rng.normal(0, self.rattle, a.positions.shape) * rng.uniform(0.3, 2.0)
                cands.append(a)
        return cands

    def _bootstrap(self) -> None:
        rng = as_rng(self.random_state)
        pending_path = self.run_dir / "bootstrap.xyz"
        if pending_path.exists():
            chosen = read_frames(pending_path)
        else:
            cands = self._candidates(rng)
            desc = self.model.descriptor if self.model.descriptor is not None else None
            if desc is None:
                from .potential import default_descriptor

                desc = default_descriptor(self.structures)
            Xs = [desc.create(a) for a in cands]
            idx = selection.frame_farthest_point_sampling(
                Xs, min(self.n_bootstrap, len(cands)), random_state=rng
            )
            chosen = [cands[i] for i in idx]
            from ase.io import write

            write(str(pending_path), chosen, format="extxyz")
        done = len(read_frames(self.train_path)) if self.train_path.exists() else 0
        todo = chosen[done:]
        self._log({"event": "bootstrap", "n": len(chosen), "already_labelled": done})
        labelled = self._label(todo, "bootstrap") if todo else []
        frames = read_frames(self.train_path) if self.train_path.exists() else labelled
        if not frames:
            raise OracleError("no bootstrap frame could be labelled; see log.jsonl")
        t0 = time.perf_counter()
        if self.model.alpha_ is None:
            self.model.fit(frames)
            if self.optimize_every:
                self._optimize()
        self._times["update"] += time.perf_counter() - t0
        self.bootstrap_done = True

    # ------------------------------------------------------------------ MD
    def _init_walkers(self, positions=None) -> None:
        rng = as_rng(self.random_state)
        calc_kw = dict(std_every=1 if self.trigger.quantity == "energies_std" else 0)
        self.walkers = []
        k = 0
        for s in self.structures:
            for _ in range(self.n_walkers):
                a = s.copy()
                seed = int(rng.integers(2**31))
                wrng = np.random.default_rng(seed + self.step)
                T0 = self.md.temperature_at(0.0)
                if positions is not None and f"positions_{k}" in positions:
                    a = Atoms(
                        numbers=positions[f"numbers_{k}"], positions=positions[f"positions_{k}"],
                        cell=positions[f"cell_{k}"], pbc=positions[f"pbc_{k}"],
                    )
                    a.set_momenta(positions[f"momenta_{k}"])
                else:
                    thermalize_momenta(a, temperature_K=T0, rng=wrng)
                    Stationary(a)
                calc = GPCalculator(self.model, **calc_kw)
                self.walkers.append(_Walker(k, a, self.md, wrng, calc, T0))
                k += 1

    def _refresh_sparse(self, w: _Walker, unc: float) -> bool:
        """Add the frame's most uncertain environments as sparse points (no oracle call).

        Part of a DTC variance is the sparse approximation's own error; it vanishes when
        the environment joins the sparse set, while the labels already in the model
        still decide its posterior. Only if the frame stays uncertain after this is the
        oracle asked. Returns True if environments were added.
        """
        if not self.sparse_refresh or len(self.model.sparse_X_) >= self.max_sparse:
            return False
        t0 = time.perf_counter()
        n = min(self.sparse_per_label, self.max_sparse - len(self.model.sparse_X_))
        added = self.model.add_sparse_environments(w.atoms, n, sparse_selection="variance")
        self._times["update"] += time.perf_counter() - t0
        if not added:
            return False
        for other in self.walkers:
            other.atoms.calc.reset()
        self.n_refresh += 1
        self._log({"event": "sparse_refresh", "step": self.step, "walker": w.index, "added": added,
                   "std_before": unc, "n_sparse": len(self.model.sparse_X_)})
        return True

    def _blown_up(self, w: _Walker) -> str | None:
        try:
            forces = w.atoms.get_forces()
        except OverlappingAtomsError as exc:
            return str(exc)
        fmax = float(np.sqrt((forces**2).sum(1)).max())
        if not np.isfinite(fmax) or fmax > self.max_force:
            return f"max force {fmax:.3g} eV/Å > {self.max_force}"
        T = w.atoms.get_temperature()
        if not np.isfinite(T) or T > self.max_temperature:
            return f"temperature {T:.0f} K > {self.max_temperature:.0f} K"
        return None

    def run(self, steps: int) -> Summary:
        """Run (or continue) the loop until walker step ``steps`` (a total, not an increment).

        Returns
        -------
        Summary
        """
        t_start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = int(steps)
        if not self.bootstrap_done:
            self._bootstrap()
            if self.validation:
                self.validate()
            self.checkpoint()
        if not self.walkers:
            self._init_walkers()
        thr = self.threshold_ if self.threshold_ is not None else self.trigger.absolute(self.model)
        self.threshold_ = thr
        prog = _Progress(self.total_steps - self.step, self.progress)
        first = self.step
        q = self.trigger.quantity
        while self.step < self.total_steps:
            if self.max_oracle_calls is not None and self.oracle.n_calls >= self.max_oracle_calls:
                self._stopped = (True, f"max_oracle_calls={self.max_oracle_calls} reached")
                break
            frac = self.step / max(self.total_steps - 1, 1)
            T = self.md.temperature_at(frac)
            to_label, reasons = [], []
            t0 = time.perf_counter()
            unc_max = 0.0
            for w in self.walkers:
                w.set_temperature(T)
                reason = None
                try:
                    w.step()
                    reason = self._blown_up(w)
                except OverlappingAtomsError as exc:
                    reason = str(exc)
                if reason is not None:
                    self.rollbacks += 1
                    self._log({"event": "rollback", "step": self.step, "walker": w.index, "reason": reason})
                    w.restore(w.good)
                    # fresh Maxwell-Boltzmann momenta: the old ones led into the blow-up
                    thermalize_momenta(w.atoms, temperature_K=T, rng=w.rng)
                    Stationary(w.atoms)
                    w.dyn = w._make_dyn(T)
                    to_label.append(w.atoms.copy())
                    reasons.append("rollback")
                    continue
                if self.step % self.trigger.every:
                    w.keep_if_good(T)
                    continue
                unc = _uncertainty(w.atoms.calc, w.atoms, q) * self._trigger_scale()
                if unc > self.threshold_ and self._refresh_sparse(w, unc):
                    unc = _uncertainty(w.atoms.calc, w.atoms, q) * self._trigger_scale()
                unc_max = max(unc_max, unc)
                if unc > self.threshold_:
                    to_label.append(w.atoms.copy())
                    reasons.append("uncertain")
                else:
                    self._recent_unc.append(unc)
                    del self._recent_unc[: -4 * self.trigger.adapt_window]
                    w.keep_if_good(T)
            self._times["md"] += time.perf_counter() - t0
            if to_label:
                for a in to_label:
                    a.calc = None
                good = self._label(to_label, ",".join(sorted(set(reasons))))
                self._add_to_model(good)
                self.threshold_ = self.threshold_ if self.trigger.adaptive else self.trigger.absolute(self.model)
                for w in self.walkers:
                    w.keep_if_good(T)
            if self.step % self.log_every == 0 or to_label:
                w0 = self.walkers[0].atoms
                self._log({
                    "step": self.step, "temperature": w0.get_temperature(), "target_T": T,
                    "energy": float(w0.get_potential_energy()), "max_std": unc_max,
                    "threshold": self.threshold_, "oracle_calls": self.oracle.n_calls,
                    "labelled": self.n_labelled,
                })
            if self.stopping is not None and self.check_every and self.step % self.check_every == 0 and self.step:
                if self._check_stop():
                    self.step += 1
                    break
            self.step += 1
            prog.update(self.step - first, f"oracle calls {self.oracle.n_calls}")
        prog.close()
        self.checkpoint()
        summary = self._summary(time.perf_counter() - t_start)
        self._write_json_atomic(self.run_dir / "summary.json", asdict(summary))
        self._plots()
        return summary

    def _force_std_scale(self) -> float:
        """The force-std recalibration factor stored in the model (1 before any)."""
        return float(self.model.calibration_.get("forces_std", {}).get("scale", 1.0))

    def _trigger_scale(self) -> float:
        """Factor applied to the trigger's uncertainty: the force-std scale, or 1."""
        return self._force_std_scale() if self.trigger.calibrated else 1.0

    # ------------------------------------------------------------------ validation / stop
    def validate(self) -> dict:
        """Errors and calibration on the validation frames; stores the calibration in the model."""
        from . import calibration

        if not self.validation:
            return {}
        res = self.model.residuals(self.validation)
        err, std, e_err = res["force_error"], res["force_std"], res["energy_error"]
        cal = calibration.StdCalibrator().fit(err, std)
        conf = calibration.SplitConformal(alpha=0.1).fit(err, std)
        self.model.set_calibration(forces_std={"scale": float(cal.scale_), "conformal_q90": float(conf.quantile_)})
        out = {
            "force_rmse": float(np.sqrt(np.mean(err**2))),
            "force_mae": float(np.mean(np.abs(err))),
            "energy_rmse_per_atom": float(np.sqrt(np.mean(np.square(e_err)))),
            "force_std_scale": float(cal.scale_),
            "force_conformal_q90": float(conf.quantile_),
        }
        self._log({"event": "validation", "step": self.step, **out})
        self._val_history.append((self.step, out["force_rmse"], self.oracle.n_calls))
        return out

    def _check_stop(self) -> bool:
        val = self.validate() if self.validation else {}
        scale = self._force_std_scale()
        bound = 0.0
        for w in self.walkers:
            fstd = w.atoms.calc.get_uncertainty(w.atoms, "forces_std")
            bound = max(bound, float(np.max(fstd)) * scale)
        decision = self.stopping.update(self.step, bound, val.get("force_rmse"))
        self._log({"event": "stop_check", "step": self.step, "bound": bound, "stop": decision.stop,
                   "reason": decision.reason})
        if decision.stop:
            self._stopped = (True, decision.reason)
        return decision.stop

    def _summary(self, wall) -> Summary:
        val = {}
        if self.validation:
            v = self.validate()
            val = {k: v[k] for k in ("force_rmse", "energy_rmse_per_atom", "force_std_scale")}
            self.model.save(self.run_dir / "model.npz")
        n_boot = min(self.n_bootstrap, self.n_labelled)
        return Summary(
            steps=self.step,
            oracle_calls=self.oracle.n_calls,
            oracle_failures=self.oracle.n_failures,
            labelled_frames=self.n_labelled,
            bootstrap_frames=n_boot,
            rollbacks=self.rollbacks,
            sparse_refreshes=self.n_refresh,
            wall_time=wall,
            time_md=self._times["md"],
            time_oracle=self._times["oracle"],
            time_update=self._times["update"],
            stopped_early=self._stopped[0],
            stop_reason=self._stopped[1],
            validation=val,
        )

    def _plots(self) -> None:
        """learning_curve.png: validation error (if any) and oracle calls against MD step."""
        from . import calibration

        path = self.run_dir / "learning_curve.png"
        if self._val_history:
            st, err, calls = (np.array(v, float) for v in zip(*self._val_history))
            tol = getattr(self.stopping, "tolerance", None)
            calibration.plot_learning_curve(st, err, calls, path, tolerance=tol, units="eV/Å",
                                            title="force RMSE on the validation set")
            return
        steps, calls = [], []
        log_path = self.run_dir / "log.jsonl"
        if not log_path.exists():
            return
        with open(log_path) as fh:
            for line in fh:
                rec = json.loads(line)
                if rec.get("event") == "label":
                    steps.append(rec["step"])
                    calls.append(rec["oracle_calls"])
        if not steps:
            return
        fig = calibration._new_figure(figsize=(5.5, 4.0))  # no pyplot, no backend change
        ax = fig.add_subplot()
        ax.step(steps + [self.step], calls + [calls[-1]], where="post")
        ax.set_xlabel("MD step")
        ax.set_ylabel("oracle calls (cumulative)")
        ax.set_title("oracle calls during active learning")
        fig.savefig(path, dpi=120)

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir, oracle=None, *, executor=None, **overrides) -> "ActiveLearner":
        """Continue a run from its folder after a stop or a crash.

        Labels in ``train.xyz`` that the checkpointed model had not yet seen are added to
        it; the walkers continue from their last checkpointed good frames.

        Parameters
        ----------
        run_dir : str or Path
        oracle : optional
            Needed when the run's oracle was a live calculator (not recorded); runs with
            an OracleSpec reuse it.
        """
        from .io import load

        run_dir = Path(run_dir)
        state_path = run_dir / "state.json"
        if not state_path.exists():
            raise GpalError(f"{run_dir} has no state.json: nothing to resume")
        state = json.loads(state_path.read_text())
        if oracle is None:
            if state.get("oracle") is None:
                raise ValueError("this run used a live calculator as oracle; pass it as oracle=")
            oracle = OracleSpec(**state["oracle"])
        model = load(run_dir / "model.npz")
        walkers = dict(np.load(run_dir / "walkers.npz", allow_pickle=False))
        structures = []
        for k in range(state["n_walkers_total"]):
            structures.append(Atoms(
                numbers=walkers[f"numbers_{k}"], positions=walkers[f"positions_{k}"],
                cell=walkers[f"cell_{k}"], pbc=walkers[f"pbc_{k}"],
            ))
        settings = dict(state["settings"])
        settings.update(overrides)
        md = MDSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in state["md"].items()})
        self = cls(
            structures, oracle, model, run_dir=run_dir, md=md, trigger=Trigger(**state["trigger"]),
            executor=executor, **{k: v for k, v in settings.items() if k not in ("n_walkers",)},
            n_walkers=1,
        )
        self.step = state["step"]
        self.total_steps = state["total_steps"]
        self.bootstrap_done = state["bootstrap_done"]
        self.rollbacks = state["rollbacks"]
        self.n_refresh = state.get("n_refresh", 0)
        self._last_opt = state.get("last_optimization", 0)
        self.threshold_ = state["threshold"]
        self._recent_unc = list(state.get("recent_uncertainty", []))
        self._times = state["times"]
        self.oracle.n_calls = state["oracle_calls"]
        self.oracle.n_failures = state["oracle_failures"]
        labelled = read_frames(run_dir / "train.xyz") if (run_dir / "train.xyz").exists() else []
        self.n_labelled = len(labelled)
        missing = labelled[len(model.frames_):]
        if missing:
            model.update(missing, n_sparse=self.sparse_per_label * len(missing), sparse_selection="variance")
            log.info("resume: added %d labelled frames the checkpoint had not seen", len(missing))
        self.oracle.n_calls = max(self.oracle.n_calls, self.n_labelled)
        self._log({"event": "resume", "step": self.step, "added_frames": len(missing)})
        self._init_walkers(positions=walkers)
        return self


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
