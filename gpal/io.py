"""Saving and loading gpal models, and reading/writing labelled frames.

A model file is one ``.npz`` archive (read with ``allow_pickle=False``: loading never
executes code). It holds the model's arrays and one extra entry, ``__metadata__``, a
UTF-8 JSON document with the format name and version, the gpal version, every setting
needed to rebuild the descriptor and kernel, and a SHA-256 digest of each array. A file
that is truncated, tampered with, of another format or of a newer format version raises
:class:`gpal.ModelFileError` naming the problem.

Training data are kept as extended XYZ, exactly as ASE writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .exceptions import ModelFileError

__all__ = ["save_model", "load", "read_frames", "write_frames", "append_frame"]

FORMAT_NAME = "gpal-model"
FORMAT_VERSION = 1
_META_KEY = "__metadata__"


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode())
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def save_model(path, arrays: dict, metadata: dict) -> Path:
    """Write ``arrays`` and JSON ``metadata`` to ``path`` (``.npz`` is appended if missing).

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written model under the final name.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; models store numeric arrays only")
    meta = dict(metadata)
    meta["format"] = FORMAT_NAME
    meta["format_version"] = FORMAT_VERSION
    meta["digests"] = {k: _digest(v) for k, v in arrays.items()}
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays, **{_META_KEY: blob})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_model_file(path) -> tuple[dict, dict]:
    """Read and verify a model file; returns ``(arrays, metadata)``.

    Raises
    ------
    ModelFileError
        Missing, truncated or corrupted file, wrong format, newer format version, or an
        array whose digest does not match the metadata.
    """
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".npz").exists():
        path = path.with_name(path.name + ".npz")
    if not path.exists():
        raise ModelFileError(f"no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{path} is not a readable gpal model (truncated or corrupted .npz): {exc}"
        ) from exc
    if _META_KEY not in data:
        raise ModelFileError(f"{path} has no gpal metadata: not a gpal model file")
    try:
        meta = json.loads(data.pop(_META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version!r} is newer than this gpal reads "
            f"({FORMAT_VERSION}); upgrade gpal"
        )
    digests = meta.get("digests", {})
    if set(digests) != set(data):
        missing = sorted(set(digests) ^ set(data))
        raise ModelFileError(f"{path}: arrays and metadata disagree (arrays {missing})")
    for k, v in data.items():
        if _digest(v) != digests[k]:
            raise ModelFileError(f"{path}: array {k!r} does not match its checksum (tampered?)")
    return data, meta


def load(path):
    """Load a model saved with ``SparseGP.save``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    gpal.SparseGP
    """
    from .potential import SparseGP

    return SparseGP.load(path)


# ---------------------------------------------------------------------- frames
def read_frames(path, index=":") -> list:
    """Read labelled frames (extxyz or anything ASE reads) as a list of Atoms."""
    from ase.io import read

    frames = read(str(path), index=index)
    return frames if isinstance(frames, list) else [frames]


def write_frames(path, frames) -> None:
    """Write frames with their labels to extended XYZ."""
    from ase.io import write

    write(str(path), list(frames), format="extxyz")


def append_frame(path, atoms) -> None:
    """Append one labelled frame to an extxyz file and flush it to disk at once.

    Used by the active learner so that a label survives a crash the moment it arrives.
    """
    from ase.io import write

    with open(path, "a") as fh:
        write(fh, atoms, format="extxyz")
        fh.flush()
        os.fsync(fh.fileno())
