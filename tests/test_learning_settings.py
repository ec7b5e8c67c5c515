"""The learner's grouped settings: groups and flat names agree, the checkpoint is generated
from the groups, and a run folder written with flat settings still resumes."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from gpal import SOAP, ActiveLearner, MDSettings, SparseGP, Trigger
from gpal.learning.settings import (
    FLAT_NAMES,
    GROUPS,
    Bootstrap,
    ModelGrowth,
    OracleSettings,
    RunSettings,
    Validation,
    settings_from_state,
    settings_state,
)

from conftest import POLY, SMALL_SOAP, cu_frames


def _learner(tmp_path, **kw):
    start = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30)
    kw.setdefault("trigger", Trigger(threshold=0.01))
    return ActiveLearner(start, EMT(), model, run_dir=tmp_path / "run", md=MDSettings(temperature=600), **kw)


def test_groups_and_flat_names_set_the_same_fields(tmp_path):
    grouped = _learner(tmp_path, bootstrap=Bootstrap(n_frames=2, n_candidates=8, rattle=0.03),
                       growth=ModelGrowth(sparse_per_label=5), oracle_settings=OracleSettings(retries=3),
                       run=RunSettings(progress=False, random_state=7, max_force=9.0))
    flat = _learner(tmp_path, n_bootstrap=2, n_candidates=8, rattle=0.03, sparse_per_label=5,
                    oracle_retries=3, progress=False, random_state=7, max_force=9.0)
    for name in ("n_bootstrap", "n_candidates", "rattle", "sparse_per_label", "random_state", "max_force"):
        assert getattr(grouped, name) == getattr(flat, name), name
    assert (grouped.n_bootstrap, grouped.rattle, grouped.oracle.retries) == (2, 0.03, 3)
    assert settings_state(grouped._groups) == settings_state(flat._groups)
    # a flat name on top of a group object changes that field only
    mixed = _learner(tmp_path, bootstrap=Bootstrap(n_frames=2), n_candidates=16, progress=False)
    assert (mixed.n_bootstrap, mixed.n_candidates) == (2, 16)


def test_unknown_settings_and_wrong_group_types_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"unknown settings \['n_boostrap'\]"):
        _learner(tmp_path, n_boostrap=3)
    with pytest.raises(TypeError, match="bootstrap must be a gpal.learning.Bootstrap"):
        _learner(tmp_path, bootstrap=ModelGrowth())
    # an MD setting given flat is named with where it goes, not listed among unknown names
    with pytest.raises(TypeError, match=r"md=gpal.MDSettings\(temperature=500, timestep=2.0\)"):
        _learner(tmp_path, temperature=500, timestep=2.0)


def test_a_list_of_frames_is_the_validation_group(tmp_path):
    frames = cu_frames(2, seed=3)
    a = _learner(tmp_path, validation=frames, check_every=50, progress=False)
    b = _learner(tmp_path, validation=Validation(frames=frames, check_every=50), progress=False)
    assert len(a.validation) == len(b.validation) == 2 and a.check_every == b.check_every == 50


def test_the_checkpoint_holds_every_group_field_and_resume_reads_it(tmp_path):
    L = _learner(tmp_path, n_bootstrap=2, n_candidates=6, sparse_per_label=3, oracle_timeout=30.0,
                 checkpoint_seconds=5.0, progress=False)
    L.checkpoint()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    for name, cls in GROUPS.items():  # generated from the dataclasses: nothing to keep by hand
        kept = {f.name for f in dataclasses.fields(cls) if f.metadata.get("state", True)}
        assert set(state["groups"][name]) == kept, name
    assert state["groups"]["bootstrap"]["n_frames"] == 2 and state["groups"]["oracle_settings"]["timeout"] == 30.0
    R = ActiveLearner.resume(tmp_path / "run", EMT(), progress=False)
    assert (R.n_bootstrap, R.n_candidates, R.sparse_per_label, R.oracle.timeout, R.checkpoint_seconds) == (
        2, 6, 3, 30.0, 5.0)


def test_a_run_state_with_flat_settings_still_resumes():
    old = {"settings": {"n_walkers": 2, "n_bootstrap": 6, "oracle_retries": 2, "max_force": 12.0}}
    assert settings_from_state(old) == {"n_bootstrap": 6, "oracle_retries": 2, "max_force": 12.0}
    new = {"groups": {"bootstrap": {"n_frames": 6}, "oracle_settings": {"retries": 2}, "run": {"max_force": 12.0}}}
    assert settings_from_state(new) == settings_from_state(old)
    assert all(group in GROUPS and hasattr(GROUPS[group](), field) for group, field in FLAT_NAMES.values())


class EveryCheck(Trigger):
    """A new trigger rule is one method: label every checked frame (at most the rate cap)."""

    def judge(self, prediction, *, model, recent, label_steps, step, **scales):
        capped = self.capped(label_steps, step)
        return {"uncertainty": float(prediction["forces_std"].max()), "threshold": 0.0, "base_threshold": 0.0,
                "label": not capped, "capped": capped}


class LimitNotAField(Trigger):
    """A rule with a setting of its own set in __init__, not declared as a field."""

    def __init__(self, limit=0.002, **kw):
        super().__init__(**kw)
        self.limit = limit


@dataclasses.dataclass
class LimitField(Trigger):
    """The same setting as a dataclass field: stored, and rebuilt on resume."""

    limit: float = 0.002


def test_a_trigger_setting_that_would_not_survive_resume_is_refused(tmp_path):
    """A run stores a trigger by its dataclass fields: a subclass setting that is not a
    field came back as its default after resume and on walker workers; now refused."""
    with pytest.raises(TypeError, match=r"LimitNotAField has settings that are not dataclass fields \(limit\)"):
        _learner(tmp_path, trigger=LimitNotAField(limit=0.0005), progress=False)
    assert not (tmp_path / "run").exists()
    L = _learner(tmp_path, trigger=LimitField(limit=0.0005, every=10), n_bootstrap=2, progress=False)
    L.run(10)
    R = ActiveLearner.resume(tmp_path / "run", progress=False)
    assert type(R.trigger) is LimitField and R.trigger.limit == 0.0005 and R.trigger.every == 10


def test_a_trigger_rule_is_one_method_and_survives_resume(tmp_path):
    L = _learner(tmp_path, n_bootstrap=2, n_candidates=6, progress=False)
    L.trigger = EveryCheck(every=10, max_labels=2, window=100)
    L.run(40)
    checks = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    checks = [c for c in checks if c.get("event") == "check"]
    assert [c["label"] for c in checks] == [True, True, False, False]  # every check, then the cap
    assert L._calls["uncertain"] == 2
    R = ActiveLearner.resume(tmp_path / "run", EMT(), progress=False)
    assert type(R.trigger) is EveryCheck and R.trigger.every == 10


def test_flat_names_are_views_of_the_groups(tmp_path):
    """One copy of each setting: changing it by its flat name changes the checkpoint."""
    L = _learner(tmp_path, progress=False)
    assert L.rattle == 0.05 and L.max_temperature is None  # per step: 3 T + 500 K
    L.sparse_per_label = 7
    L.max_oracle_calls = 11
    L.checkpoint()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["groups"]["growth"]["sparse_per_label"] == 7 and state["groups"]["oracle_settings"]["max_calls"] == 11
    assert state["groups"]["bootstrap"]["rattle"] == 0.05


@pytest.mark.parametrize("make, fragment", [
    (lambda: MDSettings(timestep=0.0), "timestep must be a finite number > 0 fs"),
    (lambda: MDSettings(temperature=(300.0, -5.0)), "temperature must be a finite number >= 0 K"),
    (lambda: MDSettings(temperature=float("nan")), "temperature must be a finite number"),
    (lambda: MDSettings(friction=-0.1), "friction must be a finite number >= 0"),
    # a value in another unit: seconds, eV, 1/ps
    (lambda: MDSettings(timestep=1e-15), "the time step is in femtoseconds"),
    (lambda: MDSettings(temperature=0.025), "temperatures are in Kelvin"),
    (lambda: MDSettings(temperature=(0.0, 0.1)), "temperatures are in Kelvin"),
    (lambda: MDSettings(timestep=1e-4), "outside 0.001-100 fs"),
    # ASE's own way to write a step (0.0982 fs run without a word)
    (lambda: MDSettings(timestep=__import__("ase").units.fs), "is 1 * ase.units.fs, a step in ASE's time unit; MDSettings takes femtoseconds: timestep=1 "),
    (lambda: MDSettings(timestep=2 * __import__("ase").units.fs), "is 2 * ase.units.fs"),
    (lambda: MDSettings(friction=5.0), "the friction is in 1/fs"),
    (lambda: Bootstrap(n_frames=-1), "n_bootstrap must be an integer >= 0"),
    (lambda: Bootstrap(n_candidates=2.5), "n_candidates must be an integer >= 1"),
    (lambda: Bootstrap(rattle=-0.1), "rattle must be a finite number >= 0 Å"),
    (lambda: ModelGrowth(optimize_every=0.5), "optimize_every must be 0 (never) or a growth factor >= 1"),
    (lambda: ModelGrowth(max_sparse=0), "max_sparse must be an integer >= 1"),
    (lambda: OracleSettings(timeout=0.0), "oracle_timeout must be a finite number > 0 s or None"),
    (lambda: OracleSettings(on_failure="retry"), "on_oracle_failure must be one of"),
    (lambda: Validation(check_every=-1), "check_every must be an integer >= 0"),
    (lambda: RunSettings(log_every=True), "log_every must be an integer >= 1"),
    (lambda: RunSettings(random_state=1.5), "random_state must be an integer >= 0"),
    (lambda: Bootstrap(n_frames=5, n_candidates=2), "n_candidates (2) must be >= n_bootstrap (5)"),
    (lambda: ModelGrowth(optimize_noise="no"), "optimize_noise must be True or False"),
    (lambda: Trigger(threshold=float("inf")), "trigger threshold must be a finite number > 0"),
    (lambda: Trigger(adapt_margin=float("nan")), "adapt_margin must be a finite number >= 0"),
    (lambda: Trigger(every=2.5), "trigger every must be an integer >= 1"),
    (lambda: Trigger(max_labels=True), "trigger max_labels must be an integer >= 1"),
    (lambda: Trigger(threshold=0.1, threshold_min=0.5), "threshold_min (0.5) must not exceed"),
])
def test_settings_refuse_values_outside_their_range(make, fragment):
    with pytest.raises((ValueError, TypeError)) as err:
        make()
    assert fragment in str(err.value)
    with pytest.raises(TypeError, match="StoppingRule"):
        Validation(stopping=5)


def test_learner_refuses_bad_counts_before_any_oracle_call(tmp_path):
    with pytest.raises(ValueError, match="n_walkers must be an integer >= 1"):
        _learner(tmp_path, n_walkers=0)
    with pytest.raises(ValueError, match="n_bootstrap must be >= 1 for a model that is not fitted"):
        _learner(tmp_path, n_bootstrap=0)
    with pytest.raises(ValueError, match=r"max_sparse \(10\) is below the model's n_sparse \(30\)"):
        _learner(tmp_path, max_sparse=10)
    # a force threshold meant in meV/Å could never fire before the blow-up limit
    with pytest.warns(UserWarning, match="trigger threshold = 50 eV/Å is not below the blow-up force limit"):
        _learner(tmp_path, trigger=Trigger(threshold=50))
    with pytest.warns(UserWarning, match="threshold_min = 12 eV/Å is not below .* max_force = 9 eV/Å"):
        _learner(tmp_path, trigger=Trigger(threshold_min=12), max_force=9.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="oracle_timeout")
        _learner(tmp_path, trigger=Trigger(threshold=50, relative_to_noise=True))  # a multiple of the noise
    with pytest.warns(UserWarning, match=r"a step given in ps \(0.002 ps = 2 fs\) should be 2"):
        MDSettings(timestep=0.002)
    L = _learner(tmp_path)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        L.run(-5)
    assert L.oracle.n_calls == 0 and not (tmp_path / "run").exists()


def test_exact_frames_default_all_and_range():
    assert ModelGrowth().exact_frames == 10
    assert ModelGrowth(exact_frames="all").exact_frames is None  # what a TOML file writes
    assert ModelGrowth(exact_frames=None).exact_frames is None
    assert ModelGrowth(exact_frames=0).exact_frames == 0
    for bad in (-1, 2.5, "some", True):
        with pytest.raises(ValueError, match="exact_frames"):
            ModelGrowth(exact_frames=bad)


def test_blow_up_limit_follows_the_temperature_of_the_step(tmp_path):
    import numpy as np
    from ase.md.velocitydistribution import thermalize_momenta

    from gpal.learning.sampler import temperature_limit

    assert temperature_limit(None, 300.0) == 1400.0 and temperature_limit(None, 800.0) == 2900.0
    assert temperature_limit(5000.0, 300.0) == 5000.0
    L = _learner(tmp_path, progress=False)
    L.run(1)  # the bootstrap makes a model and the walkers
    w = L.walkers[0]
    thermalize_momenta(w.atoms, temperature_K=2000.0, rng=np.random.default_rng(0), exact_temperature=True)
    assert "> 1400 K" in L._blown_up(w, 300.0)  # hot for the start of the ramp
    assert L._blown_up(w, 600.0) is None  # not for its end (2300 K)
    L.max_temperature = 2500.0  # a limit the user sets holds at every step
    assert L._blown_up(w, 300.0) is None


@dataclasses.dataclass
class WithCache(Trigger):
    """A cache set in __post_init__ and a field that is not an __init__ argument: both
    are rebuilt from the stored fields, so the trigger is accepted and resumes."""

    margin: float = 0.1
    derived: float = dataclasses.field(init=False, default=0.0)

    def __post_init__(self):
        super().__post_init__()
        self.derived = 2 * self.margin
        self._cache = {"margin": self.margin}


def test_a_trigger_with_caches_and_init_false_fields_is_stored_and_resumed(tmp_path):
    L = _learner(tmp_path, trigger=WithCache(margin=0.3, every=10), n_bootstrap=2, progress=False)
    L.run(10)
    R = ActiveLearner.resume(tmp_path / "run", progress=False)
    assert type(R.trigger) is WithCache and R.trigger.margin == 0.3 and R.trigger.derived == 0.6


def test_a_resume_keeps_an_expired_adaptive_level_expired(tmp_path):
    # with adapt_expire the level is 0 once more than adapt_window unlabelled checks
    # followed an update; the run state must say so, not bring back the last window's mean
    L = _learner(tmp_path, trigger=Trigger(adaptive=True, adapt_expire=True))
    L.run_dir.mkdir(parents=True)
    L._recent_unc = [0.1 + 0.01 * k for k in range(L.trigger.adapt_window + 5)]
    assert L.trigger.adaptive_level(L._recent_unc) == 0.0
    L.checkpoint(model=False)
    saved = json.loads((L.run_dir / "state.json").read_text())["recent_uncertainty"]
    assert L.trigger.adaptive_level(saved) == 0.0
    L._recent_unc = L._recent_unc[:3]  # not expired: the same mean after the round trip
    L.checkpoint(model=False)
    saved = json.loads((L.run_dir / "state.json").read_text())["recent_uncertainty"]
    assert L.trigger.adaptive_level(saved) == pytest.approx(L.trigger.adaptive_level(L._recent_unc))


def test_a_threshold_min_is_not_compared_with_a_threshold_relative_to_the_noise():
    trig = Trigger(threshold=0.5, relative_to_noise=True, threshold_min=0.6)  # 0.5 x noise vs 0.6 eV/Å
    assert trig.floor() == 0.6


def test_a_flat_keyword_contradicting_a_group_given_too_is_refused(tmp_path):
    """n_bootstrap=8 with bootstrap=Bootstrap(n_frames=6) silently took 8. A flat keyword
    for a field the group leaves at its default (or sets to the same value) still sets it."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from gpal import ActiveLearner
    from gpal.learning import Bootstrap

    with pytest.raises(TypeError, match=r"n_bootstrap=8 and bootstrap=Bootstrap\(n_frames=6\): give one"):
        ActiveLearner(bulk("Cu", cubic=True), EMT(), run_dir=tmp_path / "a", n_bootstrap=8,
                      bootstrap=Bootstrap(n_frames=6))
    assert not (tmp_path / "a").exists()
    L = ActiveLearner(bulk("Cu", cubic=True), EMT(), run_dir=tmp_path / "b", n_bootstrap=6,
                      bootstrap=Bootstrap(n_candidates=32))
    assert (L.n_bootstrap, L.n_candidates) == (6, 32)
    L = ActiveLearner(bulk("Cu", cubic=True), EMT(), run_dir=tmp_path / "c", n_bootstrap=6,
                      bootstrap=Bootstrap(n_frames=6))
    assert L.n_bootstrap == 6
