# %% [markdown]
# # Walkers and oracle calls on a SLURM cluster (dask-jobqueue)
# Each SLURM job is one dask worker; every round, each walker's MD segment runs as a task
# on some worker (gpal.learning.walkers), the learner picks one batch across all walkers' uncertain
# frames, and the oracle calls go to the same workers. The learner itself (model updates,
# train.xyz, log.jsonl, checkpoints) stays in this script's process: run it on a login or
# a head node, or inside a small SLURM job of its own.
#
# What a SLURM user writes: the `SLURMCluster(...)` call below (partition, account, cores
# and memory per job, wall time, how a job finds gpal's Python), `cluster.scale(jobs=N)`,
# and `walker_executor=client.get_executor()`. Needs `pip install dask-jobqueue` and gpal
# installed where the jobs run (`python=` below, or `job_script_prologue` activating it).
#
# The same learner runs from `gpal learn` with `walker_scheduler = "tcp://host:port"` in
# its TOML, pointed at a scheduler that a script like this one (or `dask scheduler` plus
# `dask worker` jobs) keeps alive; `cluster.scheduler_address` is that address.
#
# Off SLURM (no `sbatch` on the PATH) this script runs the same code on a local
# two-worker cluster on 127.0.0.1.

# %%
if __name__ == "__main__":            # dask's worker processes re-import this file
    import shutil
    import sys

    from ase.build import bulk
    from distributed import Client, LocalCluster

    from gpal import ActiveLearner, MDSettings, OracleSpec, SparseGP, Trigger
    from _common import FAST, small_soap

    if shutil.which("sbatch"):
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(
            queue="compute",                  # partition (#SBATCH -p)
            account="my_project",             # #SBATCH -A
            cores=1,                          # one MD walker or oracle call at a time per job
            processes=1,
            memory="4GB",
            walltime="04:00:00",
            python=sys.executable,            # the Python (venv) that has gpal, on a shared filesystem
            job_script_prologue=["export OMP_NUM_THREADS=1"],
            job_extra_directives=["--hint=nomultithread"],
            log_directory="dask_logs",
        )
        print(cluster.job_script())           # the sbatch script of one worker job
        cluster.scale(jobs=8)                 # 8 single-core jobs: 8 walkers' segments at once
        n_walkers, steps = 8, 20000
    else:
        print("no sbatch on the PATH: the same run on a local two-worker cluster (127.0.0.1)")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None)
        n_walkers, steps = 4, (40 if FAST else 2000)

    with cluster, Client(cluster) as client:
        client.wait_for_workers(1)            # segments queue until jobs start
        learner = ActiveLearner(
            [bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)],
            OracleSpec("ase.calculators.emt:EMT"),    # a recipe: each worker builds its own
            SparseGP(small_soap(), n_sparse=50),
            run_dir="slurm_run",
            n_walkers=n_walkers,
            md=MDSettings(temperature=(300, 1000)),
            trigger=Trigger(every=10),
            check_every=20 if FAST else 100,          # MD steps per walker segment
            executor=client.get_executor(),           # oracle calls
            walker_executor=client.get_executor(),    # walkers' MD segments
            progress=False,
        )
        print(learner.run(steps))
