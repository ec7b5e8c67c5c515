"""Mutating methods of a fitted model that fail (an error, an interrupt) leave it as it was.

A :class:`gpal.SparseGP` method that changes the model (``fit``, ``update``, ``refit``,
``add_sparse_environments``, ``optimize_hyperparameters``, ``select_hyperparameters``)
sets several attributes in turn: the frames, the reference energies, the sparse set,
the kernel, the noises, the solver's factors and the weights. An exception between two
of them (a frame found bad part-way, a ``MemoryError``, Ctrl-C) had left a model that
mixed the old and the new: old weights with new reference energies (27 eV off, saved
and loaded without a word), more sparse points than weights (an ``IndexError`` in every
``predict``), frames the solver never saw.

The methods replace what they change rather than writing into it, with three
exceptions, which the snapshot covers: the model's dicts (``noise_``, ``calibration_``:
copied), the solver's attributes (its factors are replaced; its row buffer is only
written beyond the rows and columns in use, which the restored counts leave unused),
and the kernel's (hyperparameters set on it). So a snapshot of those attribute tables,
taken in O(number of attributes) (no array is copied), restores the model whole.
Caches that are rebuilt on demand and hold sets or lists that a method extends in
place are dropped instead.
"""

from __future__ import annotations

import functools

#: caches a method may extend in place; rebuilt on demand after a restore
_REBUILT = ("_frame_keys", "_energy_entries")


def _copy(state: dict) -> dict:
    return {k: (dict(v) if type(v) is dict else v) for k, v in state.items()}


def snapshot(model) -> list:
    """The attribute tables a failed method restores (see the module docstring)."""
    objects = [model] + [getattr(model, name, None) for name in ("solver_", "kernel_")]
    return [(obj, _copy(vars(obj))) for obj in objects if obj is not None and hasattr(obj, "__dict__")]


def restore(model, snap: list) -> None:
    """Put back the attribute tables of :func:`snapshot`."""
    for obj, state in snap:
        vars(obj).clear()
        vars(obj).update(state)
    for name in _REBUILT:
        vars(model).pop(name, None)


def restoring(method):
    """Decorate a mutating method: an exception (an interrupt too) leaves the model as it was."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        snap = snapshot(self)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            restore(self, snap)
            raise

    return wrapper
