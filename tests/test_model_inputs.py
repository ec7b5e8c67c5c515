"""SparseGP inputs as users give them: per-species dicts keyed by symbol, number or digits,
numpy scalars, and frames that carry only some labels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import gpal
from gpal.descriptors import SOAP
from gpal.kernels import NormalizedDotProduct

from conftest import cuag_frames, label


def _model(**kw):
    soap = SOAP(species=["Cu", "Ag"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5, periodic=True,
                weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1})
    kw.setdefault("n_sparse", 12)
    return gpal.SparseGP(soap, NormalizedDotProduct(zeta=2), hyperparameters="fixed", **kw)


@pytest.mark.parametrize("n_sparse", [{"Cu": 8, "Ag": 4}, {29: 8, 47: 4}, {"29": 8, "47": 4},
                                      {np.int64(29): 8, np.int64(47): 4}, np.int64(12)])
def test_per_species_keys_fit_save_and_load(tmp_path, n_sparse):
    """Symbols (a TOML table), numbers, digit strings (a JSON round trip) and numpy
    integers name the same species, and the saved model loads with the same predictions."""
    frames = cuag_frames(3, seed=1)
    model = _model(n_sparse=n_sparse, e0={"Cu": -0.1, 47: 0.2}).fit(frames)
    if isinstance(n_sparse, dict):
        per = {int(z): int(np.sum(model.sparse_species_ == z)) for z in (29, 47)}
        assert per == {29: 8, 47: 4}
    assert model.e0_ == {29: -0.1, 47: 0.2}
    loaded = gpal.load(model.save(tmp_path / "m.npz"))
    assert loaded.predict(frames[0])["energy"] == pytest.approx(model.predict(frames[0])["energy"], abs=1e-10)
    assert all(isinstance(k, int) for k in (loaded.n_sparse if isinstance(loaded.n_sparse, dict) else {}))


def test_numpy_scalar_settings_save(tmp_path):
    frames = cuag_frames(2, seed=2)
    model = _model(force_noise=np.float32(0.05), energy_noise=np.float64(0.002)).fit(frames)
    loaded = gpal.load(model.save(tmp_path / "m.npz"))
    assert loaded.force_noise == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [{"Xx": 4}, {"0": 4}, {2.5: 4}])
def test_unknown_species_key_is_named(bad):
    with pytest.raises(ValueError, match="n_sparse.*not a chemical symbol"):
        _model(n_sparse=bad).fit(cuag_frames(2))


def test_bad_e0_is_named():
    with pytest.raises(ValueError, match="e0 must be 'fit' or a dict"):
        _model(e0="mean").fit(cuag_frames(2))
    with pytest.raises(ValueError, match=r"e0\['Cu'\] must be a finite number"):
        _model(e0={"Cu": "x"}).fit(cuag_frames(2))


def _only(a, *, energy=False, forces=False, as_info=False):
    b = a.copy()
    if as_info:  # labels in atoms.info / atoms.arrays, no calculator (frame_labels' fallback)
        b.calc = None
        b.info["energy"] = a.get_potential_energy()
        b.arrays["forces"] = a.get_forces().copy()
        return b
    res = {}
    if energy:
        res["energy"] = a.get_potential_energy()
    if forces:
        res["forces"] = a.get_forces()
    b.calc = SinglePointCalculator(b, **res)
    return b


@pytest.mark.parametrize("key, value, message", [
    ("energy", "abc", "energy is 'abc', not a number"),
    ("energy", True, "energy is True, not a number"),
    ("energy", np.array([1.0, 2.0]), "energy holds 2 values"),
    ("stress", "x", "stress is not an array of numbers"),
])
def test_a_label_that_is_not_a_number_is_named_with_its_frame(key, value, message):
    """Text, a bool or several values as a label: a MissingLabelsError naming the frame
    (was a bare float() ValueError, or True taken as 1 eV)."""
    from gpal.exceptions import MissingLabelsError

    frames = [_only(a, as_info=True) for a in cuag_frames(3)]
    frames[2].info[key] = value
    with pytest.raises(MissingLabelsError, match=r"frames\[2\]: frame " + message):
        _model().fit(frames)


def test_residuals_read_labels_as_fit_does():
    """Energy-only, forces-only and info-labelled frames: residuals gives an entry per
    label present, equal to the errors of the full frames."""
    full = cuag_frames(3, seed=3)
    model = _model().fit(cuag_frames(3, seed=4))
    ref = model.residuals(full)
    mixed = [_only(full[0], energy=True), _only(full[1], forces=True), _only(full[2], as_info=True)]
    res = model.residuals(mixed)
    assert list(res["energy_frame"]) == [0, 2]
    np.testing.assert_allclose(res["energy_error"], ref["energy_error"][[0, 2]], atol=1e-12)
    n = len(full[0])
    assert list(np.unique(res["force_frame"])) == [1, 2]
    np.testing.assert_allclose(res["force_error"], ref["force_error"][3 * n:], atol=1e-12)
    np.testing.assert_allclose(res["force_std"], ref["force_std"][3 * n:], atol=1e-12)
    assert list(res["n_atoms"]) == [len(a) for a in full]
    json.dumps({k: v.tolist() for k, v in res.items()})  # plain numeric arrays


def test_fit_reads_frames_from_a_generator(tmp_path):
    """ase.io.iread and generator expressions: read once, by fit (not by its thread policy)."""
    from ase.io import iread, write

    frames = cuag_frames(3, seed=5)
    write(tmp_path / "t.xyz", frames)
    a = _model().fit(iread(str(tmp_path / "t.xyz")))
    b = _model().fit(f for f in frames)
    assert len(a.frames_) == len(b.frames_) == 3
    assert a.predict(frames[0])["energy"] == pytest.approx(_model().fit(frames).predict(frames[0])["energy"], abs=1e-8)


def test_evidence_fit_of_slabs_periodic_in_two_directions():
    """Frames periodic in some directions (a slab with vacuum) are handled one at a time
    by the evidence search, as fully periodic ones (two frames failed before)."""
    from ase.build import fcc111

    from conftest import label

    frames = []
    for k in range(3):
        a = fcc111("Cu", (2, 2, 3), vacuum=5.0)
        a.positions += np.random.default_rng(k).normal(0, 0.05, a.positions.shape)
        frames.append(label(a))
    model = gpal.SparseGP(n_sparse=20).fit(frames)
    assert np.isfinite(model.predict(frames[0])["energy"])


def test_wrong_constructor_arguments_are_named_when_fitting(tmp_path):
    from conftest import cu_frames

    frames = cu_frames(2)
    for model, exc, match in [
        (gpal.SparseGP(200), TypeError, r"descriptor must be a gpal descriptor .*SparseGP\(n_sparse=200\)"),
        (gpal.SparseGP("soap"), TypeError, "descriptor must be a gpal descriptor such as gpal.SOAP"),
        (gpal.SparseGP(kernel="rbf"), TypeError, "kernel must be a gpal kernel"),
        (gpal.SparseGP(force_noise="0.05"), ValueError, "force_noise must be a finite number > 0 or None, got '0.05'"),
        (gpal.SparseGP(force_noise=50), ValueError, "force_noise = 50 eV/Å is above 5 eV/Å.*it is in eV/Å"),
        (gpal.SparseGP(energy_noise=2.0), ValueError, "energy_noise = 2 eV/atom is above 1 eV/atom"),
    ]:
        assert "SparseGP(" in repr(model)  # (a repr never fails, whatever was given)
        with pytest.raises(exc, match=match):
            model.fit(frames)
    with pytest.raises(TypeError, match="Trigger.calibrated=.... must be True or False, got 'yes'"):
        gpal.Trigger(calibrated="yes")


def test_a_calculator_from_a_saved_model_path_and_a_save_into_a_missing_folder(tmp_path):
    frames = cuag_frames(3)
    model = _model().fit(frames)
    path = model.save(tmp_path / "m.npz")
    a = frames[0].copy()
    a.calc = gpal.GPCalculator(str(path))
    assert a.get_potential_energy() == pytest.approx(model.predict(frames[0])["energy"], abs=1e-10)
    with pytest.raises(TypeError, match="model must be a fitted gpal.SparseGP or the path of a saved model"):
        gpal.GPCalculator(3)
    with pytest.raises(FileNotFoundError, match=r"the folder .*nodir does not exist"):
        model.save(tmp_path / "nodir" / "m.npz")
    assert not (tmp_path / "nodir").exists()


def test_results_of_a_frame_moved_after_its_calculation_are_refused():
    """Labels were read from ``atoms.calc.results`` without asking whether they still
    belong to the positions: a frame rattled after its EMT call trained on forces up to
    0.9 eV/Å off. Now a clear error; a frame wrapped into its cell (positions moved by
    lattice vectors) is the same frame and passes."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from gpal._validation import check_frames
    from gpal.exceptions import MissingLabelsError

    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    a.rattle(0.05, seed=1)
    a.calc = EMT()
    a.get_forces()
    check_frames([a])
    w = a.copy()
    w.calc = a.calc
    w.positions[0] += a.cell[0]  # one atom outside the cell: the same frame
    check_frames([w])
    a.rattle(0.05, seed=2)
    with pytest.raises(MissingLabelsError, match=r"frames\[0\]: .*positions changed \(atoms moved by up to .*stale"):
        check_frames([a])
    with pytest.raises(MissingLabelsError, match="stale"):
        _model().fit([a])
    b = bulk("Cu", "fcc", a=3.61, cubic=True)
    b.calc = EMT()
    b.get_potential_energy()
    b.set_cell(b.cell * 1.01, scale_atoms=True)
    with pytest.raises(MissingLabelsError, match="before its cell changed"):
        check_frames([b])
    # the same labels: a rigid translation, a changed pbc, a cell along non-periodic
    # directions (a molecule labelled in a box, learnt as a cluster), float32 rounding
    c = bulk("Cu", "fcc", a=3.61, cubic=True)
    c.rattle(0.05, seed=4)
    c.calc = EMT()
    c.get_forces()
    c.translate([0.3, -2.0, 5.0])
    check_frames([c])
    c.cell = c.cell.array.astype(np.float32)
    check_frames([c])
    c.pbc = False
    c.center(vacuum=6.0)
    check_frames([c])
    c.positions[0] += 0.01
    with pytest.raises(MissingLabelsError, match=r"atoms moved by up to 0.0075 Å relative to each other"):
        check_frames([c])
    shared = [bulk("Cu", "fcc", a=3.61, cubic=True) for _ in range(2)]
    shared[0].rattle(0.05, seed=5)
    shared[1].rattle(0.05, seed=6)
    calc = EMT()
    for x in shared:  # one calculator for both: the first frame's results were the second's
        x.calc = calc
        x.get_forces()
    with pytest.raises(MissingLabelsError, match=r"frames\[0\]: .*stale"):
        check_frames(shared)


def test_labels_under_an_unread_name_are_named_in_a_warning(tmp_path):
    """An extxyz with its energy under 'energy' but forces under 'force' trained on the
    energies alone, without a word (0 of 30 force labels used). A per-atom (n, 3) array
    named like forces, an info energy or stress under another name now give one warning
    naming the key; frames whose labels were read give none."""
    import warnings

    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import read, write

    from gpal._validation import check_frames

    frames = []
    for k in range(3):
        a = bulk("Cu", "fcc", a=3.61, cubic=True)
        a.rattle(0.05, seed=k)
        a.calc = EMT()
        b = a.copy()
        b.info["energy"] = a.get_potential_energy()
        b.arrays["dft_forces"] = a.get_forces()
        b.info["dft_virial"] = -a.get_stress(voigt=False) * a.get_volume()
        frames.append(b)
    path = tmp_path / "f.xyz"
    write(path, frames)
    read_back = read(path, ":")
    with pytest.warns(UserWarning) as rec:
        check_frames(read_back)
    text = " ".join(str(r.message) for r in rec)
    assert "3 of 3 frames have no forces label" in text and "'dft_forces'" in text
    assert "--forces-key dft_forces" in text and "no stress label" in text and "--virial-key dft_virial" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for b in read_back:
            b.arrays["forces"] = b.arrays["dft_forces"]
            b.info["stress"] = np.zeros(6)
        check_frames(read_back)


def test_fit_names_a_path_none_and_a_single_atoms():
    """fit("train.xyz") said "frames[0] must be an ase.Atoms, got str" (the path's first
    character); fit(None) raised Python's own "not iterable"; fit(read(path)) (the last
    frame only) fitted one frame without a word."""
    from pathlib import Path

    from ase.build import bulk
    from ase.calculators.emt import EMT

    with pytest.raises(TypeError, match=r"got the path 'train.xyz', not frames; read them first: ase.io.read\(path, \":\"\)"):
        _model().fit("train.xyz")
    with pytest.raises(TypeError, match="got the path"):
        _model().fit(Path("train.xyz"))
    with pytest.raises(TypeError, match="expected a list of labelled ase.Atoms, got NoneType"):
        _model().fit(None)
    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    a.rattle(0.05, seed=3)
    a.calc = EMT()
    a.get_forces()
    with pytest.warns(UserWarning, match="fit got one ase.Atoms, not a list: fitting 1 frame"):
        _model().fit(a)


def test_save_does_not_replace_a_file_that_is_not_a_model(tmp_path):
    """model.save replaced any existing file without a word; now a file that is not a
    gpal model raises FileExistsError and is left as it was, a model saved before is
    replaced (a script run again) and kept under a second name (it was replaced without
    a copy), and overwrite=False/True refuse/replace any."""
    from conftest import cuag_frames

    model = _model().fit(cuag_frames(3))
    path = tmp_path / "mine.npz"
    path.write_bytes(b"the user's own data")
    with pytest.raises(FileExistsError, match=r"mine.npz exists and is not a gpal model; save\(..., "
                                              r"overwrite=True\) replaces it"):
        model.save(path)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "mine")  # (.npz appended)
    np.savez(tmp_path / "arrays.npz", x=np.arange(3))
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "arrays.npz")
    assert path.read_bytes() == b"the user's own data"
    model.save(tmp_path / "model.npz")
    first = (tmp_path / "model.npz").read_bytes()
    other = _model().fit(cuag_frames(2, seed=4))
    with pytest.warns(UserWarning, match=r"model.npz held a gpal model, kept as model.old-\d{8}-\d{6}.npz"):
        other.save(tmp_path / "model.npz")  # again: a model replaces a model, which is kept
    kept, = tmp_path.glob("model.old-*.npz")
    assert kept.read_bytes() == first and len(gpal.load(tmp_path / "model.npz").frames_) == 2
    with pytest.warns(UserWarning, match=r"kept as model.old-\d{8}-\d{6}(-1)?.npz"):
        other.save(tmp_path / "model.npz")  # (a second copy in the same second: a name of its own)
    assert len(list(tmp_path.glob("model.old-*.npz"))) == 2
    with pytest.raises(FileExistsError, match=r"model.npz exists; save"):
        model.save(tmp_path / "model.npz", overwrite=False)
    model.save(path, overwrite=True)
    assert gpal.load(path).predict(cuag_frames(1, seed=9)[0])["energy"] == pytest.approx(
        model.predict(cuag_frames(1, seed=9)[0])["energy"], rel=1e-12)


def test_a_composition_the_training_energies_do_not_determine_warns_once():
    """Trained on one composition, the species' fitted e0 are known only in that ratio:
    a pure cell's energy was off by 0.4-0.5 eV/atom at 3σ of its std, without a word.
    Now one warning per composition; none for the training ratio, nor with frames of
    other compositions or e0 given."""
    import warnings

    from ase.build import bulk
    from ase.calculators.emt import EMT

    def cell(n_ag, seed):
        a = bulk("Cu", "fcc", a=3.8, cubic=True)
        a.numbers[:n_ag] = 47
        a.rattle(0.05, seed=seed)
        a.calc = EMT()
        a.get_forces()
        return a

    model = _model().fit([cell(2, s) for s in range(4)])  # Cu2Ag2 only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(cell(2, 9))  # the training ratio: determined
        model.predict(cell(2, 9).repeat((2, 1, 1)))
    with pytest.warns(UserWarning, match=r"composition Cu4: the energy-labelled frames have the composition\(s\) "
                                         r"Cu2Ag2.*no std includes"):
        model.predict(cell(0, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(cell(0, 10))  # (said once per composition)
        _model().fit([cell(2, 0), cell(1, 1), cell(2, 2)]).predict(cell(0, 9))
        _model(e0={"Cu": -0.1, "Ag": 0.2}).fit([cell(2, s) for s in range(3)]).predict(cell(0, 9))
        # (review) frames of another composition added by update determine it: no warning
        model.update([cell(0, 11)])
        model.predict(cell(0, 12))
        model.predict(cell(4, 12))
    model.fit([cell(2, s) for s in range(4)])  # a new fit forgets what was said
    with pytest.warns(UserWarning, match="composition Cu4:"):
        model.predict(cell(0, 9))
    # through ASE (GPCalculator): the warning points at the user's line, not into ASE
    import gpal

    model.fit([cell(2, s) for s in range(4)])
    a = cell(0, 9)
    a.calc = gpal.GPCalculator(model)
    with pytest.warns(UserWarning, match="composition Cu4:") as caught:
        a.get_potential_energy()
    assert caught[0].filename == __file__


def test_update_with_a_frame_the_model_holds_warns(tmp_path):
    """fit warns for a frame given twice; update added a stored frame again without a word."""
    import warnings

    from conftest import cuag_frames

    frames = cuag_frames(4)
    model = _model().fit(frames[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.update(frames[2:3])
    with pytest.warns(UserWarning, match=r"frames\[1\] repeats a frame the model already holds"):
        again = frames[2].copy()
        again.calc = frames[2].calc
        model.update([frames[3], again])
    with pytest.warns(UserWarning, match=r"frames\[0\] repeats"):
        model.update([frames[0]])
    more = cuag_frames(3, seed=5)
    with pytest.warns(UserWarning, match=r"frames\[1\] repeats frames\[0\]"):
        model.update([more[0], more[0]])
    model.fit(more[:2])  # (review) a new fit: the old frames are no longer held
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.update([frames[0]])
    with pytest.warns(UserWarning, match=r"frames\[0\] repeats a frame the model already holds"):
        model.update([more[1]])
    # (review) the kept keys are the same in another process: a pickled model still sees repeats
    import pickle
    import subprocess
    import sys

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps((model, more[0])))  # (a frame the pickled keys cover)
    code = ("import pickle, sys, warnings; sys.path.insert(0, 'tests')\n"
            f"m, a = pickle.loads(open({str(path)!r}, 'rb').read())\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); m.update([a])\n"
            "print(any('repeats a frame' in str(x.message) for x in w))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip().endswith("True"), out.stderr[-500:]


def test_an_n_sparse_dict_that_leaves_out_a_species_of_the_frames_warns():
    """A species the frames hold but the dict does not name gets no sparse environment and
    learns nothing: said, not silent."""
    frames = cuag_frames(3, seed=1)
    with pytest.warns(UserWarning, match="gives no count to Ag, which the training frames hold"):
        model = _model(n_sparse={"Cu": 8}).fit(frames)
    assert 47 not in set(model.sparse_species_.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model(n_sparse={"Cu": 8, "Ag": 4}).fit(frames)


def test_a_nested_descriptor_setting_of_a_model_without_a_descriptor_names_the_fix():
    """GridSearchCV(SparseGP(), {"descriptor__r_cut": [4, 6]}): sklearn's set_params failed
    with an AttributeError of NoneType; the model says to give a descriptor."""
    model = gpal.SparseGP()
    with pytest.raises(ValueError, match="descriptor is None .*give one"):
        model.set_params(descriptor__r_cut=4.0)
    with pytest.raises(ValueError, match="kernel is None"):
        model.set_params(kernel__zeta=3)
    soap = SOAP(species=["Cu"], r_cut=5.0, n_max=4, l_max=3)
    model.set_params(descriptor=soap, descriptor__n_max=6)  # given together: fine
    assert model.descriptor.n_max == 6
    assert _model().set_params(descriptor__l_max=4).descriptor.l_max == 4


def test_a_species_the_descriptor_knows_but_no_sparse_point_holds_warns_once_at_predict():
    from ase.calculators.emt import EMT

    frames = cuag_frames(3, seed=1)
    cu_only = []
    for a in frames:
        b = a.copy()
        b.numbers[:] = 29
        b.calc = EMT()
        b.calc = SinglePointCalculator(b, energy=b.get_potential_energy(), forces=b.get_forces(),
                                       stress=b.get_stress())
        cu_only.append(b)
    with pytest.warns(UserWarning, match="Ag are in the descriptor but in no training frame"):
        model = _model(e0={"Cu": -0.1, "Ag": 0.2}).fit(cu_only)
    twin = _model(e0={"Cu": -0.1, "Ag": 0.2}).fit(cu_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        twin.update(frames[:1], n_sparse=4)  # (adds the species: no warning that it lacks it)
    assert not [w for w in caught if "no sparse environment" in str(w.message)]
    assert 47 in set(twin.sparse_species_.tolist())
    with pytest.warns(UserWarning, match="Ag: no sparse environment of this species"):
        model.predict(frames[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(frames[1])  # once per model and species
        model.predict(cu_only[0])


def test_wrong_arguments_of_the_api_name_themselves(tmp_path):
    """An API audit's probes: each gave an internal error (AttributeError, IndexError, a
    StopIteration without a message) or was taken silently."""
    from gpal.exceptions import StructureFileError
    from gpal.io import read_frames, write_frames

    frames = cuag_frames(3, seed=1)
    model = _model().fit(frames)
    soap = model.descriptor_
    with pytest.raises(TypeError, match=r"one ase.Atoms, got list \(a list: \[soap.create\(a\)"):
        soap.create(frames)
    with pytest.raises(ValueError, match=r"a pair of species, e.g. \('Cu', 'Cu'\), got 'Cu'"):
        soap.get_location("Cu")
    with pytest.raises(TypeError, match="frames: expected a list of labelled ase.Atoms, got NoneType"):
        model.residuals(None)
    with pytest.raises(ValueError, match="index 100; the model has 3 training frames"):
        model.loo_residuals([100])
    with pytest.raises(ValueError, match="frames\\[\\] must be an integer >= 0, got -1"):
        model.loo_residuals([-1])
    with pytest.raises(ValueError, match="n_sparse must be an integer >= 0, got -3"):
        model.update(frames[:1], n_sparse=-3)
    with pytest.raises(ValueError, match="noise_bounds must be"):
        model.optimize_hyperparameters(noise_bounds=(0.5, 0.1))
    model.optimize_hyperparameters(noise_bounds=(1e-6, np.inf))  # no upper bound: fine
    n_groups = len(model._noise_layout()[0])  # per group, each kept ("fixed", as gpal fit passes them)
    kept = dict(model.noise_)
    model.optimize_hyperparameters(noise_bounds=["fixed"] * n_groups)
    assert model.noise_ == kept
    with pytest.raises(TypeError, match="predict\\(a\\) for a in frames"):
        model.predict(frames)
    with pytest.raises(TypeError, match="oracle kwargs must be a dict"):
        gpal.OracleSpec("ase.calculators.emt:EMT", kwargs=[1])
    write_frames(tmp_path / "f.xyz", frames)
    with pytest.raises(StructureFileError, match="has no frame 100"):
        read_frames(tmp_path / "f.xyz", index=100)


def test_a_soap_without_weighting_and_frames_without_stress_are_said_at_fit():
    """A SOAP built the dscribe way (no weighting) cut every neighbour off abruptly at
    r_cut + 3.7 sigma (an energy jump of 1.5 meV/atom in fcc Cu as the 12th shell crossed
    it), and a periodic fit without stress labels predicted stresses 5-8x too large;
    neither was said."""
    frames = cuag_frames(3)
    bare = [SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces()) for a in frames]
    no_stress = []
    for a, calc in zip(frames, bare):
        b = a.copy()
        b.calc = SinglePointCalculator(b, **calc.results)
        no_stress.append(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpal.SparseGP(SOAP(species=[29, 47], r_cut=4.0, n_max=3, l_max=2, sigma=0.5, periodic=True),
                      n_sparse=10, hyperparameters="fixed").fit(no_stress)
    said = [str(w.message) for w in caught]
    assert any("the descriptor has no weighting" in m and "at 5.86 Å (r_cut + 3.7 sigma)" in m for m in said), said
    assert any("no training frame has a stress label" in m for m in said), said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        poly = {"function": "poly", "r0": 4.0, "c": 1, "m": 1}
        gpal.SparseGP(SOAP(species=[29, 47], r_cut=4.0, n_max=3, l_max=2, sigma=0.5, periodic=True, weighting=poly),
                      n_sparse=10, hyperparameters="fixed").fit(frames)  # (smooth, stress labels: neither)
    said = [str(w.message) for w in caught]
    assert not any("no weighting" in m or "stress label" in m for m in said), said


def test_repr_shows_the_settings_that_are_not_the_defaults():
    """A plain model, a Δ-model and an n_sparse=100 model printed the same."""
    plain = repr(gpal.SparseGP())
    assert plain == "SparseGP(kernel=auto, energy_noise=auto, force_noise=auto, stress_noise=auto)"
    delta = repr(gpal.SparseGP(n_sparse=100, baseline="lj"))
    assert delta.endswith(", n_sparse=100, baseline='lj')")
    soap = SOAP(species=[29], r_cut=4.0, n_max=3, l_max=2, periodic=True)
    assert f"descriptor={soap!r}" in repr(gpal.SparseGP(soap))


def _rattled_cu(n: int, sigma: float, seed: int) -> list:
    """``n`` rattled 16-atom Cu cells (Å std ``sigma``) with EMT labels as single points."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
        a.positions += rng.normal(0, sigma, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    return frames


def _small_cu_soap():
    from gpal import SOAP

    return SOAP(["Cu"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5, periodic=True,
                weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1})


def test_an_energy_far_from_its_compositions_frames_is_named_in_fit_and_update():
    """+1000 eV on one 32-atom frame (another reference, a wrong value) moved e0 and every
    energy the model predicts by 2.6 eV/atom (2.8 through update), and no warning named it."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from gpal import SparseGP

    frames = _rattled_cu(8, 0.05, seed=0)
    bad = frames[5].copy()
    bad.calc = SinglePointCalculator(bad, energy=frames[5].get_potential_energy() + 1000.0,
                                     forces=frames[5].get_forces())
    soap = _small_cu_soap()
    with pytest.warns(UserWarning, match=r"frames\[5\] .* eV/atom against a median of .* over 8 frames"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(frames[:5] + [bad] + frames[6:])
    model = SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(frames[:5] + frames[6:])
    moved = bad.copy()  # (not a repeat of frames[5])
    moved.positions[0] += 0.01
    moved.calc = SinglePointCalculator(moved, energy=bad.get_potential_energy(), forces=bad.get_forces())
    with pytest.warns(UserWarning, match=r"frames\[1\] .* eV/atom against a median of .* over 9 frames"):
        model.update([frames[5], moved])
    with warnings.catch_warnings(record=True) as caught:  # plausible energies: not named
        warnings.simplefilter("always")
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(frames)
    assert not [w for w in caught if "energy labels far from" in str(w.message)]


def test_a_fit_that_explains_little_of_the_forces_says_so():
    """n_sparse=2 on ten Cu frames: the evidence put the force noise near the forces'
    own size, and the model predicted forces no better than zero, unsaid."""
    from gpal import SparseGP

    frames = _rattled_cu(10, 0.15, seed=1)
    soap = _small_cu_soap()
    with pytest.warns(UserWarning, match=r"leaves much of the forces unexplained \(2 sparse points for 160"):
        SparseGP(soap, n_sparse=2).fit(frames)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(soap, n_sparse=60).fit(frames)
    assert not [w for w in caught if "unexplained" in str(w.message)]


def test_a_noise_far_below_any_oracles_precision_is_warned_of():
    """force_noise=1e-8 with the rest chosen by the evidence took the energy noise and the
    signal variance to their bounds (energies 0.56 eV/atom off), with nothing said of why."""
    from gpal import SparseGP

    frames = cuag_frames(3, seed=2)
    with pytest.warns(UserWarning, match=r"force_noise = 1e-08 eV/Å is far below any oracle's precision"):
        SparseGP(n_sparse=10, force_noise=1e-8, hyperparameters="fixed").fit(frames)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(n_sparse=10, force_noise=1e-3, hyperparameters="fixed").fit(frames)
    assert not [w for w in caught if "precision" in str(w.message)]


@pytest.mark.parametrize("hyperparameters", ["fixed", "evidence"])
def test_failed_refit_leaves_the_model_as_it_was(tmp_path, hyperparameters):
    """A fit of a fitted model that fails part-way (here: overlapping atoms in a frame with
    shifted energies, found after the new reference energies were set) leaves the earlier
    model whole: the same predictions, calibration and saved file, not the new e0 with
    the old weights (304 eV for a 0.73 eV frame) or a 'descriptor changed' error."""
    train = cuag_frames(6, seed=3)
    kw = {} if hyperparameters == "fixed" else {"energy_noise": 1e-3}
    m = _model(**kw) if hyperparameters == "fixed" else gpal.SparseGP(n_sparse=12, random_state=0, **kw)
    m.fit(train)
    m.set_calibration(forces_std={"scale": 2.0})
    before = m.predict(train[0], return_std=True)
    bad = []
    for k, a in enumerate(cuag_frames(4, seed=4)):
        a = a.copy()
        if k == 3:
            a.positions[1] = a.positions[0] + [0.1, 0.0, 0.0]
        a = label(a)
        a.calc.results["energy"] += 1.0 * len(a)
        bad.append(a)
    with pytest.raises(gpal.OverlappingAtomsError):
        m.fit(bad)
    after = m.predict(train[0], return_std=True)
    assert after["energy"] == before["energy"]
    np.testing.assert_array_equal(after["forces"], before["forces"])
    np.testing.assert_array_equal(after["energies_std"], before["energies_std"])
    assert m.calibration_of("forces_std").scale == 2.0
    assert len(m.frames_) == len(train)
    again = gpal.load(m.save(tmp_path / "m.npz"))
    assert again.predict(train[0])["energy"] == before["energy"]


def test_bulk_frames_that_lost_their_periodic_boundaries_are_named():
    """3 of 8 bulk frames read without pbc were fitted as clusters with bare surfaces, their
    bulk labels kept (force RMSE 0.019 eV/Å against 0.0011), with no word; a cluster or a
    molecule in a box is no such frame."""
    from ase.build import molecule
    from ase.cluster import Icosahedron

    from conftest import cu_frames

    frames = cu_frames(6, seed=5, size=(2, 2, 2))
    for a in frames[:2]:
        a.pbc = False
    with pytest.warns(UserWarning, match=r"frames\[0\], frames\[1\]: no periodic boundaries, but the atoms fill "
                                         r"the cell to its faces"):
        gpal.SparseGP(n_sparse=20, hyperparameters="fixed").fit(frames)
    from gpal._validation import _fills_its_cell

    cluster = Icosahedron("Cu", 2)
    cluster.center(vacuum=4.0)
    methanol = molecule("CH3OH")
    methanol.center(vacuum=1.0)
    assert not _fills_its_cell(cluster) and not _fills_its_cell(methanol) and not _fills_its_cell(molecule("H2O"))
    assert not _fills_its_cell(cu_frames(1, seed=5, size=(2, 2, 2))[0])  # (periodic)
