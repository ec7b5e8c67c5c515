"""Every bad input to the command line: exit code 2 and exactly one line on stderr."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from gpal.cli import main

from conftest import cu_frames


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A small fitted model and a collection of files that are wrong in one way each."""
    d = tmp_path_factory.mktemp("bad")
    write(d / "train.xyz", cu_frames(3, seed=1))
    assert main(["fit", str(d / "train.xyz"), "-o", str(d / "model.npz"), "--n-sparse", "10",
                 "--r-cut", "3.5", "--n-max", "3", "--l-max", "2"]) == 0
    a = cu_frames(1)[0]
    a.calc = None
    write(d / "unlabelled.xyz", a)
    write(d / "gold.xyz", bulk("Au", "fcc", a=4.08, cubic=True))  # a species the model lacks
    (d / "some.toml").write_text('steps = 10\n[md]\ntemperature = 500.0\n')
    (d / "step.toml").write_text("step = 200\n")
    (d / "temprature.toml").write_text("[md]\ntemprature = 500\n")
    (d / "late_steps.toml").write_text('[oracle]\nfactory = "ase.calculators.emt:EMT"\nstpes = 100\n')
    (d / "md_steps.toml").write_text('[md]\nsteps = 100\n')
    (d / "initial.toml").write_text("[model]\nn_sparse = 200\n[learner]\nn_sparse_initial = 100\n")
    (d / "otf.toml").write_text("[otf]\nthreshold = 0.1\n")
    (d / "many.toml").write_text('steps = "many"\n')
    (d / "val_ts.toml").write_text("[validation]\nsteps = 20\ntimestep = 5000.0\n")
    (d / "val_every.toml").write_text("[validation]\nsteps = 20\nevery = 0\n")
    (d / "tgt.toml").write_text(f'[targets]\nfile = "{d}/tgt.xyz"\nquantity = "difference"\npair = ["a", "b"]\n')
    write(d / "tgt.xyz", [bulk("Cu", "fcc", a=3.61, cubic=True)] * 2)
    (d / "huge_list.toml").write_text("[structure]\nrepeat = [1, 1, 99999999999999999999]\n")
    (d / "ceil_true.toml").write_text("[trigger]\nceiling = true\n")
    (d / "huge.toml").write_text("steps = 99999999999999999999\n[learner]\nrandom_state = 1\n")
    (d / "quantity.toml").write_text('[trigger]\nquantity = "energy"\n')
    (d / "pair.toml").write_text("[md]\ntemperature = [300, 600, 900]\n")
    squeezed = bulk("Cu", "fcc", a=3.61, cubic=True)
    squeezed.positions[1] = squeezed.positions[0] + [0.1, 0.0, 0.0]
    write(d / "overlap.xyz", squeezed)
    (d / "oldplots").mkdir()
    (d / "oldplots.png").mkdir()
    from gpal.calibration import plot_z_histogram

    plot_z_histogram(np.arange(1.0, 9.0), np.ones(8), d / "oldplots" / "z_histogram.png")  # an earlier run's
    (d / "mine").mkdir()
    (d / "mine" / "parity_energy.png").write_bytes(b"a figure of the user's")
    (d / "curves.png").write_bytes(b"learning curves of an earlier run")
    np.savez(d / "other.npz", x=np.arange(3.0))
    (d / "text.npz").write_text("not a zip archive\n")
    run = d / "run"
    run.mkdir()
    (run / "state.json").write_text('{"step": 12, "total_st')
    nostate = d / "nostate"
    (d / "element.toml").write_text('[structure]\nbulk = "Xx"\n')
    (d / "knee.toml").write_text('run_dir = "knee_run"\n[model]\nforce_noise_knee = "sometimes"\n')
    (d / "noise.toml").write_text('run_dir = "noise_run"\n[model]\nforce_noise = -1.0\n')
    (d / "mevnoise.toml").write_text('run_dir = "mevnoise_run"\n[model]\nforce_noise = 50\n')
    (d / "crystal.toml").write_text('run_dir = "crystal_run"\n[structure]\ncrystal = "fccc"\n')
    (d / "smallrcut.toml").write_text('run_dir = "smallrcut_run"\n[descriptor]\nr_cut = 0.5\n')
    nostate.mkdir()
    (nostate / "state.json").write_text('{"total_steps": 3}')
    # bad values a type check lets through: each must fail before the run folder exists
    for name, text in {
        "walkers0": "[learner]\nn_walkers = 0\n", "timestep": "[md]\ntimestep = -1.0\n",
        "coldtemp": "[md]\ntemperature = -300.0\n", "steps": "steps = -5\n", "workers": "workers = 0\n",
        "boot0": "[learner]\nn_bootstrap = 0\n", "oracle": '[oracle]\nfactory = "nosuchmodule:Calc"\n',
        "retries": "[learner]\noracle_retries = -1\n", "sparse": "[model]\nn_sparse = -3\n",
        "vstep": "[validation]\nsteps = 10\ntimestep = 0.0\n",
        "vevery": "[validation]\nsteps = 10\nevery = 100\n",
        "margin": "[trigger]\nadapt_margin = -0.5\n", "tmin": "[trigger]\nthreshold_min = -1.0\n",
        "species": '[descriptor]\nspecies = ["Au"]\n', "jitter": "[model]\njitter = -1.0\n",
        "seed": "[learner]\nrandom_state = -1\n", "lattice": '[structure]\nbulk = "Cu"\na = -3.6\n',
        "targets": '[targets]\nfile = "nowhere.xyz"\n', "maxsp": "[learner]\nmax_sparse = 5\n",
        "index": '[structure]\nfile = "train.xyz"\nindex = 99\n',
        "sfile": '[structure]\nfile = "nowhere.xyz"\n',
        "mseed": "[model]\nrandom_state = -1\n", "mbase": '[model]\nbaseline = "nomod:X"\n',
        "mbasekw": '[model]\nbaseline = "ase.calculators.lj:LennardJones"\nbaseline_kwargs = {sigmaa = 2.3}\n',
        "mfile": f'[structure]\nbulk = "Au"\n[model]\nfile = "{d / "model.npz"}"\n',
        "tspecies": f'[targets]\nfile = "{d / "gold.xyz"}"\n',
        "twalkers": f'walker_workers = 2\n[targets]\nfile = "{d / "train.xyz"}"\n',
        "sindex": f'[structure]\nfile = "{d / "train.xyz"}"\nindex = "abc"\n',
        "maxcalls": "[learner]\nmax_oracle_calls = 2\n",
        "okwargs": '[oracle]\nfactory = "_oracles:StrictEMT"\nkwargs = {methd = "x"}\n',
        # no factory: these went to the demo's EMT, which took them and labelled the run
        "nofactory": '[oracle]\nkwargs = {xc = "PBE", basis = "sto-3g"}\n',
        "oraise": '[oracle]\nfactory = "_oracles_broken:Calc"\n',
        "maxT": "[md]\ntemperature = 1000.0\n[learner]\nmax_temperature = 100.0\n",
        "nsp": '[model]\nn_sparse = {Au = 10}\n',
        "rcut": "[descriptor]\nr_cut = -5.0\n",
        "both": f'[structure]\nfile = "{d / "train.xyz"}"\nbulk = "Cu"\n',
        "overlap": f'[structure]\nfile = "{d / "overlap.xyz"}"\n',
        "exactALL": '[learner]\nexact_frames = "ALL"\n', "exactneg": "[learner]\nexact_frames = -3\n",
        "maxforce": "[learner]\nmax_force = -1.0\n", "optevery": "[learner]\noptimize_every = 0.5\n",
        "otimeout": "[learner]\noracle_timeout = 0.0\n", "ckpt": "[learner]\ncheckpoint_every = 0\n",
        "cands": "[learner]\nn_candidates = 2\n", "ofail": '[learner]\non_oracle_failure = "panic"\n',
        "vbudget": "[learner]\nmax_oracle_calls = 20\n[validation]\nsteps = 40\nevery = 10\n",
    }.items():
        (d / f"v_{name}.toml").write_text(f'run_dir = "v_{name}_run"\n' + text)
    return d


# (argv with {d} for the fixture folder, a fragment the one-line message must contain)
CASES = [
    pytest.param(["validate", "{d}/model.npz", "{d}/unlabelled.xyz"], "has no energy, forces or stress",
                 id="validate-unlabelled"),
    pytest.param(["fit", "{d}/some.toml"], "is not a structure file ASE can read", id="fit-toml"),
    pytest.param(["fit", "{d}/train.xyz", "--zeta", "four"],
                 "argument --zeta: must be an integer >= 1 or 'auto', got 'four'", id="fit-zeta-four"),
    pytest.param(["fit", "{d}/train.xyz", "--n-sparse", "-3"], "argument --n-sparse: must be an integer > 0",
                 id="fit-negative-n-sparse"),
    pytest.param(["fit", "{d}/train.xyz", "--species", "Cu", "Xy"], "unknown chemical symbol(s) Xy",
                 id="fit-species"),
    pytest.param(["learn", "{d}/missing.toml"], "missing.toml does not exist", id="learn-missing"),
    pytest.param(["learn", "--resume", "{d}/missing_run"], "missing_run: no such run folder",
                 id="resume-missing"),
    pytest.param(["fit", "{d}/missing.xyz"], "missing.xyz: No such file or directory", id="fit-missing"),
    pytest.param(["md", "{d}/missing.npz", "{d}/train.xyz"], "no model file at", id="md-missing-model"),
    pytest.param(["md", "{d}/model.npz", "{d}/missing.xyz", "-o", "{d}/md.xyz"],
                 "missing.xyz: No such file or directory", id="md-missing-start"),
    pytest.param(["md", "{d}/model.npz", "{d}/train.xyz", "-o", "{d}/md.pdb"],
                 "write extended XYZ (.xyz, .extxyz", id="md-output-format"),
    pytest.param(["md", "{d}/model.npz", "{d}/train.xyz", "-o", "{d}/md.xyz", "--temperature", "0.05"],
                 "--temperature 0.05 K, below 1 K; temperatures are in Kelvin", id="md-temperature-unit"),
    pytest.param(["validate", "{d}/missing.npz", "{d}/train.xyz"], "no model file at",
                 id="validate-missing-model"),
    pytest.param(["validate", "{d}/model.npz", "{d}/missing.xyz"], "missing.xyz: No such file",
                 id="validate-missing-test"),
    pytest.param(["validate", "{d}/missing.npz", "{d}/train.xyz", "--plots", "{d}/oldplots"], "no model file at",
                 id="validate-missing-model-before-old-plots"),
    pytest.param(["learn", "{d}/crystal.toml"], "[structure] bulk 'Cu', crystal 'fccc': Unknown structure",
                 id="config-crystal"),
    pytest.param(["learn", "{d}/mevnoise.toml"], "mevnoise.toml: [model] force_noise = 50 eV/Å is above 5 eV/Å",
                 id="config-noise-in-mev"),
    pytest.param(["learn", "{d}/smallrcut.toml"], "[descriptor] r_cut must be larger than 1 Å",
                 id="config-small-r-cut"),
    pytest.param(["info", "{d}/missing.npz"], "no model file at", id="info-missing"),
    pytest.param(["compare-kernels", "{d}/missing.xyz", "{d}/train.xyz"], "missing.xyz: No such file",
                 id="compare-missing"),
    pytest.param(["learn", "--resume", "{d}/run"], "run/state.json is damaged (not valid JSON",
                 id="resume-truncated-state"),
    pytest.param(["learn", "--resume", "{d}/nostate"], "nostate/state.json is not a gpal run state",
                 id="resume-foreign-state"),
    pytest.param(["learn", "{d}/step.toml"], "unknown key 'step' in top level; did you mean 'steps'?",
                 id="config-step"),
    pytest.param(["learn", "{d}/temprature.toml"],
                 "unknown key 'temprature' in [md]; did you mean 'temperature'?", id="config-temprature"),
    pytest.param(["learn", "{d}/late_steps.toml"],
                 "unknown key 'stpes' in [oracle]; did you mean 'steps'? that is a top-level key: write it "
                 "above the first [section]", id="config-top-level-key-in-a-section"),
    pytest.param(["learn", "{d}/md_steps.toml"],
                 "unknown key 'steps' in [md]; it is a top-level key: write it above the first [section]",
                 id="config-top-level-key-near-a-section-key"),
    pytest.param(["learn", "{d}/initial.toml"], "{d}/initial.toml: [learner] n_sparse_initial (100) and [model] n_sparse (200) "
                 "disagree", id="config-n-sparse-initial"),
    pytest.param(["learn", "{d}/otf.toml"], "unknown section [otf]; valid sections: [descriptor]",
                 id="config-otf-section"),
    pytest.param(["learn", "{d}/many.toml"], 'many.toml: steps must be an integer, got "many" (MD steps',
                 id="config-wrong-type"),
    pytest.param(["learn", "{d}/val_ts.toml"], "val_ts.toml: [validation] timestep = 5000 fs is outside 0.001-100 fs",
                 id="config-validation-timestep-units"),
    pytest.param(["learn", "{d}/val_every.toml"], "val_every.toml: [validation] every must be >= 1, got 0",
                 id="config-validation-every"),
    pytest.param(["learn", "{d}/tgt.toml"], "tgt.toml: [targets] pair must be two structure indices (integers), "
                 "got ['a', 'b']", id="config-targets-named"),
    pytest.param(["learn", "{d}/huge_list.toml"], "huge_list.toml: [structure] repeat = [1, 1, 99999999999999999999] "
                 "holds an integer beyond TOML's 64 bits", id="config-integer-in-a-list-beyond-64-bits"),
    pytest.param(["learn", "{d}/ceil_true.toml"], "[trigger] ceiling = true is not a setting: give a number, or false "
                 "to turn it off", id="config-false-only-key"),
    pytest.param(["learn", "{d}/huge.toml"], "huge.toml: steps = 99999999999999999999 holds an integer beyond TOML's "
                 "64 bits", id="config-integer-beyond-64-bits"),
    pytest.param(["learn", "{d}/quantity.toml"], "[trigger] Invalid trigger quantity 'energy'",
                 id="config-trigger-quantity"),
    pytest.param(["learn", "{d}/pair.toml"], "[md] temperature must be a number or a pair",
                 id="config-temperature-triple"),
    pytest.param(["info", "{d}/other.npz"], "has no gpal metadata: not a gpal model file", id="info-foreign-npz"),
    pytest.param(["md", "{d}/other.npz", "{d}/train.xyz"], "not a gpal model file", id="md-foreign-npz"),
    pytest.param(["validate", "{d}/other.npz", "{d}/train.xyz"], "not a gpal model file",
                 id="validate-foreign-npz"),
    pytest.param(["info", "{d}/text.npz"], "text.npz is not a gpal model file (not an .npz archive, or truncated)",
                 id="info-text-file"),
    pytest.param(["validate", "{d}/model.npz", "{d}/train.xyz", "--plots", "{d}/oldplots"],
                 "holds z_histogram.png (plots of an earlier run); give another --plots folder, --no-plots, "
                 "or --overwrite", id="validate-earlier-plots"),
    pytest.param(["validate", "{d}/model.npz", "{d}/train.xyz", "--plots", "{d}/mine", "--overwrite"],
                 "holds parity_energy.png, which gpal did not write; give another --plots folder or --no-plots",
                 id="validate-users-plot-name"),
    pytest.param(["learn", "--print-config", "--resume", "{d}/run"],
                 "--print-config prints the default configuration, not a run's", id="print-config-resume"),
    pytest.param(["compare-kernels", "{d}/train.xyz", "{d}/train.xyz", "--plot", "{d}/oldplots"],
                 "--plot {d}/oldplots: a folder; give a file name", id="compare-plot-existing-folder"),
    pytest.param(["validate", "{d}/model.npz", "{d}/train.xyz", "--plots", "{d}/train.xyz"],
                 "a file, not a folder", id="validate-plots-file"),
    pytest.param(["compare-kernels", "{d}/train.xyz", "{d}/train.xyz", "--plot", "{d}/curves.png"],
                 "--plot {d}/curves.png: {d}/curves.png exists; give another name, or --overwrite",
                 id="compare-earlier-plot"),
    pytest.param(["compare-kernels", "{d}/train.xyz", "{d}/train.xyz", "--plot", "{d}/oldplots.png",
                  "--overwrite"], "oldplots.png: a folder; give a file name", id="compare-plot-folder"),
    pytest.param(["validate", "{d}/model.npz", "{d}/train.xyz", "--plots", "{d}/train.xyz/sub"],
                 "{d}/train.xyz is a file, not a folder", id="validate-plots-under-a-file"),
    pytest.param(["compare-kernels", "{d}/train.xyz", "{d}/train.xyz", "--plot", "{d}/newplots/"],
                 "a folder; give a file name", id="compare-plot-trailing-slash"),
    pytest.param(["fit", "{d}/train.xyz", "-o", "."], "-o .: a folder; give a file name", id="fit-output-dot"),
    pytest.param(["fit", "{d}/train.xyz", "-o", "{d}/models/"], "-o {d}/models/: a folder; give a file name",
                 id="fit-output-trailing-slash"),
    pytest.param(["compare-kernels", "{d}/train.xyz", "{d}/train.xyz", "--plot", "{d}/curves"],
                 "--plot {d}/curves.png: {d}/curves.png exists", id="compare-earlier-plot-no-suffix"),
    pytest.param(["validate", "{d}/model.npz", "{d}/train.xyz", "-o", "{d}/x.npz"],
                 "they need --calibrate", id="validate-output-without-calibrate"),
    pytest.param(["fit"], "the following arguments are required: train", id="fit-no-argument"),
    pytest.param(["learn", "{d}/element.toml"], "[structure] bulk: unknown chemical symbol 'Xx'",
                 id="config-unknown-element"),
    pytest.param(["learn", "{d}/knee.toml"], "force_noise_knee must be > 0 (eV/Å), 'auto' or None",
                 id="config-model-knee"),
    pytest.param(["learn", "{d}/noise.toml"], "force_noise must be a finite number > 0 or None, got -1.0",
                 id="config-model-noise"),
    pytest.param(["ipi", "{d}/missing.npz", "--unix", "gpal-test"], "no model file at", id="ipi-missing-model"),
    pytest.param(["ipi", "{d}/model.npz"], "one of the arguments --unix --port is required",
                 id="ipi-no-socket"),
    pytest.param(["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'", id="unknown-command"),
    pytest.param(["learn", "{d}/v_walkers0.toml"], "{d}/v_walkers0.toml: [learner] n_walkers must be an integer >= 1, "
                 "got 0", id="config-zero-walkers"),
    pytest.param(["learn", "{d}/v_exactALL.toml"], "{d}/v_exactALL.toml: [learner] exact_frames must be an integer "
                 ">= 0, \"all\" or None, got 'ALL'", id="config-learner-exact-frames-text"),
    pytest.param(["learn", "{d}/v_exactneg.toml"], "{d}/v_exactneg.toml: [learner] exact_frames must be an "
                 "integer >= 0", id="config-learner-exact-frames-negative"),
    pytest.param(["learn", "{d}/v_maxforce.toml"], "{d}/v_maxforce.toml: [learner] max_force must be a finite "
                 "number > 0 eV/Å, got -1.0", id="config-learner-max-force"),
    pytest.param(["learn", "{d}/v_optevery.toml"], "{d}/v_optevery.toml: [learner] optimize_every must be 0 "
                 "(never) or a growth factor >= 1, got 0.5", id="config-learner-optimize-every"),
    pytest.param(["learn", "{d}/v_otimeout.toml"], "{d}/v_otimeout.toml: [learner] oracle_timeout must be a "
                 "finite number > 0 s", id="config-learner-oracle-timeout"),
    pytest.param(["learn", "{d}/v_ckpt.toml"], "{d}/v_ckpt.toml: [learner] checkpoint_every must be an integer "
                 ">= 1, got 0", id="config-learner-checkpoint-every"),
    pytest.param(["learn", "{d}/v_cands.toml"], "{d}/v_cands.toml: [learner] n_candidates (2) must be >= "
                 "n_bootstrap (4)", id="config-learner-candidates"),
    pytest.param(["learn", "{d}/v_ofail.toml"], "{d}/v_ofail.toml: [learner] on_oracle_failure must be one of",
                 id="config-learner-on-failure"),
    pytest.param(["learn", "{d}/v_vbudget.toml"], "{d}/v_vbudget.toml: [learner] max_oracle_calls = 20 counts the validation trajectory's ~41 oracle calls", id="validation-over-budget"),
    pytest.param(["learn", "a.toml", "b.toml"], "gpal learn: error: unrecognized arguments: b.toml", id="stray-argument"),
    pytest.param(["learn", "{d}/v_timestep.toml"], "[md] timestep must be a finite number > 0 fs, got -1.0",
                 id="config-negative-timestep"),
    pytest.param(["learn", "{d}/v_coldtemp.toml"], "[md] temperature must be a finite number >= 0 K",
                 id="config-negative-temperature"),
    pytest.param(["learn", "{d}/v_steps.toml"], "steps must be >= 0, got -5", id="config-negative-steps"),
    pytest.param(["learn", "{d}/v_workers.toml"], "workers must be >= 1, got 0", id="config-zero-workers"),
    pytest.param(["learn", "{d}/v_boot0.toml"], "{d}/v_boot0.toml: [learner] n_bootstrap must be >= 1 for a model that is not fitted yet",
                 id="config-zero-bootstrap"),
    pytest.param(["learn", "{d}/v_oracle.toml"], "cannot import oracle module 'nosuchmodule'",
                 id="config-oracle-import"),
    pytest.param(["learn", "{d}/v_retries.toml"], "{d}/v_retries.toml: [learner] oracle_retries must be an integer >= 0, got -1",
                 id="config-negative-retries"),
    pytest.param(["learn", "{d}/v_sparse.toml"], "n_sparse must be an integer >= 1, got -3",
                 id="config-negative-n-sparse"),
    pytest.param(["learn", "{d}/v_vstep.toml"], "[validation] timestep must be a finite number > 0",
                 id="config-validation-timestep"),
    pytest.param(["learn", "{d}/v_vevery.toml"], "[validation] every (100) must be <= steps (10)",
                 id="config-validation-every"),
    pytest.param(["learn", "{d}/v_margin.toml"], "adapt_margin must be a finite number >= 0",
                 id="config-trigger-margin"),
    pytest.param(["learn", "{d}/v_tmin.toml"], "threshold_min must be a finite number >= 0",
                 id="config-trigger-threshold-min"),
    pytest.param(["md", "{d}/model.npz", "{d}/gold.xyz", "-o", "{d}/gold.traj"],
                 "not defined for this model: Au (Z=79). It knows: Cu", id="md-start-species"),
    pytest.param(["learn", "{d}/v_species.toml"], "not defined for this model: Cu (Z=29). It knows: Au",
                 id="config-descriptor-species"),
    pytest.param(["learn", "{d}/v_jitter.toml"], "jitter must be a finite number >= 0", id="config-jitter"),
    pytest.param(["learn", "{d}/v_seed.toml"], "{d}/v_seed.toml: [learner] random_state must be an integer >= 0", id="config-seed"),
    pytest.param(["learn", "{d}/v_lattice.toml"], "{d}/v_lattice.toml: [structure] a must be > 0", id="config-lattice"),
    pytest.param(["learn", "{d}/v_targets.toml"], "{d}/v_targets.toml: [targets] file 'nowhere.xyz': no such file",
                 id="config-targets-file"),
    pytest.param(["learn", "{d}/v_maxsp.toml"], "{d}/v_maxsp.toml: [learner] max_sparse (5) is below the model's n_sparse",
                 id="config-max-sparse"),
    pytest.param(["learn", "{d}/v_index.toml"], "[structure] index 99 is out of range", id="config-index"),
    pytest.param(["learn", "{d}/v_sfile.toml"], "{d}/v_sfile.toml: [structure] file 'nowhere.xyz': no such file (a relative path "
                 "is read from the working directory", id="config-structure-file"),
    pytest.param(["learn", "{d}/v_mseed.toml"], "random_state must be an integer >= 0", id="config-model-seed"),
    pytest.param(["learn", "{d}/v_mbase.toml"], "cannot import baseline module 'nomod'", id="config-baseline"),
    pytest.param(["learn", "{d}/v_mbasekw.toml"], "{d}/v_mbasekw.toml: [model] the baseline "
                 "ase.calculators.lj:LennardJones has no keyword 'sigmaa' (did you mean 'sigma'?)",
                 id="config-baseline-keyword"),
    pytest.param(["learn", "{d}/v_mfile.toml"], "[structure]: The following species are not defined for this "
                 "model: Au", id="config-model-file-species"),
    pytest.param(["learn", "{d}/v_tspecies.toml"], "{d}/v_tspecies.toml: [targets] structure 0: The following species",
                 id="config-targets-species"),
    pytest.param(["learn", "{d}/v_twalkers.toml"], "[targets] cannot run with walker_workers",
                 id="config-targets-walkers"),
    pytest.param(["learn", "{d}/v_sindex.toml"], "[structure] index must be an integer or an ASE slice",
                 id="config-index-text"),
    pytest.param(["fit", "{d}/train.xyz", "--kernel", "se", "--zeta", "5"], "--zeta is the exponent of the "
                 "dot-product kernel", id="fit-se-zeta"),
    pytest.param(["fit", "{d}/train.xyz", "--length-scale", "0.3"], "--length-scale is the SE kernel's",
                 id="fit-dot-length-scale"),
    pytest.param(["learn", "{d}/v_maxcalls.toml"], "{d}/v_maxcalls.toml: [learner] max_oracle_calls (2) is below n_bootstrap (4)",
                 id="config-max-calls"),
    pytest.param(["ipi", "{d}/model.npz", "--port", "70000"], "must be a port number 1-65535", id="ipi-port"),
    pytest.param(["learn", "{d}/v_nofactory.toml"], "{d}/v_nofactory.toml: [oracle] sets kwargs but no factory",
                 id="config-oracle-without-factory"),
    pytest.param(["learn", "{d}/v_okwargs.toml"], "{d}/v_okwargs.toml: [oracle] cannot build the oracle _oracles:StrictEMT(methd='x'): "
                 "TypeError", id="config-oracle-kwargs"),
    pytest.param(["learn", "{d}/v_oraise.toml"], "importing oracle module '_oracles_broken' failed: "
                 "RuntimeError: licence server not reachable", id="config-oracle-import-raises"),
    pytest.param(["learn", "{d}/v_maxT.toml"], "{d}/v_maxT.toml: [learner] max_temperature (100 K) must be above the MD protocol's "
                 "highest temperature (1000 K)", id="config-max-temperature"),
    pytest.param(["learn", "{d}/v_nsp.toml"], "gives no sparse environment to the species of the structures (Cu)",
                 id="config-n-sparse-species"),
    pytest.param(["learn", "{d}/v_rcut.toml"], "r_cut must be larger than 1", id="config-negative-r-cut"),
    pytest.param(["learn", "{d}/v_both.toml"], "[structure] file and bulk exclude each other",
                 id="config-file-and-bulk"),
    pytest.param(["learn", "{d}/v_overlap.toml"], "structures[0] has two atoms 0.100 Å apart",
                 id="config-overlapping-start"),
    pytest.param(["learn", "{d}/some.toml", "--print-config"], "--print-config prints the default "
                 "configuration and reads no config file", id="print-config-with-file"),
    pytest.param(["fit", "{d}/train.xyz", "--force-noise", "inf"], "argument --force-noise: must be a finite "
                 "number > 0, got 'inf'", id="fit-infinite-noise"),
    pytest.param(["md", "{d}/model.npz", "{d}/train.xyz", "--timestep", "inf"], "argument --timestep: must be "
                 "a finite number > 0", id="md-infinite-timestep"),
    pytest.param(["fit", "{d}/train.xyz", "--species", "Au", "-o", "{d}/au.npz"], "not defined for this model: Cu (Z=29)",
                 id="fit-species-before-fitting"),
    pytest.param(["compare-kernels", "{d}/train.xyz", "{d}/train.xyz", "--plot", "{d}/p.xyzzy"],
                 "matplotlib cannot write .xyzzy files", id="compare-plot-format"),
    pytest.param(["learn", "--resume", "{d}/run", "--run-dir", "{d}/other"], "--resume continues RUN_DIR in place",
                 id="resume-with-run-dir"),
    pytest.param(["md", "{d}/model.npz", "{d}/train.xyz", "--temperature", "-100"],
                 "argument --temperature: must be a finite number >= 0", id="md-negative-temperature"),
    pytest.param(["fit", "{d}/train.xyz", "-o", "{d}/no/such/folder/m.npz"], "does not exist",
                 id="fit-output-folder"),
    pytest.param(["fit", "{d}/train.xyz", "-o", "{d}/model"], "model.npz exists; give another name, or "
                 "--overwrite to replace it", id="fit-existing-output"),
    pytest.param(["md", "{d}/model.npz", "{d}/train.xyz", "-o", "{d}/train.xyz"], "train.xyz exists",
                 id="md-existing-output"),
    pytest.param(["validate", "{d}/model.npz", "{d}/train.xyz", "--calibrate", "{d}/train.xyz", "-o",
                  "{d}/model.npz"], "model.npz exists", id="validate-existing-output"),
]


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("argv, fragment", CASES)
def test_bad_input_is_one_line_and_exit_code_2(bad, argv, fragment, capsys, monkeypatch):
    monkeypatch.chdir(bad)  # a default run directory (gpal_run) lands here, not in the caller's folder
    argv = [a.format(d=bad) for a in argv]
    code = _run(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"gpal{' ' + argv[0] if argv[0] != 'frobnicate' else ''}")
    assert ": error: " in lines[0]
    assert fragment.format(d=bad) in lines[0]
    assert "Traceback" not in captured.err
    assert not any(bad.glob("v_*_run"))  # a bad configuration leaves no run folder behind


def test_bad_input_in_a_real_process(bad):
    """The console entry point: no traceback, one line, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "gpal.cli", "learn", str(bad / "temprature.toml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"gpal learn: error: {bad / 'temprature.toml'}: unknown key 'temprature' in [md]; "
        "did you mean 'temperature'?"
    ]
    assert proc.stdout == ""


def test_a_reader_that_goes_away_is_not_an_error(bad):
    """``gpal info model.npz | head -1``: the pipe closes early; no message, exit 141 (SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "gpal.cli", "info", str(bad / "model.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before gpal writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""


def test_keyboard_interrupt_is_one_line_and_exit_code_130(monkeypatch, capsys):
    import gpal.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpal.cli, "cmd_info", interrupted)
    assert main(["info", "whatever.npz"]) == 130
    assert capsys.readouterr().err.splitlines() == ["gpal info: interrupted"]


def test_a_bad_model_setting_costs_no_oracle_call(bad, capsys, monkeypatch):
    # the model's settings are checked when the learner is built, not at the first fit
    # after the bootstrap labels
    monkeypatch.chdir(bad)
    for name in ("knee", "noise"):
        assert _run(["learn", str(bad / f"{name}.toml")]) == 2
        assert len(capsys.readouterr().err.splitlines()) == 1
        assert not (bad / f"{name}_run" / "train.xyz").exists()


def test_a_warning_reached_from_several_places_is_shown_once(capsys):
    """One text once per command, however many code paths raise it (a learner's fits and
    predictions reached the periodic=False warning six times)."""
    import warnings

    from gpal.cli import _one_line_warnings

    def here():
        warnings.warn("the same advice", UserWarning)

    def there():
        warnings.warn("the same advice", UserWarning)

    with _one_line_warnings("gpal learn"):
        here()
        there()
        warnings.warn("other advice", UserWarning)
    assert capsys.readouterr().err.splitlines() == [
        "gpal learn: warning: the same advice", "gpal learn: warning: other advice"]


def test_a_warning_during_a_progress_bar_gets_its_own_line(capsys):
    """compare-kernels printed a hyperparameter-bound warning into the middle of its bar."""
    import warnings

    from tqdm import tqdm

    from gpal.cli import _one_line_warnings

    with _one_line_warnings("gpal compare-kernels"):
        with tqdm(total=2, file=sys.stderr, mininterval=0) as bar:
            bar.update(1)
            warnings.warn("a bound was reached", UserWarning)
            bar.update(1)
    shown = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n")]
    assert "gpal compare-kernels: warning: a bound was reached" in shown


def test_python_dash_m_gpal_is_the_gpal_command():
    proc = subprocess.run([sys.executable, "-m", "gpal", "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("gpal ")


def test_ctrl_c_while_gpal_loads_is_one_line_and_exit_code_130(tmp_path):
    """The console command, interrupted as it starts loading gpal (numba, scipy and ASE:
    ~1-2 s): one line and 130, as later (it was a 10-45 line traceback: the console
    script imported the package before gpal.cli.main's own handler)."""
    import signal
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gpal"] == "_gpal_command:main"
    # what the installed script runs: import the entry module, call its main (which
    # imports gpal), here after a line that says it is about to
    entry = ("import sys, _gpal_command; sys.stderr.write('starting\\n'); sys.stderr.flush(); "
             "sys.exit(_gpal_command.main())")
    proc = subprocess.Popen([sys.executable, "-c", entry, "learn", "--run-dir", str(tmp_path / "run"), "-q"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr.readline() == "starting\n"
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["gpal: interrupted"] and out == ""
    assert not (tmp_path / "run").exists()


def test_a_ctrl_c_while_gpal_loads_waits_for_the_import_a_second_one_does_not(monkeypatch, capsys):
    """An interrupt raised inside the import machinery left a traceback of its module locks
    under load: the first Ctrl-C is held until the import ends; a second is not held."""
    import builtins
    import signal

    import _gpal_command

    for presses, expect_imported in ((1, True), (2, False)):
        done = []
        real_import = builtins.__import__

        def importing(name, *args, _presses=presses, _done=done, **kwargs):
            if name == "gpal.cli":
                for _ in range(_presses):
                    signal.raise_signal(signal.SIGINT)
                _done.append(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", importing)
        assert _gpal_command.main() == 130
        monkeypatch.setattr(builtins, "__import__", real_import)
        assert bool(done) is expect_imported
        assert capsys.readouterr().err.splitlines() == ["gpal: interrupted"]


def test_ctrl_c_before_the_run_folder_is_known_claims_nothing_saved(tmp_path, capsys, monkeypatch):
    """It said 'progress is saved, continue with: gpal learn --resume RUN_DIR' with no run anywhere."""
    from gpal.cli import config, main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "load_config", interrupted)
    cfg = tmp_path / "c.toml"
    cfg.write_text("steps = 3\n")
    assert main(["learn", str(cfg), "-q"]) == 130
    err = capsys.readouterr().err
    assert "before the run started; nothing to resume" in err and "RUN_DIR" not in err


def test_an_empty_run_dir_is_refused_not_taken_as_the_current_folder(tmp_path, capsys, monkeypatch):
    from gpal.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('run_dir = ""\nsteps = 5\n')
    assert main(["learn", "c.toml", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "c.toml: run_dir is empty: give a path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]

