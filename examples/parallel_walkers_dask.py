# %% [markdown]
# # Several MD walkers, oracle calls on a dask cluster
# The same code runs on a laptop (LocalCluster) and on SLURM (dask-jobqueue's SLURMCluster):
# gpal only needs a concurrent.futures Executor, `client.get_executor()`.

# %%
if __name__ == "__main__":            # dask's worker processes re-import this file
    from ase.build import bulk
    from distributed import Client, LocalCluster

    from gpal import ActiveLearner, MDSettings, OracleSpec, SparseGP, Trigger
    from _common import FAST, small_soap

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        learner = ActiveLearner(
            [bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)],
            OracleSpec("ase.calculators.emt:EMT"),    # a recipe, not a live calculator
            SparseGP(small_soap(), n_sparse=50),
            run_dir="dask_run",
            n_walkers=2,                              # two seeds, labelled concurrently
            md=MDSettings(temperature=(300, 1000)),
            trigger=Trigger(threshold=0.05),
            executor=client.get_executor(),
        )
        print(learner.run(60 if FAST else 2000))
