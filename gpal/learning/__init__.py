"""The active-learning loop: sampler, trigger, oracle, targets, settings.

:mod:`gpal.learning.learner`
    :class:`ActiveLearner`: the loop, checkpoint and resume.
:mod:`gpal.learning.sampler`
    :class:`MDSettings` and the walkers that run MD on the current model.
:mod:`gpal.learning.trigger`
    :class:`Trigger`: when a frame goes to the oracle.
:mod:`gpal.learning.state`
    The run folder's state: settings as JSON, import paths, labels that survive a kill.
:mod:`gpal.learning.settings`
    The learner's grouped settings (:class:`Bootstrap`, :class:`ModelGrowth`,
    :class:`OracleSettings`, :class:`Validation`, :class:`RunSettings`) and their
    checkpointed form.
:mod:`gpal.learning.oracle`
    :class:`Oracle`: labels frames with any ASE calculator, in this process or an executor,
    with retries, per-label timeouts and failures recorded; :func:`worker_pool`, gpal's
    own process pool, whose calls a timeout stops.
:mod:`gpal.learning.walkers`
    Walkers' MD as tasks on an executor (process pool, dask), one label-free batch per
    round (``ActiveLearner(walker_executor=...)``).
:mod:`gpal.learning.targets`
    :class:`TargetSet`: what a run should get right (NEB images, a barrier, chosen atoms).
"""

from .oracle import LabelFailure, Oracle, OracleSpec, WorkerPool, worker_pool  # noqa: F401
from .learner import ActiveLearner, Summary  # noqa: F401
from .sampler import MDSettings  # noqa: F401
from .settings import Bootstrap, ModelGrowth, OracleSettings, RunSettings, Validation  # noqa: F401
from .trigger import Trigger  # noqa: F401
from .targets import TargetSet  # noqa: F401

__all__ = ["ActiveLearner", "MDSettings", "Trigger", "Summary", "Bootstrap", "ModelGrowth", "OracleSettings",
           "Validation", "RunSettings", "Oracle", "OracleSpec", "LabelFailure", "TargetSet", "WorkerPool", "worker_pool"]
