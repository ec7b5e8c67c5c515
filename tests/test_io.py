"""gpal.io: reading frames (errors name the file) and relabelling GAP-style keys."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.stress import voigt_6_to_full_3x3_stress

import gpal
from gpal import StructureFileError
from gpal.io import read_frames, relabel_frames

from conftest import cu_frames


def _gap_style(frames, stress_form: str):
    """Copies carrying their labels only under custom keys, the stress in ``stress_form``."""
    out = []
    for a in frames:
        b = a.copy()
        b.calc = None
        b.info["REF_energy"] = a.get_potential_energy()
        b.arrays["REF_forces"] = a.get_forces().copy()
        s = a.get_stress()
        if stress_form == "stress3x3":
            b.info["REF_stress"] = voigt_6_to_full_3x3_stress(s)
        elif stress_form == "virial_voigt":
            b.info["REF_virial"] = -s * a.get_volume()
        out.append(b)
    return out


@pytest.mark.parametrize("form", ["stress3x3", "virial_voigt"])
def test_relabel_stress_forms(form):
    frames = cu_frames(2, seed=7)
    keys = {"stress_key": "REF_stress"} if form == "stress3x3" else {"virial_key": "REF_virial"}
    out = relabel_frames(_gap_style(frames, form), energy_key="REF_energy", forces_key="REF_forces", **keys)
    for a, b in zip(frames, out):
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy())
        np.testing.assert_allclose(b.get_forces(), a.get_forces())
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-12)


def test_frames_without_a_key_lack_that_label_only():
    frames = _gap_style(cu_frames(2, seed=8), "virial_voigt")
    del frames[1].info["REF_virial"]
    mol = molecule("H2O")
    mol.info["REF_energy"] = -14.0  # an isolated molecule: energy, no virial
    out = relabel_frames(frames + [mol], energy_key="REF_energy", virial_key="REF_virial")
    assert "stress" in out[0].calc.results and "stress" not in out[1].calc.results
    assert out[2].calc.results == {"energy": -14.0, "free_energy": -14.0}  # no forces, no stress


def test_relabel_refuses_typos_and_both_stress_keys():
    frames = _gap_style(cu_frames(1), "virial_voigt")
    with pytest.raises(StructureFileError, match="no frame has the arrays key 'ref_forces'"):
        relabel_frames(frames, forces_key="ref_forces", source="x.xyz")
    with pytest.raises(StructureFileError, match="not both"):
        relabel_frames(frames, stress_key="a", virial_key="b")
    frames[0].info["REF_stress"] = np.arange(5.0) * 1e-3  # (written on; it failed only in a fit)
    with pytest.raises(StructureFileError, match=r"x.xyz frame 0: stress has shape \(5,\), expected \(6,\)"):
        relabel_frames(frames, stress_key="REF_stress", source="x.xyz")


def test_read_frames_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        read_frames(tmp_path / "nope.xyz")
    bad = tmp_path / "bad.xyz"
    bad.write_text("three\nnot a header\n")
    with pytest.raises(StructureFileError, match="bad.xyz cannot be read as frames"):
        read_frames(bad)
    with pytest.raises(StructureFileError, match="is a folder"):
        read_frames(tmp_path)


def test_labelled_copies_positions_and_labels_only():
    from gpal.io import labelled

    a = cu_frames(1, seed=3)[0]
    a.info["tag"] = "kept?"
    f = np.arange(3 * len(a), dtype=float).reshape(-1, 3)
    b = labelled(a, energy=-1.5, forces=f, stress=np.ones(6))
    f[0, 0] = 99.0  # the copy owns its arrays
    assert b is not a and "tag" not in b.info and b.get_forces()[0, 0] == 0.0
    np.testing.assert_array_equal(b.positions, a.positions)
    assert b.get_potential_energy() == b.get_potential_energy(force_consistent=True) == -1.5
    np.testing.assert_array_equal(b.get_stress(), np.ones(6))
    c = labelled(a, energy=2.0, bare=False)
    assert c.info["tag"] == "kept?" and set(c.calc.results) == {"energy", "free_energy"}


def test_relabel_takes_the_standard_names_from_where_ase_put_them(tmp_path):
    """--energy-key energy / --forces-key forces name labels ASE's reader moved into the
    calculator; frames labelled in info/arrays write back as extended XYZ."""
    from ase.io import write

    from gpal.io import write_frames

    a = cu_frames(1, seed=3)[0]
    b = a.copy()
    b.calc = None
    b.info["energy"] = a.get_potential_energy()
    b.arrays["forces"] = a.get_forces().copy()
    write(tmp_path / "std.xyz", b, format="extxyz")
    back = read_frames(tmp_path / "std.xyz")
    for keys in ({"energy_key": "energy"}, {"forces_key": "forces"}):
        out = relabel_frames(back, **keys)
        assert out[0].get_potential_energy() == pytest.approx(a.get_potential_energy())
        np.testing.assert_allclose(out[0].get_forces(), a.get_forces())
    out = relabel_frames([b])  # labels in info/arrays, in memory
    write_frames(tmp_path / "out.xyz", out)
    c = read_frames(tmp_path / "out.xyz")[0]
    assert c.get_potential_energy() == pytest.approx(a.get_potential_energy())


def test_a_gap_style_virial_in_the_info_line_is_read_as_stress(tmp_path):
    """GAP's files carry energy= and virial="..." in the info line; ASE leaves the virial
    in atoms.info. It is a stress label (stress = -virial / volume) without any key given."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from gpal._validation import frame_labels

    frames = []
    for k in range(3):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
        a.rattle(0.05, seed=k)
        a.calc = EMT()
        b = a.copy()
        b.info["energy"] = a.get_potential_energy()
        b.arrays["forces"] = a.get_forces()
        b.info["virial"] = (-a.get_stress(voigt=False) * a.get_volume()).ravel()  # 9 numbers
        frames.append((a, b))
    ase.io.write(tmp_path / "gap.xyz", [b for _, b in frames])
    back = ase.io.read(tmp_path / "gap.xyz", ":")
    for (a, _), c in zip(frames, back):
        np.testing.assert_allclose(frame_labels(c).stress, a.get_stress(), atol=1e-10)
    model = gpal.SparseGP(n_sparse=10, hyperparameters="fixed").fit(back)
    assert np.count_nonzero(model.obs_group_ == 2) == 6 * len(back)  # six stress rows per frame


def test_a_bad_label_names_its_frame(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    from gpal.exceptions import MissingLabelsError

    frames = cu_frames(3, seed=4)
    bad = frames[2].copy()
    bad.calc = SinglePointCalculator(bad, energy=1.0, forces=np.zeros((len(bad) - 1, 3)))
    with pytest.raises(MissingLabelsError, match=r"frames\[2\]: forces have shape \(\d+, 3\), expected"):
        gpal.SparseGP(n_sparse=5, hyperparameters="fixed").fit(frames[:2] + [bad])


def test_a_prefixed_virial_left_unread_warns():
    frames = cu_frames(2, seed=6)
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.info["REF_virial"] = (-a.get_stress(voigt=False) * a.get_volume()).ravel()
    with pytest.warns(UserWarning, match="REF_virial is in the frames but not read"):
        relabel_frames(frames, energy_key="REF_energy", forces_key="REF_forces")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = relabel_frames(frames, energy_key="REF_energy", forces_key="REF_forces", virial_key="REF_virial")
    np.testing.assert_allclose(out[0].get_stress(), frames[0].get_stress(), atol=1e-10)


def test_a_forces_key_found_in_the_info_says_so():
    frames = cu_frames(2, seed=8)
    for a in frames:
        a.info["REF_forces"] = a.get_forces().ravel()  # a flat 3N vector in the info line
    with pytest.raises(StructureFileError, match="'REF_forces' is an info key: forces are per-atom arrays"):
        relabel_frames(frames, forces_key="REF_forces")


def test_a_prefixed_virials_key_as_mace_names_it_warns_too():
    frames = cu_frames(2, seed=7)
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy()
        a.info["REF_virials"] = (-a.get_stress(voigt=False) * a.get_volume()).ravel()
    with pytest.warns(UserWarning, match="REF_virials is in the frames but not read"):
        relabel_frames(frames, energy_key="REF_energy")


def test_a_users_file_named_as_the_old_temporary_survives_a_save(tmp_path):
    """A save writes a temporary file of its own: ``model.npz.tmp`` of the user stays."""
    model = gpal.SparseGP(n_sparse=5, hyperparameters="fixed").fit(cu_frames(2, seed=1))
    theirs = tmp_path / "model.npz.tmp"
    theirs.write_text("the user's notes")
    model.save(tmp_path / "model.npz")
    model.save(tmp_path / "model.npz", overwrite=True)  # (and replacing the model)
    assert theirs.read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "model.npz.tmp"]
    assert len(gpal.SparseGP.load(tmp_path / "model.npz").frames_) == 2


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_save_that_fails_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch, error):
    model = gpal.SparseGP(n_sparse=5, hyperparameters="fixed").fit(cu_frames(2, seed=1))
    model.save(tmp_path / "model.npz")
    before = (tmp_path / "model.npz").read_bytes()

    def cut(fh, **arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise error

    monkeypatch.setattr(np, "savez", cut)
    with pytest.raises(type(error)):
        model.save(tmp_path / "model.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert (tmp_path / "model.npz").read_bytes() == before


def test_atomic_write_keeps_the_umask_permissions_and_fresh_names(tmp_path):
    import os
    import stat

    from gpal.io import atomic_write, temporary_name, temporary_of

    with atomic_write(tmp_path / "a.json") as fh:
        fh.write("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    names = {temporary_name("train.xyz") for _ in range(20)}
    assert len(names) == 20 and {temporary_of(n) for n in names} == {"train.xyz"}
    assert temporary_of("train.xyz.tmp") is None and temporary_of(".train.xyz") is None


def test_a_temporary_file_left_in_a_run_folder_is_the_runs(tmp_path):
    """A kill mid-write leaves ``.NAME.XXXXXXXX.tmp`` of a run file: gpal's, not the user's."""
    from gpal.learning.learner import foreign_files

    for name in (".train.xyz.0a1b2c3d.tmp", "state.json.tmp", "notes.tmp", ".notes.0a1b2c3d.tmp"):
        (tmp_path / name).write_text("")
    assert foreign_files(tmp_path) == [".notes.0a1b2c3d.tmp", "notes.tmp"]


_BOTH_SIGNALS = """
import os, signal, sys
from gpal.io import interrupts_deferred
mode, order = sys.argv[1], sys.argv[2]
if mode == "raising":  # gpal learn's: SIGTERM raised as an interrupt that names it
    def on_term(num, frame):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_term)
try:
    with interrupts_deferred():
        for name in order.split(","):
            os.kill(os.getpid(), getattr(signal, name))
        print("block done", flush=True)
except KeyboardInterrupt as exc:
    print("interrupt", exc.args, "after", exc.__context__ is not None, flush=True)
    sys.exit(3)
print("went on", flush=True)
"""


@pytest.mark.parametrize("order", ["SIGINT,SIGTERM", "SIGTERM,SIGINT"])
@pytest.mark.parametrize("mode", ["default", "raising"])
def test_a_ctrl_c_and_a_sigterm_held_together_are_both_delivered(tmp_path, mode, order):
    """Both signals arriving while a label is written: after the block neither is lost
    (before, SIGINT's KeyboardInterrupt left the loop and the SIGTERM was dropped: the
    process went on); SIGTERM comes last, so the process ends as SIGTERM ends it."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "both.py"
    script.write_text(_BOTH_SIGNALS)
    proc = subprocess.run([sys.executable, str(script), mode, order], capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "block done" in proc.stdout and "went on" not in proc.stdout, proc.stdout + proc.stderr
    if mode == "default":
        assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr
    else:  # the SIGTERM's interrupt, raised while Ctrl-C's propagated
        assert proc.returncode == 3 and "interrupt ('SIGTERM',) after True" in proc.stdout, proc.stdout


def test_the_free_energy_is_the_energy_label_where_a_frame_has_both(tmp_path):
    """With electronic smearing (DFT of metals) ASE calculators give ``energy`` (extrapolated
    to zero smearing) and ``free_energy`` (whose gradient the forces are); gpal learned
    ``energy``, inconsistent with the forces by the smearing's T*S."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from gpal._validation import frame_labels
    from gpal.learning.oracle import _compute

    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.calc = SinglePointCalculator(a, energy=-1.0, free_energy=-1.25, forces=np.zeros((4, 3)))
    assert frame_labels(a).energy == -1.25
    ase.io.write(tmp_path / "f.xyz", a)  # (extxyz keeps both; the file's frame labels the same)
    assert frame_labels(ase.io.read(tmp_path / "f.xyz")).energy == -1.25
    b = a.copy()
    b.info["energy"], b.info["free_energy"] = -1.0, -1.25
    assert frame_labels(b).energy == -1.25

    class Smeared(EMT):  # a reference code with smearing: free energy = energy - T*S
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["free_energy"] = self.results["energy"] - 0.1

    c = bulk("Cu", "fcc", a=3.6, cubic=True)
    out = _compute(Smeared(), c.numbers, c.positions, c.cell, c.pbc, want_stress=True)
    c.calc = EMT()
    assert out["energy"] == pytest.approx(c.get_potential_energy() - 0.1, abs=1e-12)


def test_writers_replace_only_what_gpal_wrote(tmp_path):
    """save, the plot functions, compare_kernels(plot=) and write_frames replaced any file
    at their path without a word (a user's figure1.png, a frames file)."""
    from gpal.calibration import is_gpal_plot, plot_parity, plot_z_histogram
    from gpal.io import write_frames

    rng = np.random.default_rng(0)
    err, std = rng.normal(size=50), np.ones(50)
    mine = tmp_path / "figure1.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n a figure of the user's")
    with pytest.raises(FileExistsError, match="figure1.png exists and is not a plot gpal wrote"):
        plot_parity(err, err + 0.1, mine, units="eV/Å")
    assert mine.read_bytes().endswith(b"a figure of the user's")
    plot_parity(err, err + 0.1, mine, units="eV/Å", overwrite=True)
    assert is_gpal_plot(mine)
    plot_z_histogram(err, std, mine)  # (gpal's own plot: a cell run again replaces it)
    with pytest.raises(FileExistsError, match="figure1.png exists; overwrite=True"):
        plot_z_histogram(err, std, mine, overwrite=False)
    plot_z_histogram(err, std, tmp_path / "curve")  # (the path as given: no .png added)
    assert is_gpal_plot(tmp_path / "curve") and not (tmp_path / "curve.png").exists()
    # a cell run again with a vector format: gpal's own file ("cc.pdf exists and is not a
    # plot gpal wrote" had been raised for the file written one line before)
    for suffix in ("pdf", "svg", "eps"):
        vec = tmp_path / f"cc.{suffix}"
        plot_z_histogram(err, std, vec)
        assert is_gpal_plot(vec)
        plot_z_histogram(err, std, vec)
        theirs = tmp_path / f"theirs.{suffix}"
        theirs.write_bytes(vec.read_bytes().replace(b"gpal", b"mine"))
        assert not is_gpal_plot(theirs)
    plot_z_histogram(err, std, tmp_path / "z.jpg")  # (a bitmap format without gpal's mark)
    with pytest.raises(FileExistsError, match=r"z.jpg exists and is not a plot gpal can recognise \(it marks "
                                              r"the PNG, PDF, SVG, EPS, PS files it writes, not JPG\)"):
        plot_z_histogram(err, std, tmp_path / "z.jpg")
    plot_z_histogram(err, std, tmp_path / "z.jpg", overwrite=True)

    frames = cu_frames(2)
    out = tmp_path / "frames.xyz"
    out.write_text("my notes\n")
    with pytest.raises(FileExistsError, match="frames.xyz exists; write_frames"):
        write_frames(out, frames)
    assert out.read_text() == "my notes\n"
    write_frames(out, frames, overwrite=True)
    assert len(ase.io.read(out, ":")) == 2


def test_compare_kernels_refuses_a_users_plot_file_before_any_fit(tmp_path):
    mine = tmp_path / "figure1.png"
    mine.write_bytes(b"mine")
    frames = cu_frames(3)
    with pytest.raises(FileExistsError, match="plot: .*figure1.png exists and is not a plot gpal wrote"):
        gpal.compare_kernels(frames[:2], frames[2:], plot=str(mine), progress=False)
    assert mine.read_bytes() == b"mine"
    with pytest.raises(TypeError, match="train: got the path 'train.xyz', not frames"):
        gpal.compare_kernels("train.xyz", frames, progress=False)


def test_a_reference_beside_other_labels_is_named_once_per_frame():
    """A GAP/QUIP evaluation file: energy=/forces= are a model's predictions, REF_energy
    and REF_forces the reference. gpal validate scored the old model's forces (0.30 eV/Å
    against 0.0023 with the reference) and gpal fit trained on them, with no word; given
    --energy-key alone, the predicted forces were mixed in silently. Now each is named,
    once for the same frames, and nothing is said when the reference is read."""
    import warnings

    from gpal._validation import check_frames
    from gpal.io import labelled

    ref = cu_frames(3, seed=21)
    evaluation = []
    for k, a in enumerate(ref):
        b = labelled(a, energy=a.get_potential_energy() + 0.05, forces=a.get_forces() + 0.3)
        b.info["REF_energy"] = a.get_potential_energy()
        b.arrays["REF_forces"] = a.get_forces().copy()
        evaluation.append(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_frames(evaluation, what="test.xyz")
        check_frames(evaluation)  # (the same frames again, as fit and validate check them)
    said = [str(w.message) for w in caught]
    assert len(said) == 2 and all(m.startswith("test.xyz: 3 of 3 frames hold 'REF_") for m in said)
    assert any("pass --forces-key REF_forces" in m for m in said)
    assert any("pass --energy-key REF_energy" in m for m in said)
    with pytest.warns(UserWarning, match="hold 'REF_forces' beside the forces gpal reads"):
        check_frames(relabel_frames(evaluation, energy_key="REF_energy"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_frames(relabel_frames(evaluation, energy_key="REF_energy", forces_key="REF_forces"))
        same = [labelled(a, energy=a.get_potential_energy(), forces=a.get_forces()) for a in ref]
        for b, a in zip(same, ref):  # (a copy of the labels under REF_ names: nothing to say)
            b.info["REF_energy"] = a.get_potential_energy()
            b.arrays["REF_forces"] = a.get_forces().copy()
        check_frames(same)


def test_frames_with_a_dict_in_info_write_without_a_warning_and_keep_their_labels(tmp_path):
    """A slab built with ase's add_adsorbate carries info['adsorbate_info'], a dict the
    extxyz writer skips with a warning at every write (9 per run of such a slab)."""
    import warnings

    from ase.build import add_adsorbate, fcc111

    from gpal.io import labelled, write_frames

    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    assert isinstance(slab.info["adsorbate_info"], dict)
    frame = labelled(slab, energy=-1.5, forces=np.ones((len(slab), 3)), bare=False)
    frame.info["gpal_reason"] = "uncertain"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_frames(tmp_path / "s.xyz", [frame])
    back = ase.io.read(tmp_path / "s.xyz")
    assert back.get_potential_energy() == -1.5 and np.all(back.get_forces() == 1.0)
    assert back.info["gpal_reason"] == "uncertain"
    assert "adsorbate_info" in frame.info  # (the frame given is not changed)


def test_first_mistakes_with_paths_and_single_frames_say_what_to_pass(tmp_path):
    """A single Atoms, or a path where frames go (or frames where a path goes), gave an
    AttributeError ('Atom' object has no attribute 'info', 'str' object ...) or a pathlib
    TypeError; predict on a path said only that it wanted an ase.Atoms."""
    from gpal.io import write_frames

    frames = cu_frames(2)
    with pytest.raises(TypeError, match=r"one Atoms given: pass \[atoms\]"):
        write_frames(tmp_path / "a.xyz", frames[0])
    with pytest.raises(TypeError, match="got list as the path"):
        write_frames(frames, tmp_path / "a.xyz")
    with pytest.raises(TypeError, match="read it first"):
        relabel_frames(str(tmp_path / "a.xyz"), energy_key="energy")
    with pytest.raises(TypeError, match=r"one Atoms given: pass \[atoms\]"):
        relabel_frames(frames[0], energy_key="energy")
    model = gpal.SparseGP(n_sparse=10, hyperparameters="fixed").fit(frames)
    with pytest.raises(TypeError, match=r"the path 'train.xyz'\? read the structure first"):
        model.predict("train.xyz")
    with pytest.raises(TypeError, match="give an ASE calculator instance"):
        gpal.ActiveLearner(frames[0], None, run_dir=tmp_path / "run")
