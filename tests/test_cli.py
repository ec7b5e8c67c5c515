"""The gpal command line: every command runs, --help works, bad input exits non-zero."""

from __future__ import annotations

import json
import warnings

import pytest
from ase.io import write

import gpal
from gpal.cli import main

from conftest import cu_frames


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write(d / "train.xyz", cu_frames(6, seed=1, size=(2, 2, 2)))
    write(d / "test.xyz", cu_frames(3, seed=2, size=(2, 2, 2)))
    write(d / "val.xyz", cu_frames(3, seed=3, size=(2, 2, 2)))
    return d


@pytest.mark.parametrize("cmd", ["learn", "fit", "md", "validate", "info", "compare-kernels"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: gpal" in capsys.readouterr().out


def test_fit_info_validate_md(files, capsys):
    model = files / "model.npz"
    assert main(["fit", str(files / "train.xyz"), "-o", str(model), "--n-sparse", "60", "--optimize"]) == 0
    assert gpal.load(model).alpha_ is not None
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "sparse" in out and "training" in out
    plots = files / "plots"
    assert main(["validate", str(model), str(files / "test.xyz"), "--calibrate", str(files / "val.xyz"),
                 "--plots", str(plots), "-o", str(files / "calibrated.npz")]) == 0
    out = capsys.readouterr().out
    assert "force rmse" in out and "force zms" in out
    for name in ("parity_forces", "parity_energy", "calibration_curve", "error_vs_uncertainty", "z_histogram"):
        assert (plots / f"{name}.png").stat().st_size > 1000
    assert "forces_std" in gpal.load(files / "calibrated.npz").calibration_
    write(files / "start.xyz", cu_frames(1, seed=4, size=(2, 2, 2)))
    assert main(["md", str(model), str(files / "start.xyz"), "-o", str(files / "md.traj"),
                 "--steps", "20", "--interval", "5", "-q"]) == 0
    assert (files / "md.traj").stat().st_size > 0


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
    with pytest.raises(SystemExit, match="integer or 'auto'"):
        main(["fit", str(files / "train.xyz"), "-o", str(model), "--zeta", "two"])


def test_learn_with_config_and_resume(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
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
""")
    assert main(["learn", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "oracle calls" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 60
    # a second start in the same folder refuses; resume continues
    assert main(["learn", str(cfg), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["learn", "--resume", str(tmp_path / "run"), "--steps", "80", "-q"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 80


def test_bad_input_exits_nonzero(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.npz")]) == 2
    assert "error" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    assert main(["learn", str(bad)]) == 2
    assert "TOML" in capsys.readouterr().err
    assert main(["learn", str(tmp_path / "missing.toml")]) == 2
    unlabelled = tmp_path / "unlabelled.xyz"
    a = cu_frames(1)[0]
    a.calc = None
    write(unlabelled, a)
    assert main(["fit", str(unlabelled)]) == 2
    assert "no energy, forces or stress" in capsys.readouterr().err
