"""The gpal command line: every command runs, --help works, outputs say what they are."""

from __future__ import annotations

import copy
import os
import json
import re
import signal
import tomllib
import warnings

import numpy as np
import pytest
from ase.io import read, write

import gpal
from gpal.cli import config
from gpal.cli import main

from conftest import cu_frames, cuag_frames

SMALL = ["--r-cut", "4", "--n-max", "4", "--l-max", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write(d / "train.xyz", cu_frames(6, seed=1, size=(2, 2, 2)))
    write(d / "test.xyz", cu_frames(3, seed=2, size=(2, 2, 2)))
    write(d / "val.xyz", cu_frames(3, seed=3, size=(2, 2, 2)))
    return d


@pytest.mark.parametrize("cmd", ["learn", "fit", "md", "validate", "info", "compare-kernels", "ipi"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: gpal" in capsys.readouterr().out


def test_info_and_md_name_an_energy_calibration(files, tmp_path, capsys):
    """A model whose only calibration is the learner's energy_std factor: info shows it,
    and md (its calculator calibrates by default) says energy_std is calibrated."""
    model = tmp_path / "model.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "20", *SMALL]) == 0
    gpal.load(model).set_calibration(energy_std=0.1).save(tmp_path / "energy.npz")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "energy.npz")]) == 0
    out = capsys.readouterr().out
    assert "energy_std scale 0.1 (energies_std raw)" in out and "calibration : none" not in out
    write(tmp_path / "start.xyz", cu_frames(1, seed=4, size=(2, 2, 2))[0])
    assert main(["md", str(tmp_path / "energy.npz"), str(tmp_path / "start.xyz"), "-o", str(tmp_path / "md.traj"),
                 "--steps", "4", "--interval", "2", "-q"]) == 0
    assert "(eV), step, time_fs and temperature_K in each frame's info, energy_std calibrated, forces_std and energies_std raw" in capsys.readouterr().out
    frames = read(tmp_path / "md.traj", ":")
    assert len(frames) == 3 and all("energy_std" in a.info for a in frames)  # the start frame too
    # a recalibration of the forces says the energy factor stays
    assert main(["validate", str(tmp_path / "energy.npz"), str(files / "test.xyz"), "--no-plots",
                 "--calibrate", str(files / "val.xyz"), "-o", str(tmp_path / "recal.npz")]) == 0
    assert "(its energy_std factor 0.1, from the learner's labels, is kept)" in capsys.readouterr().out
    assert set(gpal.load(tmp_path / "recal.npz").calibration_) == {"forces_std", "energy_std"}


def test_info_says_at_what_temperatures_an_active_learner_labelled_the_frames(tmp_path, capsys):
    # gpal fit of a run's train.xyz keeps each label's gpal_temperature (K), gpal info shows
    # their range (a run continuing the model counts them there)
    frames = cu_frames(4, seed=1, size=(2, 2, 2))
    for a, T in zip(frames[1:], (300.0, 612.5, 900.0)):
        a.info["gpal_temperature"] = T
    write(tmp_path / "train.xyz", frames)
    model = tmp_path / "model.npz"
    assert main(["fit", str(tmp_path / "train.xyz"), "-o", str(model), "--n-sparse", "30"] + SMALL) == 0
    assert [a.info.get("gpal_temperature") for a in gpal.load(model).frames_] == [None, 300.0, 612.5, 900.0]
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    assert "training    : 4 frames, 128 atoms; 3 labelled by an active learner at 300-900 K\n" in capsys.readouterr().out


def test_fit_info_validate_md(files, capsys):
    model = files / "model.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "60"]) == 0
    fitted = gpal.load(model)
    assert fitted.alpha_ is not None
    # defaults as SparseGP(): zeta, l_max and noises chosen by the evidence, printed, starred
    out = capsys.readouterr().out
    best = next(r for r in fitted.evidence_ if r["selected"])
    assert fitted.kernel_.zeta == best["zeta"] and fitted.descriptor_.l_max == best["l_max"]
    assert fitted.descriptor_.sigma == best["sigma"]
    starred = re.compile(rf"\* zeta {best['zeta']} l_max {best['l_max']} sigma {best['sigma']:g}.*: log ML")
    assert starred.search(out)
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "species     : Cu\n" in out
    assert f"kernel      : NormalizedDotProduct(zeta={best['zeta']}, signal_variance=" in out
    assert starred.search(out)
    assert re.search(r"noises      : energy \S+ eV/atom, force \S+ eV/Å, stress \S+ eV/Å\^3", out)
    assert "calibration : none" in out
    assert "sparse      : 60 environments (Cu 60)" in out and "training    : 6 frames, 192 atoms\n" in out

    # the model's own training frames as a test set: said so (their errors are fit residuals)
    assert main(["validate", str(model), str(files / "train.xyz"), "--no-plots"]) == 0
    assert "6 of the 6 test frames in" in capsys.readouterr().err
    assert main(["validate", str(model), str(files / "test.xyz"), "--no-plots"]) == 0
    assert "training frames" not in capsys.readouterr().err

    # --calibrate never overwrites the input model silently
    before = model.read_bytes()
    assert main(["validate", str(model), str(files / "test.xyz"), "--calibrate", str(files / "val.xyz")]) == 2
    assert "-o OUT.npz, or --in-place" in capsys.readouterr().err
    assert model.read_bytes() == before

    plots = files / "plots"
    assert main(["validate", str(model), str(files / "test.xyz"), "--calibrate", str(files / "val.xyz"),
                 "--plots", str(plots), "-o", str(files / "calibrated.npz")]) == 0
    out = capsys.readouterr().out
    assert "force stds calibrated (raw x " in out
    assert "force RMSE" in out and "eV/Å" in out and "meV/atom" in out and "force ZMS" in out
    # the test frames carry stress: its RMSE, in GPa, from the same predictions
    test_frames = read(files / "test.xyz", ":")
    ref = gpal.load(model)
    s_err = np.concatenate([ref.predict(a)["stress"] - a.get_stress() for a in test_frames])
    line = next(x for x in out.splitlines() if x.startswith("stress RMSE"))
    assert float(line.split()[2]) == pytest.approx(160.21766 * np.sqrt(np.mean(s_err ** 2)), rel=1e-3)
    # the coverage of the stored 90 % interval (forces_interval90) on the test frames
    cal_model = gpal.load(files / "calibrated.npz")
    test_frames = read(files / "test.xyz", ":")
    hits = [np.abs(cal_model.predict(a, forces_std=True)["forces"] - a.get_forces())
            <= cal_model.predict(a, forces_std=True, calibrated=True)["forces_interval90"] for a in test_frames]
    cov = float(np.mean(np.concatenate([h.ravel() for h in hits])))
    line = next(x for x in out.splitlines() if x.startswith("force coverage, 90 % conformal"))
    assert float(line.split()[-2]) == pytest.approx(cov, abs=6e-4)
    for name in ("parity_forces", "parity_energy", "calibration_curve", "error_vs_uncertainty", "z_histogram"):
        assert (plots / f"{name}.png").stat().st_size > 1000
    assert model.read_bytes() == before
    stored = gpal.load(files / "calibrated.npz").calibration_["forces_std"]
    scale = stored["scale"]
    # the keys the active learner writes and its stopping rule reads (conformal_q90)
    # (novelty_scale when the validation frames support a novelty term)
    assert {"scale", "noise_scale", "conformal_q90"} <= set(stored) <= {
        "scale", "noise_scale", "conformal_q90", "novelty_scale", "novelty_max"}
    stamp = {p.name: p.read_bytes() for p in plots.iterdir()}
    assert main(["validate", str(model), str(files / "test.xyz"), "--plots", str(plots)]) == 2
    assert "(plots of an earlier run)" in capsys.readouterr().err  # nothing replaced unasked
    assert {p.name: p.read_bytes() for p in plots.iterdir()} == stamp
    assert main(["validate", str(model), str(files / "test.xyz"), "--plots", str(plots), "--overwrite"]) == 0
    assert "force stds raw (the model stores no calibration" in capsys.readouterr().out
    assert main(["info", str(files / "calibrated.npz")]) == 0
    assert f"forces_std scale {scale:.4g}" in capsys.readouterr().out

    # md writes extended XYZ with per-atom std columns, not header entries (and keeps the
    # start's FixAtoms, which it honours, as extxyz's move_mask)
    from ase.constraints import FixAtoms

    start = cu_frames(1, seed=4, size=(2, 2, 2))[0]
    start.set_constraint(FixAtoms(indices=[0, 5]))
    write(files / "start.xyz", start)
    out_xyz = files / "md.xyz"
    assert main(["md", str(files / "calibrated.npz"), str(files / "start.xyz"), "-o", str(out_xyz),
                 "--steps", "20", "--interval", "5", "-q"]) == 0
    assert ("per-atom columns energies_std (eV) and forces_std (eV/Å), the total energy_std (eV) in each "
            "frame's info, forces_std calibrated, energy_std and energies_std raw") in capsys.readouterr().out
    traj = read(out_xyz, ":")
    assert len(traj) == 5
    header = out_xyz.read_text().splitlines()[1]
    assert "energies_std:R:1" in header and "forces_std:R:3" in header
    assert "forces_interval90:R:3" in header  # the calibrated model stores a conformal quantile
    q90 = gpal.load(files / "calibrated.npz").calibration_["forces_std"]["conformal_q90"]
    first = read(out_xyz, 0)
    np.testing.assert_allclose(first.arrays["forces_interval90"], q90 * first.arrays["forces_std"], atol=1e-7)
    for a in traj:
        assert a.arrays["energies_std"].shape == (32,) and a.arrays["forces_std"].shape == (32, 3)
        assert np.all(a.arrays["forces_std"] > 0)
        assert "energies_std" not in a.info and a.info["gpal_std"] == "forces_std calibrated, energy_std and energies_std raw"
        assert a.info["energy_std"] > 0  # the total energy's, as the note says
        assert a.get_forces().shape == (32, 3)
        assert [c.get_indices().tolist() for c in a.constraints] == [[0, 5]]
        np.testing.assert_array_equal(a.positions[[0, 5]], traj[0].positions[[0, 5]])
    # its frames hold the model's predictions: validated (or fitted) as labels, they warn
    capsys.readouterr()
    main(["validate", str(files / "calibrated.npz"), str(out_xyz), "--no-plots"])
    assert "warning: 5 of the 5 test frames in" in capsys.readouterr().err
    # the last state is written when the steps are no multiple of the interval (steps 21-25
    # of 25 at interval 10 were lost); an overlapping start frame is named by its file
    assert main(["md", str(files / "calibrated.npz"), str(files / "start.xyz"), "-o", str(out_xyz),
                 "--steps", "7", "--interval", "5", "--overwrite", "-q"]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    assert [a.info["step"] for a in read(out_xyz, ":")] == [0, 5, 7]
    start.positions[1] = start.positions[0] + [0.3, 0.0, 0.0]
    write(files / "overlap.xyz", start)
    assert main(["md", str(files / "calibrated.npz"), str(files / "overlap.xyz"), "-o", str(files / "o.xyz"),
                 "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{files / 'overlap.xyz'} (the start frame): two atoms 0.300 Å apart" in err[0]
    assert "min_distance" not in err[0] and not (files / "o.xyz").exists()
    assert main(["md", str(model), str(files / "start.xyz"), "-o", str(files / "md.traj"),
                 "--steps", "10", "--interval", "5", "-q"]) == 0
    traj = read(files / "md.traj", ":")
    assert len(traj) == 3
    assert [a.info["step"] for a in traj] == [0, 5, 10]  # (the .xyz frames' step, time and temperature)
    assert traj[1].info["time_fs"] == pytest.approx(5.0) and traj[1].info["temperature_K"] > 0


def test_outputs_are_replaced_only_when_asked(files, tmp_path, capsys):
    out = tmp_path / "m.npz"
    args = ["fit", str(files / "train.xyz"), "-o", str(out), "--n-sparse", "20", "--zeta", "2", *SMALL]
    assert main(args) == 0
    before = out.read_bytes()
    assert main(args) == 2 and out.read_bytes() == before  # nothing the user made is overwritten
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_fit_reads_gap_style_label_keys(tmp_path, capsys):
    """dft_energy / dft_forces / dft_virial (9 numbers, eV) as GAP writes them."""
    frames = cuag_frames(4, seed=5)
    lines = []
    for a in frames:
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False)
        virial = -s * a.get_volume()
        lattice = " ".join(f"{x:.10f}" for x in a.cell.array.ravel())
        lines += [str(len(a)),
                  f'Lattice="{lattice}" Properties=species:S:1:pos:R:3:dft_forces:R:3 '
                  f'dft_energy={e:.10f} dft_virial="{" ".join(f"{x:.10f}" for x in virial.ravel())}" '
                  'config_type=alloy pbc="T T T"']
        for sym, p, fi in zip(a.get_chemical_symbols(), a.positions, f):
            lines.append(f"{sym} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f} {fi[0]:.10f} {fi[1]:.10f} {fi[2]:.10f}")
    gap = tmp_path / "gap.xyz"
    gap.write_text("\n".join(lines) + "\n")

    relabelled = gpal.io.relabel_frames(read(gap, ":"), energy_key="dft_energy", forces_key="dft_forces",
                                        virial_key="dft_virial")
    for a, b in zip(frames, relabelled):
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-8)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-9)  # Voigt xx,yy,zz,yz,xz,xy

    # without the keys the frames carry no labels at all
    assert main(["fit", str(gap), "-o", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert "no energy, forces or stress" in err and err.count("\n") == 1
    # ... and the error names the keys the labels are under, and the options that read them
    assert "info keys: config_type, dft_energy, dft_virial; per-atom arrays: dft_forces" in err
    assert "--energy-key/--forces-key" in err
    assert main(["fit", str(gap), "-o", str(tmp_path / "m.npz"), "--energy-key", "dft_energy",
                 "--forces-key", "dft_forces", "--virial-key", "dft_virial", "--n-sparse", "20",
                 *SMALL, "--sigma", "0.4", "--species", "Cu,Ag,Au"]) == 0
    model = gpal.load(tmp_path / "m.npz")
    d = model.descriptor_.get_params()
    assert (d["r_cut"], d["n_max"], d["l_max"], d["sigma"]) == (4.0, 4, 3, 0.4)
    assert d["species"] == [29, 47, 79]
    assert all(a.calc.results.get("stress") is not None for a in model.frames_)
    # a key found in no frame is a typo
    assert main(["fit", str(gap), "--energy-key", "DFT_energy"]) == 2
    err = capsys.readouterr().err
    assert "no frame has the info key 'DFT_energy'" in err and "dft_energy" in err


def test_fit_keeps_what_the_user_sets(files, capsys):
    model = files / "fixed.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "40", "--zeta", "4",
                 "--l-max", "4", "--force-noise", "0.07", "--energy-noise", "0.003"]) == 0
    m = gpal.load(model)
    assert m.kernel_.zeta == 4 and m.descriptor_.l_max == 4
    assert m.noise_["force"] == pytest.approx(0.07) and m.noise_["energy"] == pytest.approx(0.003)
    # --zeta keeps ζ only: the signal variance is the evidence's, not the kernel's default 1;
    # --optimize keeps a noise given (it replaced --force-noise 0.07 before)
    assert m.kernel_.signal_variance != 1.0
    assert m.evidence_ is None  # (no table of the model before the optimisation is kept)
    assert "gpal: maximised by the marginal likelihood: NormalizedDotProduct(zeta=4" in capsys.readouterr().out
    again = files / "optimized.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(again), "--n-sparse", "40", "--zeta", "4",
                 "--l-max", "4", "--force-noise", "0.07", "--optimize"]) == 0
    assert gpal.load(again).noise_["force"] == pytest.approx(0.07)


def test_fit_zeta_auto_keeps_the_largest_evidence(files, capsys):
    model = files / "auto.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zeta=1 may sit at its signal-variance bound
        assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "30",
                     "--zeta", "auto"]) == 0
    out = capsys.readouterr().out
    assert "log evidence" in out and "* NormalizedDotProduct" in out
    chosen = gpal.load(model).kernel_.zeta
    assert f"* NormalizedDotProduct(zeta={chosen}" in out


class _FakeLearner:
    """Stands in for ActiveLearner: records its arguments, runs instantly."""

    calls: list = []

    def __init__(self, structure, oracle, model, **kwargs):
        self.kwargs = kwargs
        _FakeLearner.calls.append({**kwargs, "model": model, "structure": structure})

    def run(self, steps):
        (self.kwargs["run_dir"] / "state.json").write_text(json.dumps({"step": steps}))
        return f"fake summary: {steps} steps"

    def count_oracle_calls(self, reason, n):
        pass

    def _take_validation(self, frames):
        pass


@pytest.fixture
def fake_learner(monkeypatch):
    import gpal.cli
    import gpal.learning.learner

    _FakeLearner.calls = []
    monkeypatch.setattr(gpal.learning.learner, "ActiveLearner", _FakeLearner)
    monkeypatch.setattr(gpal.cli, "_validation_frames", lambda *args, **kw: [])
    return _FakeLearner


def test_learn_does_not_mutate_the_defaults_and_moves_old_runs_aside(tmp_path, capsys, fake_learner):
    before = copy.deepcopy(config.DEFAULT_LEARN)
    run = tmp_path / "run"
    assert main(["learn", "--steps", "7", "--run-dir", str(run), "-q"]) == 0
    assert config.DEFAULT_LEARN == before
    assert "fake summary: 7 steps" in capsys.readouterr().out
    assert tomllib.loads((run / "config.toml").read_text())["steps"] == 7
    (run / "train.xyz").write_text("labels\n")
    assert main(["learn", "--steps", "7", "--run-dir", str(run), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["learn", "--steps", "9", "--run-dir", str(run), "--overwrite", "-q"]) == 0
    out = capsys.readouterr().out
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and (moved[0] / "train.xyz").read_text() == "labels\n"
    assert f"moved the previous run folder {run} to {moved[0]} (nothing deleted)" in out
    assert not (run / "train.xyz").exists()
    assert config.DEFAULT_LEARN == before


def test_learn_never_writes_into_a_folder_of_the_users(tmp_path, capsys, fake_learner, monkeypatch):
    """A folder with files gpal did not write (a project folder, run_dir = "."): exit 2,
    every file as it was; an unfinished start of gpal's own continues."""
    proj = tmp_path / "proj"
    proj.mkdir()
    mine = {"config.toml": "# my notes\nsteps = 5\nrun_dir = \".\"\n", "train.xyz": "my labels\n",
            "model.npz": "mine"}
    for name, text in mine.items():
        (proj / name).write_text(text)
    monkeypatch.chdir(proj)
    for argv in (["learn", "config.toml", "-q"], ["learn", "--run-dir", ".", "-q"],
                 ["learn", "--run-dir", ".", "--overwrite", "-q"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and any(m in err for m in ("gpal did not write", "current folder", "no gpal run")), err
    assert {p.name: p.read_text() for p in proj.iterdir()} == mine
    data = tmp_path / "mydata"  # not a run: --overwrite does not move it aside either
    data.mkdir()
    (data / "results.csv").write_text("1,2\n")
    named = tmp_path / "named"  # the user's files under names gpal also writes
    named.mkdir()
    (named / "train.xyz").write_text("my labels\n")
    for argv in (["learn", "--run-dir", str(data), "--overwrite", "-q"],
                 ["learn", "--run-dir", str(proj), "--overwrite", "-q"],
                 ["learn", "--run-dir", str(named), "--overwrite", "-q"]):
        assert main(argv) == 2
        assert "no gpal run" in capsys.readouterr().err
    assert (data / "results.csv").read_text() == "1,2\n" and len(list(tmp_path.iterdir())) == 3
    assert (named / "train.xyz").read_text() == "my labels\n"
    assert not fake_learner.calls
    start = tmp_path / "start"  # an unfinished start: gpal's config.toml only
    assert main(["learn", "--steps", "3", "--run-dir", str(start), "-q"]) == 0
    (start / "state.json").unlink()
    assert main(["learn", "--steps", "3", "--run-dir", str(start), "-q"]) == 0
    # a start that stopped at a bad value before it wrote anything but its config.toml:
    # the corrected configuration (another one) starts there; with more written, it does not
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text(config.TOML_HEADER + "steps = 3\n[md]\ntemperature = 900.0\n")
    assert main(["learn", "--steps", "3", "--run-dir", str(bare), "-q"]) == 0
    (bare / "state.json").unlink()
    (bare / "config.toml").write_text(config.TOML_HEADER + "steps = 3\n[md]\ntemperature = 900.0\n")
    (bare / "log.jsonl").write_text("")
    assert main(["learn", "--steps", "3", "--run-dir", str(bare), "-q"]) == 2
    assert "unfinished start with another configuration" in capsys.readouterr().err


def test_n_sparse_initial_sizes_the_model_the_command_line_makes(tmp_path, fake_learner):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\nsteps = 3\n[learner]\nn_sparse_initial = 50\n')
    assert main(["learn", str(cfg), "-q"]) == 0
    assert fake_learner.calls[0]["model"].n_sparse == 50


def test_print_config_is_the_full_schema_and_round_trips(tmp_path, capsys, fake_learner):
    assert main(["learn", "--print-config"]) == 0
    text = capsys.readouterr().out
    parsed = tomllib.loads(text)
    sch = config.schema()
    for section, keys in sch.items():
        for name in keys:
            assert f"{name} = " in text, (section, name)  # set, or commented out
    assert "eV/Å" in text and "Kelvin" in text and "Femtoseconds" in text
    assert config.check_config(parsed, "printed") == parsed
    # the schema follows the code's dataclasses and signatures
    import dataclasses
    import inspect

    assert {f.name for f in dataclasses.fields(gpal.Trigger)} == set(sch["trigger"])
    assert {f.name for f in dataclasses.fields(gpal.MDSettings)} == set(sch["md"])  # factory: an import path
    assert set(gpal.SparseGP().get_params()) - {"descriptor", "kernel"} == set(sch["model"]) - {"file"}
    from gpal.learning.settings import FLAT_NAMES  # the settings groups' fields by their flat names

    assert set(sch["learner"]) <= set(inspect.signature(gpal.ActiveLearner.__init__).parameters) | set(FLAT_NAMES)
    assert set(FLAT_NAMES) - {"executor", "stopping", "progress"} <= set(sch["learner"])
    # running with the printed configuration is running with the defaults
    cfg = tmp_path / "printed.toml"
    cfg.write_text(text.replace('run_dir = "gpal_run"', f'run_dir = "{tmp_path / "run"}"'))
    assert main(["learn", str(cfg), "-q"]) == 0
    kwargs = fake_learner.calls[-1]
    assert kwargs["trigger"] == gpal.Trigger(**config.DEFAULT_LEARN["trigger"])
    # the same model settings: no [descriptor] fixed by the printed file (the evidence chooses)
    assert main(["learn", "--run-dir", str(tmp_path / "plain"), "-q"]) == 0
    assert kwargs["model"].get_params() == fake_learner.calls[-1]["model"].get_params()
    assert kwargs["model"].descriptor is None
    assert kwargs["n_walkers"] == config.DEFAULT_LEARN["learner"]["n_walkers"]
    assert kwargs["random_state"] == config.DEFAULT_LEARN["learner"]["random_state"]
    # the printed file's natural edits: another [model] n_sparse (n_sparse_initial was
    # written out beside it and disagreed), a [structure] file (the built keys clashed)
    from ase.build import bulk

    write(tmp_path / "start.xyz", bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2)))
    edited = cfg.read_text().replace("\nn_sparse = 300\n", "\nn_sparse = 500\n", 1).replace(
        "# file = <a string>", f'file = "{tmp_path / "start.xyz"}"', 1)
    assert edited.count("n_sparse = 500") == 1 and f'file = "{tmp_path / "start.xyz"}"' in edited
    cfg.write_text(edited.replace(f'run_dir = "{tmp_path / "run"}"', f'run_dir = "{tmp_path / "edited"}"'))
    assert main(["learn", str(cfg), "-q"]) == 0
    assert fake_learner.calls[-1]["model"].n_sparse == 500 and len(fake_learner.calls[-1]["structure"]) == 32


def test_learn_with_config_and_resume(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    text = f"""
run_dir = "{tmp_path / 'run'}"
steps = 60
[structure]
bulk = "Cu"
repeat = [2, 2, 2]
[oracle]
factory = "ase.calculators.emt:EMT"
[descriptor]
r_cut = 4.0
n_max = 4
l_max = 3
sigma = 0.5
[model]
n_sparse = 30
[validation]
steps = 40
every = 20
temperature = 600.0
"""
    cfg.write_text(text)
    assert main(["learn", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "oracle calls" in out and "41 validation" in out and "cost none" not in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 60
    # the validation trajectory's calls as made: its start and each of its 40 MD steps
    assert summary["oracle_calls_by_reason"]["validation"] == 41
    # the log's records count the learner's own calls; the validation ones are an event
    # (every record said 7 where the summary said 128, with no word of the difference)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(e["n"], e["validation_calls"]) for e in log if e.get("event") == "validation_calls"] == [(41, 41)]
    events = [e.get("event") for e in log]  # (logged once the run's state is on disk, before its first call:
    assert events.index("validation_calls") < events.index("oracle_call")  # a kill in the bootstrap lost it)
    last = [e["oracle_calls"] for e in log if "oracle_calls" in e][-1]
    assert last + 41 == summary["oracle_calls"]
    # a second start in the same folder refuses; resume continues
    assert main(["learn", str(cfg), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["learn", "--resume", str(tmp_path / "run"), "--steps", "80", "-q"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 80
    # resume with a config: steps may change, anything else is refused in one line
    hotter = tmp_path / "hotter.toml"
    hotter.write_text(text.replace("steps = 60", "steps = 90") + "[md]\ntemperature = [300.0, 1200.0]\n")
    assert main(["learn", str(hotter), "--resume", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot change [md] temperature" in err
    assert "[300.0, 1000.0] in the run, [300.0, 1200.0] in the config" in err
    assert "[targets] tolerance and [learner] max_oracle_calls can" in err  # (what may change: all of it)
    longer = tmp_path / "longer.toml"
    longer.write_text(text.replace("steps = 60", "steps = 90"))
    assert main(["learn", str(longer), "--resume", str(tmp_path / "run"), "-q"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 90
    # a run that made all its steps: nothing to run, its files as they were
    run = tmp_path / "run"
    capsys.readouterr()
    files = {p: (run / p).read_bytes() for p in ("summary.json", "state.json", "model.npz", "walkers.npz")}
    assert main(["learn", "--resume", str(run), "-q"]) == 0
    assert "this run has made all its 90 steps; nothing to continue" in capsys.readouterr().out
    assert {p: (run / p).read_bytes() for p in files} == files
    # steps are a total: fewer than the run has made is refused, not silently ignored
    assert main(["learn", "--resume", str(tmp_path / "run"), "--steps", "50", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps 50 is below the 90 steps this run has made" in err


def test_learn_descriptor_keys_left_out_take_gpal_defaults(tmp_path, capsys):
    cfg = tmp_path / "rc.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\nsteps = 5\n[structure]\nbulk = "Cu"\n'
                   'repeat = [2, 2, 2]\n[descriptor]\nr_cut = 4.0\n[model]\nn_sparse = 20\n')
    assert main(["learn", str(cfg), "-q"]) == 0
    d = gpal.load(tmp_path / "run" / "model.npz").descriptor_
    assert (d.r_cut, d.n_max, d.l_max, d.sigma, d.periodic) == (4.0, 8, 6, 0.5, True)


def test_learn_continues_a_fitted_model_file(tmp_path, capsys):
    # [model] file: the fitted model's frames start train.xyz, no bootstrap label; its
    # settings come with it, so a changed [model] or [descriptor] key is a one-line error
    from gpal import SOAP, SparseGP

    from conftest import POLY, SMALL_SOAP

    initial = cu_frames(3, seed=2, size=(2, 2, 2))
    path = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30).fit(
        initial).save(tmp_path / "fitted.npz")
    text = f"""
run_dir = "{tmp_path / 'run'}"
steps = 30
[structure]
bulk = "Cu"
repeat = [2, 2, 2]
[model]
file = "{path}"
[trigger]
temperature_steps = false
"""
    cfg = tmp_path / "cont.toml"
    cfg.write_text(text)
    assert main(["learn", str(cfg), "-q"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["oracle_calls_by_reason"].get("bootstrap", 0) == 0 and summary["bootstrap_frames"] == 0
    train = read(tmp_path / "run" / "train.xyz", ":")
    assert [a.info["gpal_reason"] for a in train[:3]] == ["initial"] * 3
    assert summary["labelled_frames"] == len(train) == 3 + summary["oracle_calls"]
    capsys.readouterr()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(f'file = "{path}"', f'file = "{path}"\nn_sparse = 50').replace(
        str(tmp_path / "run"), str(tmp_path / "run2")))
    assert main(["learn", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[model] file gives a fitted model" in err and "remove [model] n_sparse" in err
    assert not (tmp_path / "run2" / "train.xyz").exists()
    missing = tmp_path / "missing.toml"  # a wrong path: one line, and no run folder made
    missing.write_text(text.replace(str(path), str(tmp_path / "nope.npz")).replace(
        str(tmp_path / "run"), str(tmp_path / "run3")))
    assert main(["learn", str(missing), "-q"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "run3").exists()


def test_readme_configuration_example_is_valid():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    user = tomllib.loads(block)
    assert config.check_config(user, "README") == user
    assert "--print-config" in readme


def test_compare_kernels_prints_each_row_when_measured(files, capsys, monkeypatch):
    import gpal.compare

    printed_before_return = []

    def fake_compare(train, test, *, plot, progress, on_row, overwrite):
        rows = []
        for k, name in enumerate(("dot ζ=2", "SE")):
            rows.append({"name": name, "energy_rmse": 1.0 + k, "force_rmse": 0.00074 - 0.00005 * k,
                         "force_nll": -2.0, "force_zms": 1.1, "fit_time": 0.5, "predict_us_per_atom": 100.0})
            on_row(rows[-1])
            printed_before_return.append(capsys.readouterr().out)
        return gpal.compare.ComparisonTable(rows, {})

    monkeypatch.setattr(gpal.compare, "compare_kernels", fake_compare)
    assert main(["compare-kernels", str(files / "train.xyz"), str(files / "test.xyz"), "-q",
                 "--plot", str(files / "k.png")]) == 0
    first, second = printed_before_return
    assert first.splitlines()[0].startswith("candidate") and "F RMSE eV/Å" in first
    assert first.splitlines()[-1].startswith("dot ζ=2") and second.strip().startswith("SE")
    assert "0.00074 " in first and "0.00069 " in second  # (four significant digits, not four decimals)
    assert "gpal: lowest force RMSE: SE (0.00069 eV/Å)" in capsys.readouterr().out


def test_compare_kernels_with_an_unknown_test_species_prints_only_the_error(files, tmp_path, capsys):
    """The table's header was printed above the one-line error."""
    from ase.calculators.emt import EMT

    frames = cu_frames(2, seed=4, size=(2, 2, 2))
    for a in frames:
        a.numbers[0] = 28  # Ni, in no training frame
        a.calc = EMT()
        a.get_forces()
    write(tmp_path / "test_ni.xyz", frames)
    assert main(["compare-kernels", str(files / "train.xyz"), str(tmp_path / "test_ni.xyz"), "-q",
                 "--plot", ""]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "Ni (Z=28)" in err


def test_a_default_written_out_is_no_change_of_configuration():
    """Resuming with `gpal learn --print-config` output (every default written out) is not a
    change; a real change is named with both values."""
    printed = config._merge(config.DEFAULT_LEARN, config.check_config(tomllib.loads(config.default_toml()), "p"))
    started = config._merge(config.DEFAULT_LEARN, {"steps": 40})  # what gpal learn stores for a run
    assert config.config_difference(started, printed) is None
    changed = copy.deepcopy(printed)
    changed["trigger"]["every"] = 7
    assert config.config_difference(started, changed) == "[trigger] every (20 in the run, 7 in the config)"


def test_a_second_learn_of_a_folder_being_prepared_is_refused_at_once(tmp_path):
    """gpal learn holds the run folder from before it writes config.toml: a second
    gpal learn of the folder while the first labels its validation trajectory is refused
    in one line, makes no oracle call and changes no file there."""
    import os
    import subprocess
    import sys
    import time

    from _subprocess import ROOT, TESTS

    run = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
run_dir = "{run}"
steps = 10
[structure]
bulk = "Cu"
repeat = [2, 2, 2]
[oracle]
factory = "_oracles:SlowEMT"
kwargs = {{delay = 0.5}}
[descriptor]
r_cut = 4.0
n_max = 3
l_max = 2
[validation]
steps = 200
every = 20
""")  # (10 validation labels of 0.5 s: the first is still at them when the second has started, even on a busy machine)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "gpal.cli", "learn", str(cfg), "-q"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "config.toml").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (run / "config.toml").exists(), first.stderr.read() if first.poll() is not None else ""
        def files():  # (but the first's own count of its oracle calls)
            return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if "calls.json" not in p.name}

        before = files()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # (the first was still labelling its validation frames)
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"gpal learn: error: a gpal process is running the run in {run}; stop it first, or give "
            "another run_dir"], second.stderr
        assert files() == before
    finally:
        first.kill()
        first.wait()


def test_an_unset_validation_temperature_follows_the_md_protocol(tmp_path, fake_learner, monkeypatch):
    """[validation] without a temperature runs at the hottest temperature of [md], not at a
    fixed 1000 K (a validation hotter or colder than the run judges it elsewhere)."""
    import gpal.cli

    seen = []
    monkeypatch.setattr(gpal.cli, "_validation_frames",
                        lambda structure, oracle, cfg, progress=True, path=None: seen.append(cfg) or ([], 0))
    for k, (md, val, expected) in enumerate([("temperature = 700.0", "", 700.0),
                                             ("temperature = [300.0, 800.0]", "", 800.0),
                                             ("temperature = 700.0", "temperature = 500.0", 500.0)]):
        cfg = tmp_path / f"c{k}.toml"
        cfg.write_text(f'run_dir = "{tmp_path / f"run{k}"}"\nsteps = 5\n[md]\n{md}\n'
                       f"[validation]\nsteps = 40\nevery = 20\n{val}\n")
        assert main(["learn", str(cfg), "-q"]) == 0
        assert seen[-1]["temperature"] == expected


def test_resume_of_a_run_its_stopping_rule_ended_says_so_and_labels_nothing(tmp_path, capsys):
    """It continued the MD with more oracle calls, and its summary said the rule was not met."""
    from ase.build import bulk

    from conftest import POLY, SMALL_SOAP

    run = tmp_path / "run"
    model = gpal.SparseGP(gpal.SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30)
    L = gpal.ActiveLearner(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)), "ase.calculators.emt:EMT",
                           model, run_dir=run, progress=False, check_every=10, n_bootstrap=2,
                           validation=cu_frames(2, seed=19, size=(2, 2, 2)),
                           md=gpal.MDSettings(temperature=600),
                           stopping=gpal.calibration.StoppingRule(tolerance=50.0, patience=1, use="scale"))
    first = L.run(400)
    assert first.stopped_early
    files = {p: (run / p).read_bytes() for p in ("summary.json", "state.json", "model.npz")}
    assert main(["learn", "--resume", str(run), "-q"]) == 0
    assert {p: (run / p).read_bytes() for p in files} == files  # (it was written again, as not stopped)
    out = capsys.readouterr().out
    assert f"this run ended at step {first.steps} of 400 (stop: calibrated bound" in out
    assert "nothing to continue" in out
    assert f"stopped early         : {first.stop_reason}" in out  # the run's own summary
    again = json.loads((run / "summary.json").read_text())
    assert (again["steps"], again["oracle_calls"]) == (first.steps, first.oracle_calls)
    (run / "summary.json").unlink()  # (a kill after the stop): reported from the state, nothing written
    log = (run / "log.jsonl").read_text()
    assert main(["learn", "--resume", str(run), "-q"]) == 0
    assert f"stopped early         : {first.stop_reason}" in capsys.readouterr().out
    added = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text()[len(log):].splitlines()]
    assert added == ["resume"] and not (run / "summary.json").exists()
    assert {p: (run / p).read_bytes() for p in ("state.json", "model.npz")} == {
        p: files[p] for p in ("state.json", "model.npz")}
    assert main(["learn", "--resume", str(run), "--steps", str(first.steps + 15), "-q"]) == 0  # as asked
    assert json.loads((run / "summary.json").read_text())["steps"] > first.steps


def test_a_calibration_on_frames_without_forces_warns(tmp_path, capsys):
    """Perfect cells (forces zero by symmetry) put both scales at their floor: the 90 % interval
    was 2e-7 eV/Å on MD frames whose errors reached 0.8 eV/Å, without a word."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from conftest import POLY, SMALL_SOAP

    model = gpal.SparseGP(gpal.SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30,
                          hyperparameters="fixed").fit(cu_frames(4, seed=1, size=(2, 2, 2)))
    model.save(tmp_path / "m.npz")
    eos = []
    for a0 in (3.5, 3.55, 3.6, 3.65, 3.7):
        a = bulk("Cu", "fcc", a=a0, cubic=True).repeat((2, 2, 2))
        a.calc = EMT()
        a.get_forces()
        eos.append(a)
    write(tmp_path / "eos.xyz", eos)
    write(tmp_path / "test.xyz", cu_frames(2, seed=2, size=(2, 2, 2)))
    assert main(["validate", str(tmp_path / "m.npz"), str(tmp_path / "test.xyz"), "--calibrate",
                 str(tmp_path / "eos.xyz"), "-o", str(tmp_path / "c.npz"), "--no-plots"]) == 0
    assert "the errors there are far below the model's stds" in capsys.readouterr().err


def test_the_stored_config_of_a_run_from_a_structure_file_is_valid_input(tmp_path):
    """gpal learn stores the effective configuration; with [structure] file it held the
    built structure's defaults beside the file, which its own check then refused."""
    cu_frames(1)[0].write(tmp_path / "start.xyz")
    user = tmp_path / "c.toml"
    user.write_text(f'run_dir = "{tmp_path / "r1"}"\n[structure]\nfile = "{tmp_path / "start.xyz"}"\n')
    cfg, _ = config.load_config(user)
    assert set(cfg["structure"]) <= {"file", "index"}
    stored = tmp_path / "stored.toml"
    stored.write_text(config.to_toml(cfg))
    assert config.load_config(stored)[0] == cfg
    # a run folder's copy written by an earlier release (the defaults beside the file)
    old = dict(cfg, structure={**cfg["structure"], "bulk": "Cu", "crystal": "fcc", "cubic": True,
                               "repeat": [3, 3, 3]})
    stored.write_text(config.to_toml(old))
    assert config.load_config(stored)[0] == cfg
    # a user's own file with both is still refused
    user.write_text(user.read_text() + 'bulk = "Cu"\n')
    with pytest.raises(config.ConfigError, match="exclude each other"):
        config.load_config(user)


def test_resume_compares_a_structure_file_by_what_it_holds(tmp_path, capsys, monkeypatch):
    """A run folder moved to another node and resumed with the file given by another path
    continues; another structure under the run's file name is refused."""
    from ase.build import bulk

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    start = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    start.rattle(0.02, seed=3)
    write(work / "start.xyz", start)
    text = """
run_dir = "run"
steps = 20
[structure]
file = "start.xyz"
[descriptor]
r_cut = 4.0
n_max = 4
l_max = 3
[model]
n_sparse = 20
"""
    (work / "c.toml").write_text(text)
    assert main(["learn", "c.toml", "-q"]) == 0
    node2 = tmp_path / "node2"
    node2.mkdir()
    import shutil

    shutil.copytree(work / "run", node2 / "run")
    monkeypatch.chdir(node2)
    absolute = node2 / "abs.toml"
    absolute.write_text(text.replace('"start.xyz"', f'"{work / "start.xyz"}"'))
    capsys.readouterr()
    assert main(["learn", str(absolute), "--resume", "run", "--steps", "30", "-q"]) == 0
    write(node2 / "start.xyz", bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2)))  # another structure
    (node2 / "rel.toml").write_text(text)
    capsys.readouterr()  # (the run above warns that its calibration rests on the bootstrap)
    assert main(["learn", "rel.toml", "--resume", "run", "--steps", "40", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another structure than the run's start" in err
    (node2 / "gone.toml").write_text(text.replace('"start.xyz"', '"gone.xyz"'))  # not on this node
    assert main(["learn", "gone.toml", "--resume", "run", "--steps", "40", "-q"]) == 0
    assert "the run continues from its own start structure" in capsys.readouterr().err


def test_a_stopping_section_gives_the_learner_its_stopping_rule(tmp_path, fake_learner, capsys):
    """The calibrated stop was Python-only (``[learner] stopping`` is no TOML value)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\nsteps = 10\n[stopping]\ntolerance = 0.05\npatience = 2\n')
    assert main(["learn", str(cfg), "-q"]) == 0
    rule = fake_learner.calls[-1]["stopping"]
    assert isinstance(rule, gpal.calibration.StoppingRule)
    assert (rule.tolerance, rule.patience, rule.use) == (0.05, 2, "conformal")
    assert "[stopping]" in config.default_toml() and "# tolerance = <a number>" in config.default_toml()
    for body, msg in (("patience = 2", "patience is set but tolerance is not"),
                      ("tolerance = -1", "tolerance must be a positive"),
                      ('tolerance = 0.1\nuse = "max"', "use must be one of"),
                      ("tolerence = 0.1", "did you mean 'tolerance'")):
        cfg.write_text(f'run_dir = "{tmp_path / "bad"}"\n[stopping]\n{body}\n')
        assert main(["learn", str(cfg), "-q"]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert config.config_difference({"stopping": {"tolerance": 0.1}}, {"stopping": {"tolerance": 0.2}}) is None


def test_resume_with_a_config_takes_its_stopping_section_whole(tmp_path, capsys):
    """A resumed config without [stopping], or with keys left out, kept the run's rule;
    and the run's config.toml kept the old rule, which resuming with that copy restored."""
    run = tmp_path / "run"
    base = (f'run_dir = "{run}"\nsteps = 20\n[structure]\nrepeat = [2, 2, 2]\n'
            "[descriptor]\nr_cut = 4.0\nn_max = 3\nl_max = 2\n[learner]\nn_bootstrap = 2\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(base + "[stopping]\ntolerance = 0.2\npatience = 5\n")
    assert main(["learn", str(cfg), "-q"]) == 0
    assert json.loads((run / "state.json").read_text())["stopping"]["patience"] == 5
    stored = run / "config.toml"
    stored.write_text(stored.read_text() + "# my note\n")
    cfg.write_text(base.replace("steps = 20", "steps = 25") + '[stopping]\ntolerance = 0.3\nuse = "scale"\n')
    assert main(["learn", str(cfg), "--resume", str(run), "-q"]) == 0
    assert "[stopping] now tolerance 0.3, patience 3" in capsys.readouterr().out
    assert json.loads((run / "state.json").read_text())["stopping"]["patience"] == 3
    text = stored.read_text()  # the run's copy says so, the user's comment kept
    assert "# my note" in text and not config.stored_copy_edited(text)
    assert tomllib.loads(text)["stopping"] == {"tolerance": 0.3, "use": "scale"}
    assert main(["learn", str(stored), "--resume", str(run), "--steps", "30", "-q"]) == 0
    assert "[stopping]" not in capsys.readouterr().out  # (the same rule: nothing changed)
    state = json.loads((run / "state.json").read_text())
    assert (state["stopping"]["tolerance"], state["stopping"]["use"]) == (0.3, "scale")
    cfg.write_text(base.replace("steps = 20", "steps = 35"))
    assert main(["learn", str(cfg), "--resume", str(run), "-q"]) == 0
    assert "[stopping] removed" in capsys.readouterr().out
    assert not json.loads((run / "state.json").read_text()).get("stopping")
    assert not tomllib.loads(stored.read_text()).get("stopping")


def test_the_run_folders_config_is_kept_current_and_an_edit_of_it_is_refused(tmp_path, capsys):
    """A run's config.toml said steps = 20 after a resume to 25, and resuming with it then
    refused its own count; an edit of it (a hotter ramp) was taken as the config to
    compare with and accepted without a word, the run keeping its old settings."""
    run = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{run}"\nsteps = 20\n[structure]\nrepeat = [2, 2, 2]\n'
                   "[descriptor]\nr_cut = 4.0\nn_max = 3\nl_max = 2\n[learner]\nn_bootstrap = 2\n")
    assert main(["learn", str(cfg), "-q"]) == 0
    assert main(["learn", "--resume", str(run), "--steps", "25", "-q"]) == 0
    stored = run / "config.toml"
    assert tomllib.loads(stored.read_text())["steps"] == 25
    capsys.readouterr()
    assert main(["learn", str(stored), "--resume", str(run), "-q"]) == 0  # (its own count: nothing to run)
    stored.write_text(stored.read_text() + "# a note of mine\n")  # (a comment is no edit)
    assert main(["learn", str(stored), "--resume", str(run), "-q"]) == 0
    assert main(["learn", "--resume", str(run), "--steps", "27", "-q"]) == 0
    assert "# a note of mine" in stored.read_text() and tomllib.loads(stored.read_text())["steps"] == 27
    stored.write_text(stored.read_text().replace("friction = 0.02", "friction = 0.5", 1))
    capsys.readouterr()
    assert main(["learn", str(stored), "--resume", str(run), "--steps", "30", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.toml was edited after gpal wrote it" in err
    assert json.loads((run / "state.json").read_text())["step"] == 27


def test_a_run_its_budget_stopped_goes_on_under_a_larger_one(tmp_path, capsys):
    """--resume of a run max_oracle_calls ended said "--steps N runs on", which ran no step
    (the budget still held), and a config raising the budget was refused."""
    run = tmp_path / "run"
    base = (f'run_dir = "{run}"\nsteps = 40\n[structure]\nrepeat = [2, 2, 2]\n'
            "[descriptor]\nr_cut = 4.0\nn_max = 3\nl_max = 2\n[trigger]\nthreshold = 0.001\nadaptive = false\n"
            "[learner]\nn_bootstrap = 2\nmax_oracle_calls = 4\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(base)
    assert main(["learn", str(cfg), "-q"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["stopped_early"] == "max_oracle_calls=4 reached" and state["oracle_calls"] == 4
    capsys.readouterr()
    assert main(["learn", "--resume", str(run), "-q"]) == 0
    assert "A config with a larger [learner] max_oracle_calls continues it" in capsys.readouterr().out
    cfg.write_text(base.replace("max_oracle_calls = 4", "max_oracle_calls = 6"))
    assert main(["learn", str(cfg), "--resume", str(run), "-q"]) == 0
    assert "[learner] max_oracle_calls now 6 (the run had 4)" in capsys.readouterr().out
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 40 and 4 <= state["oracle_calls"] <= 6 and not state.get("stopped_early")
    # the run's own copy now says 6: resuming with it keeps the larger budget
    assert tomllib.loads((run / "config.toml").read_text())["learner"]["max_oracle_calls"] == 6
    assert main(["learn", str(run / "config.toml"), "--resume", str(run), "--steps", "50", "-q"]) == 0
    assert "max_oracle_calls now" not in capsys.readouterr().out


def test_a_resume_from_elsewhere_finds_the_oracle_module_beside_the_run_folder(tmp_path, capsys, monkeypatch):
    """gpal learn proj/c.toml --run-dir proj/run, then --resume proj/run from the same
    folder: the oracle module beside the config was not found, and the error gave no hint."""
    import sys

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "my_oracle_mod.py").write_text("from ase.calculators.emt import EMT as Mine\n")
    (proj / "c.toml").write_text('steps = 10\n[structure]\nrepeat = [2, 2, 2]\n[descriptor]\nr_cut = 4.0\n'
                                 'n_max = 3\nl_max = 2\n[learner]\nn_bootstrap = 2\n[oracle]\n'
                                 'factory = "my_oracle_mod:Mine"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["learn", "proj/c.toml", "--run-dir", "proj/run", "-q"]) == 0
    monkeypatch.delitem(sys.modules, "my_oracle_mod")
    assert main(["learn", "--resume", "proj/run", "--steps", "20", "-q"]) == 0
    monkeypatch.delitem(sys.modules, "my_oracle_mod")
    (tmp_path / "elsewhere").mkdir()
    (proj / "run").rename(tmp_path / "elsewhere" / "run")
    capsys.readouterr()
    assert main(["learn", "--resume", "elsewhere/run", "--steps", "30", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import oracle module 'my_oracle_mod'" in err
    assert "run from the folder that holds it, or add that folder to PYTHONPATH" in err


def test_cli_review_findings(tmp_path, capsys, fake_learner, monkeypatch):
    """From a review of the CLI: --overwrite on a symbolic link to a run moved the run
    aside and then failed (the link left dangling); -v after the command was refused;
    [trigger] ceiling could not be turned off from TOML; run_dir = "~/x" made a folder
    named "~"; an empty config ran the demo without a word."""
    import os

    run = tmp_path / "run"
    assert main(["learn", "--steps", "3", "--run-dir", str(run), "-q"]) == 0
    link = tmp_path / "link"
    link.symlink_to(run)
    assert main(["learn", "--steps", "3", "--run-dir", str(link), "--overwrite", "-q"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert (run / "state.json").exists() and link.resolve() == run.resolve()
    from gpal.cli import build_parser

    assert build_parser().parse_args(["learn", "c.toml", "-v"]).verbose
    # (review) no shell expands ~ after "=": the options do
    assert build_parser().parse_args(["learn", "--run-dir=~/x"]).run_dir == os.path.expanduser("~/x")
    assert build_parser().parse_args(["learn", "--resume=~/x"]).resume == os.path.expanduser("~/x")
    from gpal._validation import check_number

    assert check_number("random_state", 2**63 + 5, integer=True, low=0) == 2**63 + 5  # (a numpy seed)
    assert not build_parser().parse_args(["learn", "c.toml"]).verbose
    cfg = tmp_path / "c.toml"
    cfg.write_text('run_dir = "~/tilde_run"\nsteps = 3\n[trigger]\nceiling = false\n')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["learn", str(cfg), "-q"]) == 0
    assert (tmp_path / "home" / "tilde_run" / "config.toml").exists() and not (tmp_path / "~").exists()
    assert fake_learner.calls[-1]["trigger"].ceiling is None
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    with pytest.warns(UserWarning, match="empty.toml sets no key"):
        config.load_config(empty)
    val = tmp_path / "val.toml"
    val.write_text("[validation]\nsteps = 20\ntimestep = 0.01\n")
    with pytest.warns(UserWarning, match=r"val.toml: \[validation\] timestep = 0.01 fs: the time step is in femtoseconds"):
        config.load_config(val)
    dated = tmp_path / "dated.toml"  # (a TOML date beside a huge integer: the message, not a crash)
    dated.write_text("[oracle]\nkwargs = {d = 1979-05-27, n = 99999999999999999999}\n")
    with pytest.raises(gpal.exceptions.ConfigError, match="1979-05-27.*beyond TOML's 64 bits"):
        config.load_config(dated)


def test_a_full_disk_names_the_run_folder_and_the_resume(tmp_path, capsys, fake_learner, monkeypatch):
    """A full disk ended gpal learn with "[Errno 28] No space left on device" only."""
    import errno

    def run(self, steps):
        (self.kwargs["run_dir"] / "state.json").write_text(json.dumps({"step": 1}))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fake_learner, "run", run)
    run_dir = tmp_path / "run"
    assert main(["learn", "--steps", "3", "--run-dir", str(run_dir), "-q"]) == 1  # (resume it, not bad input)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the disk (or the quota) is full (the run folder {run_dir}): free space, then continue with " \
        f"gpal learn --resume {run_dir}" in err


def test_a_validation_trajectory_whose_oracle_exits_is_an_oracle_error(monkeypatch):
    """(review) sys.exit in the oracle during the [validation] trajectory ended gpal learn
    with that exit code and no word; any other exception there read as a gpal bug."""
    import sys
    import types

    from ase.build import bulk
    from ase.calculators.emt import EMT

    import gpal
    from gpal.cli import _validation_frames

    class Exits(EMT):
        def calculate(self, *args, **kwargs):
            sys.exit(0)

    class Fails(EMT):
        def calculate(self, *args, **kwargs):
            raise RuntimeError("SCF did not converge")

    mod = types.ModuleType("val_oracles")
    mod.Exits, mod.Fails = Exits, Fails
    monkeypatch.setitem(sys.modules, "val_oracles", mod)
    cfg = {"steps": 4, "every": 2, "temperature": 300.0, "timestep": 1.0}
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    with pytest.raises(gpal.OracleError, match=r"\[validation\] the oracle MD trajectory failed .*sys.exit\(0\)"):
        _validation_frames(atoms, {"factory": "val_oracles:Exits"}, cfg)
    with pytest.raises(gpal.OracleError, match="RuntimeError: SCF did not converge"):
        _validation_frames(atoms, {"factory": "val_oracles:Fails"}, cfg)


def test_validation_labels_are_on_disk_as_they_arrive_and_an_interrupted_trajectory_goes_on(tmp_path, monkeypatch):
    """A Ctrl-C in the validation trajectory lost every label it had paid for (the run
    folder held only config.toml), and the next start labelled them all again. Each
    frame is appended to validation_trajectory.xyz as it arrives; the next start goes on
    from the last step made, and the calls made after the last frame still count."""
    import json
    import sys
    import types

    from ase.build import bulk
    from ase.calculators.emt import EMT

    from gpal.cli import _validation_frames

    class Counted(EMT):
        calls = 0
        stop_at = None

        def calculate(self, *args, **kwargs):
            Counted.calls += 1
            if Counted.calls == Counted.stop_at:
                raise KeyboardInterrupt
            super().calculate(*args, **kwargs)

    mod = types.ModuleType("val_counted")
    mod.Counted = Counted
    monkeypatch.setitem(sys.modules, "val_counted", mod)
    cfg = {"steps": 40, "every": 10, "temperature": 300.0, "timestep": 1.0}
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    path = tmp_path / "validation_trajectory.xyz"
    Counted.stop_at = 25  # call 1: step 0's forces, call k: step k - 1's; step 24's is cut off
    with pytest.raises(KeyboardInterrupt):
        _validation_frames(atoms, {"factory": "val_counted:Counted"}, cfg, progress=False, path=path)
    kept = read(path, ":")
    assert len(kept) == 2 and Counted.calls == 25
    record = json.loads(path.with_suffix(".calls.json").read_text())
    assert record["step"] == 23 and record["oracle_calls"] == 25  # (the last step made, the calls)
    Counted.stop_at = None
    frames, n_calls = _validation_frames(atoms, {"factory": "val_counted:Counted"}, cfg, progress=False, path=path)
    assert len(frames) == 4 and n_calls == Counted.calls  # (the call Ctrl-C cut off counts too)
    # it went on from step 23 (its forces again, then steps 24-40: 18 calls), not from the
    # last frame at step 20 (21 calls: the steps since it, each a DFT call, paid again)
    assert Counted.calls == 25 + 18 and not path.with_suffix(".calls.json").exists()
    for a, b in zip(frames[:2], kept):  # the first two are the labels paid for, not new ones
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
    assert all("gpal_oracle_calls" not in a.info for a in frames)
    assert len(read(path, ":")) == 4
    again, calls = _validation_frames(atoms, {"factory": "val_counted:Counted"}, cfg, progress=False, path=path)
    assert len(again) == 4 and calls == n_calls == Counted.calls  # (all on disk: no call)
    # a Ctrl-C while a call's count is written, before the call: the count was one too many
    import gpal.cli as cli

    path2 = tmp_path / "second.xyz"
    write_count = cli._note_calls
    notes = []

    def interrupted_note(p, rec):
        notes.append(rec["oracle_calls"])
        if len(notes) == 6:  # (the count of call 6)
            signal.raise_signal(signal.SIGINT)
        write_count(p, rec)

    monkeypatch.setattr(cli, "_note_calls", interrupted_note)
    Counted.calls = 0
    with pytest.raises(KeyboardInterrupt):
        _validation_frames(atoms, {"factory": "val_counted:Counted"}, cfg, progress=False, path=path2)
    assert Counted.calls == 5 and notes[-2:] == [6, 5]
    assert json.loads(path2.with_suffix(".calls.json").read_text())["oracle_calls"] == 5
    # the labels of another start (here: another structure) are not continued, nor replaced
    with pytest.raises(gpal.ConfigError, match="holds the validation labels of another start"):
        _validation_frames(atoms.repeat(2), {"factory": "val_counted:Counted"}, cfg, progress=False, path=path)
    assert len(read(path, ":")) == 4


def test_a_kill_in_the_validation_trajectory_loses_no_count_of_its_oracle_calls(tmp_path, monkeypatch):
    """A kill (SIGKILL: no handler runs) after a labelled frame lost the count of every
    call made since (up to [validation] every of them). The count is on disk before each
    call; the file goes once the trajectory is done (its last frame has the count)."""
    import json
    import sys
    import types

    from ase.build import bulk
    from ase.calculators.emt import EMT

    from gpal.cli import _validation_frames

    path = tmp_path / "validation_trajectory.xyz"
    seen = []

    class Watched(EMT):  # what a kill during this call would leave on disk
        def calculate(self, *args, **kwargs):
            cut = path.with_suffix(".calls.json")
            seen.append(json.loads(cut.read_text())["oracle_calls"] if cut.exists() else None)
            super().calculate(*args, **kwargs)

    mod = types.ModuleType("val_watched")
    mod.Watched = Watched
    monkeypatch.setitem(sys.modules, "val_watched", mod)
    cfg = {"steps": 20, "every": 10, "temperature": 300.0, "timestep": 1.0}
    frames, n_calls = _validation_frames(bulk("Cu", "fcc", a=3.61, cubic=True), {"factory": "val_watched:Watched"},
                                         cfg, progress=False, path=path)
    assert len(frames) == 2 and n_calls == len(seen) > 20
    assert seen == list(range(1, n_calls + 1))
    assert not path.with_suffix(".calls.json").exists() and read(path, -1).info["gpal_oracle_calls"] == n_calls


def test_an_md_factory_and_an_oracle_of_the_users_own_module_next_to_the_config(tmp_path, capsys, monkeypatch):
    """``[md] factory`` (an NPT sampler from TOML) and ``[oracle] factory`` may name a module
    beside the config; a module that does not import is one line naming the setting, and so
    is a resume from a folder where the run's factory cannot be imported."""
    import sys

    before = list(sys.path)
    folder = tmp_path / "project"
    folder.mkdir()
    name = f"user_md_{tmp_path.name.replace('-', '_')}"
    (folder / f"{name}.py").write_text(
        "from ase import units\n"
        "from ase.calculators.emt import EMT\n"
        "from ase.md.nptberendsen import NPTBerendsen\n"
        "MADE = []\n"
        "class MyEMT(EMT):\n"
        "    pass\n"
        "def npt(atoms, dt, T, rng):\n"
        "    MADE.append(T)\n"
        "    return NPTBerendsen(atoms, dt, temperature_K=T, pressure_au=0.0, taut=100 * units.fs,\n"
        "                        taup=500 * units.fs, compressibility_au=1 / (140 * units.GPa))\n")
    cfg = folder / "npt.toml"
    text = (f'run_dir = "{tmp_path / "run"}"\nsteps = 30\n[structure]\nbulk = "Cu"\nrepeat = [2, 2, 2]\n'
            f'[oracle]\nfactory = "{name}:MyEMT"\n[descriptor]\nr_cut = 4.0\nn_max = 4\nl_max = 3\n'
            f'[model]\nn_sparse = 20\n[md]\ntemperature = [300.0, 600.0]\nfactory = "{name}:npt"\n')
    cfg.write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["learn", str(cfg), "-q"]) == 0
    assert sys.modules[name].MADE  # the run's walker made its dynamics with the user's factory
    assert sys.path == before  # (the folders are the command's only)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["md_factory"] == f"{name}:npt"
    cells = {round(abs(a.cell.volume), 6) for a in read(tmp_path / "run" / "train.xyz", ":")}
    assert len(cells) > 1  # strained bootstrap frames: the run knows its sampler changes the cell
    capsys.readouterr()
    bad = folder / "bad.toml"
    bad.write_text(text.replace(f'"{name}:npt"', f'"{name}:nope"').replace('"run"', '"run2"'))
    assert main(["learn", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"[md] factory '{name}:nope' cannot be imported" in err
    # a resume where the module is not on the path: the setting named, exit 2
    del sys.modules[name]
    assert main(["learn", "--resume", str(tmp_path / "run"), "--steps", "40", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"this run's MD factory '{name}:npt' cannot be imported" in err


def test_a_run_stopped_by_a_crashed_worker_exits_1_not_bad_inputs_2(tmp_path, capsys, fake_learner, monkeypatch):
    """A batch script tells a typo (2, fix the input) from a crashed worker (1, resume)."""
    def run(self, steps):
        raise gpal.exceptions.OracleStoppedError("the oracle's worker processes stopped (...). Everything so far "
                                                 "is saved in run: resume")

    monkeypatch.setattr(fake_learner, "run", run)
    assert main(["learn", "--steps", "3", "--run-dir", str(tmp_path / "run"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "worker processes stopped" in err
    with pytest.raises(SystemExit, match="2"):  # bad input (argparse)
        main(["learn", "--steps", "-1", "-q"])


def test_a_run_folder_made_unwritable_mid_run_is_exit_1_with_the_resume_line(tmp_path, capsys, fake_learner,
                                                                             monkeypatch):
    """A run whose folder became read-only (a quota, a chmod) stopped with exit 2, bad
    input, and no word of resuming; the disk-full case said both."""
    import errno

    def run(self, steps):
        (self.kwargs["run_dir"] / "state.json").write_text(json.dumps({"step": 3}))
        raise PermissionError(errno.EACCES, "Permission denied", str(self.kwargs["run_dir"] / "log.jsonl"))

    monkeypatch.setattr(fake_learner, "run", run)
    run_dir = tmp_path / "run"
    assert main(["learn", "--steps", "5", "--run-dir", str(run_dir), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "log.jsonl: Permission denied" in err
    assert f"is not writable (any more): everything written so far is kept; make it writable, then continue " \
           f"with gpal learn --resume {run_dir}" in err


def test_steps_0_is_the_same_on_the_command_line_as_in_a_config(tmp_path, capsys, fake_learner):
    """``steps = 0`` in a config runs the bootstrap alone; ``--steps 0`` was refused as
    not positive."""
    assert main(["learn", "--steps", "0", "--run-dir", str(tmp_path / "run"), "-q"]) == 0
    assert "fake summary: 0 steps" in capsys.readouterr().out
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["steps"] == 0


def test_a_compound_bulk_structure_from_the_config():
    """[structure] bulk = "NaCl" with crystal = "rocksalt" (ase.build.bulk builds it) was
    refused as an unknown chemical symbol."""
    from gpal.cli import _structure

    atoms = _structure({"bulk": "NaCl", "crystal": "rocksalt", "a": 5.64})
    assert atoms.get_chemical_formula() == "Cl4Na4"
    with pytest.raises(gpal.exceptions.ConfigError, match="unknown chemical symbol 'Xy'"):
        _structure({"bulk": "Xy"})


def test_fit_of_a_runs_training_set_defaults_to_the_learners_sparse_count():
    """A run's train.xyz refitted with the plain default (200) was 2.5-5x worse than the
    run's own model (838-1020 sparse points): gpal fit takes the learner's count."""
    from gpal.cli import _learner_sparse_count

    frames = cu_frames(6)
    assert _learner_sparse_count(frames) == 200
    for a, why in zip(frames, ["bootstrap"] * 4 + ["uncertain", "temperature"]):
        a.info["gpal_reason"] = why
    assert _learner_sparse_count(frames) == 300 + 20 * 2
    assert _learner_sparse_count(frames * 200) == 2000


def test_other_packages_deprecation_warnings_are_not_gpal_warning_lines(capsys):
    """matplotlib under a newer pyparsing warns of deprecations at import; a user cannot act
    on them, and they made a bad input's one error line three."""
    import warnings

    from gpal.cli import _one_line_warnings

    with _one_line_warnings("gpal learn"):
        warnings.warn_explicit("old API", DeprecationWarning, "/site-packages/matplotlib/_mathtext.py", 1)
        warnings.warn_explicit("a real one", UserWarning, "/site-packages/matplotlib/x.py", 1)
        warnings.warn_explicit("gpal's own", DeprecationWarning, "/src/gpal/learning/settings.py", 1)
    err = capsys.readouterr().err
    assert "old API" not in err and "a real one" in err and "gpal's own" in err


def test_gpal_md_blowing_up_is_a_stopped_run_and_a_second_run_on_its_file_is_refused(files, tmp_path, capsys,
                                                                                         monkeypatch):
    """MD that blew up mid-run exited 2 (bad input) with no step, no word of the frames kept
    and advice (min_distance) gpal md has no option for; two gpal md given one -o both
    passed the up-front check, the second emptied the first's file and both wrote into it
    (exit 0 twice, an unreadable file)."""
    model = tmp_path / "one.npz"
    one = tmp_path / "one.xyz"
    write(one, read(files / "train.xyz", 0))
    assert main(["fit", str(one), "-o", str(model), "--n-sparse", "10", "--zeta", "2", *SMALL, "-q"]) == 0
    out = tmp_path / "hot.xyz"
    capsys.readouterr()
    assert main(["md", str(model), str(one), "-o", str(out), "--temperature", "20000", "--timestep", "2",
                 "--steps", "3000", "--interval", "20", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the MD blew up at step " in err[0] and "min_distance" not in err[0]
    kept = read(out, ":")
    assert f"the {len(kept)} frames before it are in {out}" in err[0]
    import gpal.cli

    made = tmp_path / "made.xyz"
    monkeypatch.setattr(gpal.cli, "_check_output", lambda path, overwrite: made.write_text("the other run's\n"))
    assert main(["md", str(model), str(one), "-o", str(made), "--steps", "2", "-q"]) == 2
    assert "was made meanwhile by another process" in capsys.readouterr().err
    assert made.read_text() == "the other run's\n"


def test_a_species_the_model_lacks_is_named_with_its_file_and_frame(files, tmp_path, capsys):
    """gpal validate, md and fit said only 'The following species are not defined for this
    model: Ni', with no file, frame or option (fit --species Ni: '... Cu ... It knows: Ni')."""
    model = tmp_path / "cu.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "10", "--zeta", "2", *SMALL,
                 "-q"]) == 0
    ni = read(files / "test.xyz", ":")
    for a in ni:
        a.numbers[:] = 28
    write(tmp_path / "ni.xyz", ni)
    capsys.readouterr()
    for args, where in ((["validate", str(model), str(tmp_path / "ni.xyz"), "--no-plots"], "ni.xyz frame 0: "),
                        (["md", str(model), str(tmp_path / "ni.xyz"), "-o", str(tmp_path / "md.xyz")],
                         "ni.xyz (the start frame): "),
                        (["fit", str(files / "train.xyz"), "-o", str(tmp_path / "ni.npz"), "--species", "Ni",
                          *SMALL], "train.xyz frame 0: ")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and where in err[0] and "species are not defined for this model" in err[0]
    assert err[0].endswith("(given with --species)")


def test_validate_says_an_in_sample_calibration_and_leaves_no_stale_energy_plot(files, tmp_path, capsys):
    """--calibrate test.xyz on the test set itself reported a mean z² of 1.000 with no
    word; --overwrite on a forces-only test set left an earlier run's parity_energy.png
    beside the new plots."""
    from ase.calculators.singlepoint import SinglePointCalculator

    model = tmp_path / "m.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "20", "--zeta", "2", *SMALL,
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["validate", str(model), str(files / "test.xyz"), "--calibrate", str(files / "test.xyz"),
                 "-o", str(tmp_path / "c.npz"), "--no-plots"]) == 0
    assert "are the test frames" in capsys.readouterr().err
    plots = tmp_path / "plots"
    assert main(["validate", str(model), str(files / "test.xyz"), "--plots", str(plots)]) == 0
    assert (plots / "parity_energy.png").exists()
    forces_only = []
    for a in read(files / "test.xyz", ":"):
        b = a.copy()
        b.calc = SinglePointCalculator(b, forces=a.get_forces())
        forces_only.append(b)
    write(tmp_path / "forces.xyz", forces_only)
    capsys.readouterr()
    assert main(["validate", str(model), str(tmp_path / "forces.xyz"), "--plots", str(plots), "--overwrite"]) == 0
    assert not (plots / "parity_energy.png").exists() and (plots / "parity_forces.png").exists()
    assert "removed" in capsys.readouterr().err
    # a file of that name the user made is neither removed nor replaced, --overwrite or not
    # ('gpal: removed .../parity_energy.png, an earlier run's')
    for name in ("parity_energy.png", "parity_forces.png"):
        mine = plots / name
        mine.write_bytes(b"my own energy figure")
        for extra in ([], ["--overwrite"]):
            assert main(["validate", str(model), str(tmp_path / "forces.xyz"), "--plots", str(plots), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert err.endswith(f"holds {name}, which gpal did not write; give another --plots folder or "
                                "--no-plots (--overwrite replaces earlier gpal plots only)"), err
            assert mine.read_bytes() == b"my own energy figure"
        mine.unlink()


def _small_cu_run(tmp_path, monkeypatch, steps: int, extra: str):
    """A gpal learn config of a small Cu run in ``tmp_path`` (the working folder, with
    tests/_oracles importable), ``extra`` TOML appended; its path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'steps = {steps}\n[structure]\nbulk = "Cu"\nrepeat = [2, 2, 2]\n[model]\nn_sparse = 30\n'
                   '[descriptor]\nr_cut = 4.0\nn_max = 4\nl_max = 3\nsigma = 0.5\n'
                   '[trigger]\nthreshold = 0.001\n' + extra)
    return cfg


def test_a_session_its_oracle_stopped_leaves_its_summary_and_learning_curve(tmp_path, capsys, monkeypatch):
    """A first session stopped by its oracle (exit 1, 'everything is saved') had left
    model and state but neither summary.json nor learning_curve.png, which the README
    promises of the last session; now both, the summary not finished, saying why."""
    cfg = _small_cu_run(tmp_path, monkeypatch, 200, '[learner]\non_oracle_failure = "stop"\n'
                        '[oracle]\nfactory = "_oracles:FailsAfterEMT"\nkwargs = {fail_after = 6}\n')
    assert main(["learn", str(cfg), "-q"]) == 1
    assert "licence server unreachable" in capsys.readouterr().err
    run = tmp_path / "gpal_run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is False and "licence server unreachable" in summary["superseded"]
    assert summary["labelled_frames"] >= 4 and summary["steps"] < 200
    assert (run / "learning_curve.png").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_sigterm_whose_interrupt_a_finalizer_discards_still_stops_the_run(tmp_path, capsys, monkeypatch, sig):
    """SIGTERM (or Ctrl-C) while a finalizer (__del__) ran: Python printed "Exception
    ignored" for the handler's KeyboardInterrupt, and the run went on to its end and exit
    0. The signal is noted and the learner stops at its next MD step (exit 143, 130),
    resumable; Python's own Ctrl-C handler is back in place after gpal learn."""
    cfg = _small_cu_run(tmp_path, monkeypatch, 300,
                        f'[oracle]\nfactory = "_oracles:TermInFinalizerEMT"\nkwargs = {{at_call = 6, sig = "{sig}"}}\n')
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["learn", str(cfg), "-q"]) == 128 + getattr(signal, sig)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    state = json.loads((tmp_path / "gpal_run" / "state.json").read_text())
    assert state["step"] < 300
    assert main(["learn", "--resume", str(tmp_path / "gpal_run"), "-q"]) == 0
    assert json.loads((tmp_path / "gpal_run" / "summary.json").read_text())["steps"] == 300


def test_an_oracle_failing_on_the_first_frames_exits_1_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    """The run's first frames all failing exited 2 (bad input), while the README (and the
    message: 'resume once it works') treat an oracle that keeps failing as exit 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    cfg = tmp_path / "f.toml"
    cfg.write_text('steps = 5\n[structure]\nbulk = "Cu"\nrepeat = [2, 2, 2]\n'
                   '[oracle]\nfactory = "_oracles:NaNCalculator"\n')
    assert main(["learn", str(cfg), "-q"]) == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # (after a warning line for each failed attempt)
    assert err.count("error:") == 1 and "failed on the run's first 2 frames" in last and "--resume" in last
    assert (tmp_path / "gpal_run" / "state.json").exists()
