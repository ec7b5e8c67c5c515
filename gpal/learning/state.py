"""A run folder's state: settings as JSON, import paths, and labels that survive a kill."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from ase import Atoms

from ..io import json_default as _json_default
from ..model import SparseGP

log = logging.getLogger(__name__)

def _import_path(obj) -> str | None:
    """``"module:qualname"`` of a module-level class or function, else None."""
    mod, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not name or "<" in name or mod == "__main__":
        return None
    return f"{mod}:{name}"


def _import(path: str, what: str | None = None):
    """The object ``path`` (``"module:qualname"``) names. With ``what`` (e.g. "this run's MD
    factory"), a module that does not import or a missing name is a :class:`gpal.GpalError`
    that says which setting needs it and where Python looks for it."""
    from .._imports import import_object

    try:
        obj = import_object(path)
    except (ImportError, AttributeError) as exc:
        if what is None:
            raise
        from ..exceptions import GpalError

        hint = ("; if the module is your own, an installed module of the same name may hide it: rename "
                "yours" if isinstance(exc, AttributeError) else "")
        raise GpalError(f"{what} {path!r} cannot be imported ({type(exc).__name__}: {exc}); run from the "
                        f"folder that holds its module, or add that folder to PYTHONPATH{hint}") from exc
    return obj


def _model_spec(model: SparseGP) -> dict:
    """The model's constructor settings as JSON (descriptor and kernel by their params)."""
    params = model.get_params(deep=False)
    spec = {k: v for k, v in params.items() if k not in ("descriptor", "kernel")}
    if not isinstance(spec.get("random_state"), (int, type(None))):  # a Generator: not storable (as in model files)
        spec["random_state"] = None
    spec["descriptor"] = None if params["descriptor"] is None else params["descriptor"].get_params()
    spec["kernel"] = None if params["kernel"] is None else params["kernel"].to_dict()
    if params.get("baseline") is not None:  # a Δ-model's baseline: its import path and kwargs
        from ..baseline import baseline_spec

        base = baseline_spec(params["baseline"], params.get("baseline_kwargs"))
        spec["baseline"], spec["baseline_kwargs"] = base["factory"], base["kwargs"]
    return json.loads(json.dumps(spec, default=_json_default))


def _model_from_spec(spec: dict) -> SparseGP:
    from ..descriptors import SOAP
    from ..kernels import kernel_from_dict

    spec = dict(spec)
    desc = spec.pop("descriptor", None)
    kern = spec.pop("kernel", None)
    return SparseGP(None if desc is None else SOAP(**desc), None if kern is None else kernel_from_dict(kern), **spec)


def _calculator_spec(calc) -> dict | None:
    """An OracleSpec dict for a live ASE calculator rebuilt as ``Class(**calc.parameters)``."""
    path = _import_path(type(calc))
    if path is None:
        return None
    try:
        kwargs = json.loads(json.dumps(dict(getattr(calc, "parameters", {}) or {})))
    except (TypeError, ValueError):
        return None
    return {"factory": path, "kwargs": kwargs}


def _complete_frames_end(data: bytes) -> int:
    """Byte offset where the complete frames of extxyz text ``data`` end.

    A frame is complete when its atom count, its comment line and that many atom lines
    (all with the same number of columns) are there, each ending with a newline.
    """
    pos = end = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        try:
            n = int(data[pos:nl]) if nl >= 0 else -1
        except ValueError:
            break
        if n < 0:
            break
        p, ncols = nl + 1, None
        for k in range(n + 1):  # the comment line, then the atoms
            q = data.find(b"\n", p)
            if q < 0:
                return end
            if k:
                cols = len(data[p:q].split())
                if ncols is not None and cols != ncols:
                    return end
                ncols = cols
            p = q + 1
        pos = end = p
    return end


def _drop_partial_frame(path: Path) -> int:
    """Cut an incomplete last frame off ``train.xyz``: a crash while it was appended.

    The frame's label cannot be trusted (its forces may be cut), so it is not used; the
    cut text is kept in ``train.xyz.partial``. The walkers restart from their last
    checkpoint, before that label, and the trigger decides afresh whether the
    configuration they reach needs one. Returns the number of bytes cut.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = _complete_frames_end(data)
    if not data[end:].strip():
        return 0
    return _move_tail(path, data, end, "an incomplete frame (a crash while it was written)")


def _drop_partial_line(path: Path) -> int:
    """Cut an unfinished last line off ``log.jsonl`` (a kill while it was appended), so
    that the records the resumed run appends start on a line of their own; the cut text
    is kept in ``log.jsonl.partial``. Returns the number of bytes cut."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # after the last complete line (0: none)
    if end == len(data):
        return 0
    return _move_tail(path, data, end, "an unfinished line")


def _move_tail(path: Path, data: bytes, end: int, what: str) -> int:
    """Move ``data[end:]``, the end of ``path``'s content ``data``, to ``path.partial``
    (appended, synced) and cut ``path`` there (removed if nothing is left); returns the
    number of bytes moved."""
    with open(path.with_name(path.name + ".partial"), "ab") as fh:
        fh.write(data[end:] + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    if end == 0:
        path.unlink()
    else:
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    log.warning("resume: %s ended with %s, %d bytes; moved to %s.partial", path, what, len(data) - end, path.name)
    return len(data) - end


def _same_frame(a: Atoms, b: Atoms, tol: float = 1e-6) -> bool:
    """Same atoms at the same positions (train.xyz keeps 8 decimals)."""
    return (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
            and np.allclose(a.positions, b.positions, rtol=0.0, atol=tol))

