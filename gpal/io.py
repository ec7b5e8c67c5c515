"""Saving and loading gpal models, and reading/writing labelled frames.

A model file is one ``.npz`` archive (read with ``allow_pickle=False``: no pickle). It
holds the model's arrays and one extra entry, ``__metadata__``, a UTF-8 JSON document
with the format name and version, the gpal version, every setting needed to rebuild the
descriptor and kernel (and a Δ-model's baseline calculator, as an import path and JSON
keyword arguments under ``baseline``: never pickled; loading builds only an ASE
calculator class, so load Δ-models from sources you trust as you would run their
baseline code), a SHA-256 digest of each array and one of the metadata. A file that is
truncated, edited, of another format or of a newer format version raises
:class:`gpal.ModelFileError` naming the problem (the digests find accidental damage and
edits; they are not a signature).

Training data are kept as extended XYZ, exactly as ASE writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import threading
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .exceptions import ModelFileError, StructureFileError

if TYPE_CHECKING:  # (this module imports ase where it uses it)
    from ase import Atoms

__all__ = ["save_model", "read_frames", "relabel_frames", "write_frames", "append_frame",
           "labelled", "atomic_write"]

FORMAT_NAME = "gpal-model"
FORMAT_VERSION = 1
_META_KEY = "__metadata__"


def labelled(atoms, *, energy=None, forces=None, stress=None, energies=None, bare: bool = True):
    """A copy of ``atoms`` carrying the given labels in a ``SinglePointCalculator``.

    The one way gpal attaches labels to a frame (oracle results, model predictions,
    relabelled files), so every labelled frame answers ``get_potential_energy``,
    ``get_forces`` and ``get_stress`` the same way and writes the same extended XYZ.

    Parameters
    ----------
    atoms : ase.Atoms
    energy : float, optional
        Total energy (eV); also stored as ``free_energy``.
    forces : array_like of shape (N, 3), optional
        eV/Å.
    stress : array_like of shape (6,), optional
        Voigt order (xx, yy, zz, yz, xz, xy), eV/Å³.
    energies : array_like of shape (N,), optional
        Per-atom energies (eV).
    bare : bool, default True
        True: the copy has only numbers, positions, cell and pbc (no info, arrays,
        constraints or momenta of ``atoms``). False: ``atoms.copy()`` without its
        calculator.

    Returns
    -------
    ase.Atoms
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    if bare:
        out = Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                    cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy())
    else:
        out = atoms.copy()
        out.calc = None
        # the labels live in the calculator only (extended XYZ refuses a label in both)
        for key in ("energy", "free_energy", "stress", "virial"):
            out.info.pop(key, None)
        for key in ("forces", "energies"):
            if key in out.arrays:
                del out.arrays[key]
    res = {}
    if energy is not None:
        res["energy"] = float(energy)
        res["free_energy"] = float(energy)
    for name, value in (("forces", forces), ("stress", stress), ("energies", energies)):
        if value is not None:
            res[name] = np.array(value, dtype=float)
    out.calc = SinglePointCalculator(out, **res)
    return out


@contextmanager
def atomic_write(path, mode: str = "w"):
    """Open ``path`` for writing so that it is either whole or untouched.

    Writes go to a temporary file of a name no other file has, ``.NAME.XXXXXXXX.tmp``
    beside ``path`` (see :func:`temporary_name`); on success the data is flushed and
    fsynced and the file renamed over ``path`` (atomic on POSIX); on any exception
    (KeyboardInterrupt included) the temporary file is removed and ``path`` keeps its
    old content. A kill at any moment leaves the old or the new file, never a cut one,
    and never touches another file: a user's own ``NAME.tmp`` stays as it is, and two
    processes writing ``path`` at once each write their own temporary file (the last
    rename wins, whole).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder must exist.
    mode : {"w", "wb"}
        Text or binary.

    Yields
    ------
    file object
        Open for writing in ``mode``.

    Raises
    ------
    FileNotFoundError
        The folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():  # (open would name the temporary file instead)
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    tmp = None
    try:
        if mode not in ("w", "wb"):
            raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
        tmp, fd = _create_temporary(path)
        # the descriptor O_EXCL made, under the path's name (os.fdopen would name it by number)
        with open(tmp, mode, opener=lambda *_: fd) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


_TMP_PATTERN = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


def temporary_name(name: str) -> str:
    """A fresh name for :func:`atomic_write`'s temporary file of the file ``name``:
    hidden, beside it, ``.NAME.XXXXXXXX.tmp`` with 8 random hex digits."""
    return f".{name}.{secrets.token_hex(4)}.tmp"


def temporary_of(name: str) -> str | None:
    """The file whose :func:`atomic_write` temporary file ``name`` is (``.train.xyz.0a1b2c3d.tmp``
    -> ``train.xyz``; one left by a kill mid-write), else None."""
    m = _TMP_PATTERN.fullmatch(name)
    return None if m is None else m.group("name")


def _create_temporary(path: Path) -> tuple[Path, int]:
    """Create a new, empty temporary file beside ``path`` (``O_EXCL``: never an existing
    file); returns its path and an open descriptor. Its permissions follow the umask, as
    those of a file opened with ``open(path, "w")`` do."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(temporary_name(path.name))
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # (a name taken: draw another)
            continue
    raise FileExistsError(f"cannot write {path}: no free temporary name beside it")


def _metadata_digest(meta: dict) -> str:
    """SHA-256 of the metadata's canonical JSON, without the digest itself (files of
    earlier gpal versions have none and are read without the check)."""
    body = {k: v for k, v in meta.items() if k != "metadata_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode())
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _is_file_object(path) -> bool:
    return hasattr(path, "read") or hasattr(path, "write")


class _NamedFile:
    """A binary file object that reads as "model snapshot" in error messages."""

    def __init__(self, fh):
        self.fh = fh
        fh.seek(0)

    def __str__(self) -> str:
        return "model snapshot"


def save_model(path, arrays: dict, metadata: dict, overwrite: bool | None = None) -> Path:
    """Write ``arrays`` and JSON ``metadata`` to ``path`` (``.npz`` is appended if missing).

    ``path`` may also be a writable binary file object (``io.BytesIO``): the same
    archive, written to it as is (:func:`read_model_file` reads it back).

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written model under the final name. The archive is not compressed: the
    arrays are mostly floats, which zlib shrinks by about 15 % at 20x the time (0.05
    against 1.1 s for a 42 MB model); the active learner writes one after every label.

    ``overwrite``: as :meth:`gpal.SparseGP.save`'s (None keeps a gpal model it replaces
    as ``NAME.old-YYYYmmdd-HHMMSS.npz`` and refuses any other existing file).
    """
    kept = None
    if not _is_file_object(path):
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        check_replace(path, overwrite, is_model_file, "a gpal model", how="save(..., overwrite=True)")
        if overwrite is None and path.exists():  # a model saved before: kept under a name of its own
            kept = _keep_copy(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; models store numeric arrays only")
    meta = dict(metadata)
    meta["format"] = FORMAT_NAME
    meta["format_version"] = FORMAT_VERSION
    meta["digests"] = {k: _digest(v) for k, v in arrays.items()}
    meta = json.loads(json.dumps(meta, default=json_default))  # the form a reader sees
    meta["metadata_digest"] = _metadata_digest(meta)
    blob = np.frombuffer(json.dumps(meta, sort_keys=True, default=json_default).encode("utf-8"), dtype=np.uint8)
    if _is_file_object(path):  # a binary file object (io.BytesIO): a model snapshot in memory
        np.savez(path, **arrays, **{_META_KEY: blob})
        return path
    try:
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays, **{_META_KEY: blob})
    except BaseException:
        if kept is not None:  # (the old model is still at path: its second name goes)
            with contextlib.suppress(OSError):
                kept.unlink()
        raise
    if kept is not None:
        from ._validation import user_stacklevel

        warnings.warn(f"{path} held a gpal model, kept as {kept.name} (nothing deleted); "
                      "save(..., overwrite=True) replaces a model without a copy", UserWarning,
                      stacklevel=user_stacklevel())
    return path


def aside_names(path: Path, keep_suffix: bool = True):
    """Names beside ``path`` for a copy of it kept aside, in order:
    ``STEM.old-YYYYmmdd-HHMMSS[-k]SUFFIX`` (a replaced model), or with ``keep_suffix=False``
    ``NAME.old-YYYYmmdd-HHMMSS[-k]`` (a run folder moved aside)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem, suffix = (path.stem, path.suffix) if keep_suffix else (path.name, "")
    k = 0
    while True:
        yield path.with_name(f"{stem}.old-{stamp}{f'-{k}' if k else ''}{suffix}")
        k += 1


def _keep_copy(path: Path) -> Path:
    """A second name for ``path`` (:func:`aside_names`; a hard link where the file system
    has them, else a copy): the file stays when ``path`` is replaced."""
    import shutil

    for kept in aside_names(path):
        if kept.exists():
            continue
        try:
            os.link(path, kept)
        except FileExistsError:
            continue
        except OSError:
            shutil.copy2(path, kept)
        return kept


def check_replace(path, overwrite: bool | None, ours=None, what: str = "", how: str = "overwrite=True",
                  prefix: str = "") -> Path:
    """``path`` as a Path, or ``FileExistsError`` (``path`` left as it is) if it exists and
    may not be replaced: with ``overwrite=None`` a file ``ours(path)`` does not claim
    (``what`` it is not, e.g. "a gpal model"), with ``False`` (or no ``ours``) any file;
    ``True`` replaces any file. ``how``: what the message says replaces it.
    ``IsADirectoryError`` for a folder, whatever ``overwrite`` says."""
    path = Path(os.fspath(path))
    if path.is_dir():  # (no overwrite replaces a folder: the write would fail naming a temporary file)
        raise IsADirectoryError(f"{prefix}{path} is a folder, not a file name: give the file's name")
    if overwrite is not True and path.exists() and (overwrite is False or ours is None or not ours(path)):
        why = f" and is not {what}" if overwrite is None and ours is not None else ""
        raise FileExistsError(f"{prefix}{path} exists{why}; {how} replaces it")
    return path


def json_default(obj):
    """JSON form of the numpy values that settings and metadata may hold (``json.dumps(...,
    default=json_default)``): arrays as lists, numpy scalars as Python numbers."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def constraints_state(structures) -> list:
    """Each structure's ASE constraints as JSON-able dicts (``todict``), for a resume (extended
    XYZ keeps only FixAtoms and FixCartesian); None for a structure with one that ASE's
    ``dict2constraint`` cannot rebuild as the same class."""
    from ase.constraints import dict2constraint

    out = []
    for a in structures:
        try:
            cons = [c.todict() for c in a.constraints]
            back = [dict2constraint(c) for c in json.loads(json.dumps(cons, default=json_default))]
            if [type(c) for c in back] != [type(c) for c in a.constraints]:
                raise TypeError("rebuilt as another class")  # e.g. a subclass with its parent's todict
        except Exception:  # a constraint of the user's own that ASE cannot rebuild
            cons = None
        out.append(cons)
    return out


def savable_constraints(structures, what: str = "structures") -> list:
    """:func:`constraints_state` of ``structures``, warning for each one whose constraint
    ASE cannot save and rebuild (a resumed run would lose it)."""
    state = constraints_state(structures)
    for k, cons in enumerate(state):
        if cons is None:
            warnings.warn(f"{what}[{k}] has a constraint that ASE cannot save and rebuild "
                          "(todict / dict2constraint): a resumed run would lose it", UserWarning,
                          stacklevel=3)
    return state


def restore_constraints(structures, saved) -> None:
    """Put the constraints of :func:`constraints_state` back on ``structures`` (in place)."""
    from ase.constraints import dict2constraint

    if not saved or len(saved) != len(structures):
        return
    for k, (a, cons) in enumerate(zip(structures, saved)):
        if cons is None:
            continue
        try:
            a.set_constraint([dict2constraint(c) for c in cons])
        except Exception as exc:  # (a state edited, or an ASE that no longer knows the class)
            warnings.warn(f"structure {k}: its saved constraints cannot be rebuilt ({type(exc).__name__}: "
                          f"{exc}); it keeps what the extended XYZ file holds", UserWarning, stacklevel=2)


def is_model_file(path) -> bool:
    """Whether ``path`` is a gpal model archive (its metadata names gpal's format); reads
    the metadata entry only."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf, zf.open(_META_KEY + ".npy") as fh:
            meta = json.loads(np.lib.format.read_array(fh, allow_pickle=False).tobytes().decode("utf-8"))
        return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
    except Exception:  # (not a zip, no metadata entry, not JSON: not a model)
        return False


def read_model_file(path) -> tuple[dict, dict]:
    """Read and verify a model file; returns ``(arrays, metadata)``.

    Raises
    ------
    ModelFileError
        Missing, truncated or corrupted file, wrong format, newer format version, or an
        array whose digest does not match the metadata.
    """
    if _is_file_object(path):  # a snapshot in memory (io.BytesIO), named so in messages
        path = _NamedFile(path)
    else:
        path = Path(path)
        npz_path = path.with_name(path.name + ".npz")  # (what save(path) wrote, path without .npz)
        if npz_path.exists() and not is_model_file(path) and (not path.exists() or is_model_file(npz_path)):
            path = npz_path
        if not path.exists():
            raise ModelFileError(f"no model file at {path}")
    if not zipfile.is_zipfile(path.fh if isinstance(path, _NamedFile) else path):
        raise ModelFileError(f"{path} is not a gpal model file (not an .npz archive, or truncated)")
    try:
        with np.load(path.fh if isinstance(path, _NamedFile) else path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        # (a flipped bit in the zip directory: an unknown compression or zip version is
        # NotImplementedError, the "encrypted" flag RuntimeError)
        raise ModelFileError(
            f"{path} is not a readable gpal model (truncated or corrupted .npz): {exc}"
        ) from exc
    if _META_KEY not in data:
        raise ModelFileError(f"{path} has no gpal metadata: not a gpal model file")
    try:
        meta = json.loads(data.pop(_META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: metadata is not a JSON object: not a gpal model file")
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise ModelFileError(f"{path}: format version {version!r} is not a format version (1, 2, ...)")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version!r} is newer than this gpal reads "
            f"({FORMAT_VERSION}); upgrade gpal"
        )
    if "metadata_digest" in meta and meta["metadata_digest"] != _metadata_digest(meta):
        raise ModelFileError(f"{path}: metadata does not match its checksum (edited?)")
    digests = meta.get("digests", {})
    if set(digests) != set(data):
        missing = sorted(set(digests) ^ set(data))
        raise ModelFileError(f"{path}: arrays and metadata disagree (arrays {missing})")
    for k, v in data.items():
        if _digest(v) != digests[k]:
            raise ModelFileError(f"{path}: array {k!r} does not match its checksum (tampered?)")
    return data, meta


# ---------------------------------------------------------------------- frames
def read_frames(path: str | os.PathLike, index: int | str | slice = ":") -> list[Atoms]:
    """Read frames (extxyz or anything ASE reads) as a list of Atoms.

    Parameters
    ----------
    path : str or path-like
        A structure file; the format is ASE's guess from the name and content.
    index : int, str or slice, default ":"
        ASE's frame index: ``":"`` all frames, ``0`` the first, ``-1`` the last,
        ``"0:10"`` or ``slice(0, 10)`` a range. A single index still gives a list.

    Returns
    -------
    list of ase.Atoms
        With their labels (energy, forces, stress) as ASE reads them, in file order.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    StructureFileError
        The file is not a structure file ASE can read, is damaged, or holds no frame.
    """
    from ase.io import read
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        raise StructureFileError(f"{path} is a folder, not a structure file")
    try:
        frames = read(str(path), index=index)
    except UnknownFileTypeError as exc:
        raise StructureFileError(f"{path} is not a structure file ASE can read ({exc})") from exc
    except RuntimeError as exc:  # (a generator's StopIteration: a file cut after its count line)
        if not isinstance(exc.__cause__, StopIteration):
            raise
        raise StructureFileError(f"{path} ends inside a frame (cut while it was written?)") from exc
    except (IndexError, StopIteration) as exc:  # (StopIteration has no message)
        raise StructureFileError(f"{path} has no frame {index!r} ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
                                 "); frames count from 0, and index=':' reads them all") from exc
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as exc:
        raise StructureFileError(f"{path} cannot be read as frames ({type(exc).__name__}: {exc})") from exc
    return frames if isinstance(frames, list) else [frames]


def _virial_to_stress(virial, atoms) -> np.ndarray | None:
    """Voigt stress (xx, yy, zz, yz, xz, xy; eV/Å^3, ASE sign) = -virial / volume."""
    from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

    v = np.asarray(virial, dtype=float)
    if v.shape == (9,):
        v = v.reshape(3, 3)
    elif v.shape == (6,):
        v = voigt_6_to_full_3x3_stress(v)
    if v.shape != (3, 3):
        raise StructureFileError(f"virial has shape {v.shape}; expected 3x3, 9 or 6 (Voigt) numbers")
    volume = abs(atoms.cell.volume)
    if not np.all(atoms.pbc) or volume < 1e-6:
        return None
    return full_3x3_to_voigt_6_stress(-v / volume)


def relabel_frames(frames, *, energy_key: str | None = None, forces_key: str | None = None,
                   stress_key: str | None = None, virial_key: str | None = None,
                   source: str = "frames") -> list:
    """Copies of ``frames`` labelled from custom keys (GAP-style extxyz files).

    ``energy_key``, ``stress_key`` and ``virial_key`` name ``atoms.info`` entries,
    ``forces_key`` an ``atoms.arrays`` entry. A label whose key is not given keeps the
    frame's standard label (energy, forces, stress), if any. A frame without a given key
    simply lacks that label (GAP's convention: isolated atoms carry no virial), but a
    key found in no frame at all is an error (a typo, most likely). A virial ``W`` (eV;
    3x3, 9 numbers or Voigt 6) becomes the stress ``-W / volume`` in Voigt order
    (xx, yy, zz, yz, xz, xy), eV/Å^3, ASE's sign convention.

    Parameters
    ----------
    frames : list of ase.Atoms
    energy_key, forces_key, stress_key, virial_key : str, optional
    source : str
        Name of the frames' origin (a file) for error messages.

    Returns
    -------
    list of ase.Atoms
        Copies with a SinglePointCalculator holding energy, forces and stress.

    Raises
    ------
    StructureFileError
        Both stress_key and virial_key given, a key found in no frame, or a label of the
        wrong shape.
    """
    from ._validation import frame_labels

    if stress_key and virial_key:
        raise StructureFileError("give a stress key or a virial key, not both")
    from ase import Atoms

    if isinstance(frames, (str, os.PathLike)):  # (an AttributeError of str before)
        raise TypeError(f"relabel_frames takes frames, not the path {str(frames)!r}: read it first "
                        "(gpal.io.read_frames(path) or ase.io.read(path, ':'))")
    if isinstance(frames, Atoms):
        raise TypeError("relabel_frames takes a list of ase.Atoms; one Atoms given: pass [atoms]")
    frames = list(frames)

    def value(a, key, where):
        """``key`` of a frame's info/arrays, or of its calculator's results: the reader of
        extended XYZ moves the standard names (energy, free_energy, forces, stress) there."""
        v = getattr(a, where).get(key)
        if v is None and a.calc is not None:
            v = (getattr(a.calc, "results", None) or {}).get(key)
        return v

    for key, where in ((energy_key, "info"), (forces_key, "arrays"), (stress_key, "info"),
                       (virial_key, "info")):
        if key and not any(value(a, key, where) is not None for a in frames):
            seen = sorted({k for a in frames for k in getattr(a, where)} - {"numbers", "positions"}
                          | {k for a in frames if a.calc is not None for k in (getattr(a.calc, "results", None) or {})})
            other = "arrays" if where == "info" else "info"
            there = any(getattr(a, other).get(key) is not None for a in frames)
            kind = "forces are per-atom arrays" if where == "arrays" else "energy, stress and virial are info keys"
            hint = f"; {key!r} is an {other} key: {kind}" if there else ""
            raise StructureFileError(f"{source}: no frame has the {where} key {key!r} "
                                     f"(its {where} keys and labels: {', '.join(seen) or 'none'}){hint}")
    if not (stress_key or virial_key):
        # GAP/QUIP files carry the reference under one prefix (REF_energy, REF_forces,
        # REF_virial) beside a model's energy/forces/stress: a prefix's stress or virial
        # left unread would be replaced by the standard (perhaps a model's) stress
        prefixes = {key[: -len(suffix)] for key, suffix in ((energy_key, "energy"), (forces_key, "forces"))
                    if key and key.endswith(suffix) and len(key) > len(suffix)}
        unread = sorted({p + name for p in prefixes for name in ("virial", "virials", "stress")
                         if any(a.info.get(p + name) is not None for a in frames)})
        if unread:
            warnings.warn(f"{source}: {', '.join(unread)} is in the frames but not read (give --virial-key or "
                          "--stress-key, or virial_key=/stress_key=): the stress labels are the standard "
                          "stress, if any", UserWarning, stacklevel=2)
    out = []
    for k, a in enumerate(frames):
        try:
            old = frame_labels(a)
            res = {}
            energy = value(a, energy_key, "info") if energy_key else old.energy
            if energy is not None:
                res["energy"] = float(energy)
            forces = value(a, forces_key, "arrays") if forces_key else old.forces
            if forces is not None:
                forces = np.asarray(forces, dtype=float)
                if forces.shape != (len(a), 3):
                    raise StructureFileError(f"forces have shape {forces.shape}, expected ({len(a)}, 3)")
                res["forces"] = forces
            if virial_key:
                virial = value(a, virial_key, "info")
                stress = None if virial is None else _virial_to_stress(virial, a)
            elif stress_key:
                stress = value(a, stress_key, "info")
            else:
                stress = old.stress
            if stress is not None:
                stress = np.asarray(stress, dtype=float)
                if stress.shape in ((9,), (3, 3)):
                    from ase.stress import full_3x3_to_voigt_6_stress

                    stress = full_3x3_to_voigt_6_stress(stress.reshape(3, 3))
                if stress.shape != (6,):  # (a (5,) label was written on, to fail only in a fit)
                    raise StructureFileError(f"stress has shape {stress.shape}, expected (6,) (Voigt) or (3, 3)")
                res["stress"] = stress
            b = labelled(a, bare=False, **res)
        except (ValueError, TypeError) as exc:
            raise StructureFileError(f"{source} frame {k}: {exc}") from exc
        out.append(b)
    return out


def _writable(frames) -> list:
    """``frames`` as extended XYZ takes them: a frame whose ``info`` holds a dict (ASE's
    ``adsorbate_info`` of a slab built with ``add_adsorbate``), which the writer skips
    with a warning at every write (9 per run), is written without it (a shallow copy)."""
    out = []
    for a in frames:
        if any(isinstance(v, dict) for v in a.info.values()):
            b = a.copy()
            b.calc = a.calc  # (its labels)
            b.info = {k: v for k, v in a.info.items() if not isinstance(v, dict)}
            a = b
        out.append(a)
    return out


def frames_bytes(frames) -> bytes:
    """The bytes :func:`write_frames` writes for ``frames`` (extended XYZ, UTF-8)."""
    from io import StringIO

    from ase.io import write

    buf = StringIO()
    write(buf, _writable(frames), format="extxyz")
    return buf.getvalue().encode()


def write_frames(path: str | os.PathLike, frames, *, overwrite: bool = False) -> None:
    """Write frames with their labels to extended XYZ (atomically: whole or not at all).

    Parameters
    ----------
    path : str or path-like
        The file, written only once all frames are (never left half written).
    frames : iterable of ase.Atoms
        Each with its calculator's results or info/arrays labels, written as ASE's
        extxyz writer does (energy, forces, stress in eV, eV/Å, eV/Å^3; positions and
        forces with 8 decimals).
    overwrite : bool, default False
        Whether an existing file is replaced; if not, ``FileExistsError`` and the file
        is left as it is.
    """
    from ase import Atoms
    from ase.io import write

    if isinstance(frames, Atoms) or isinstance(path, (list, tuple)) or not isinstance(path, (str, os.PathLike)):
        raise TypeError("write_frames(path, frames) takes a file path and a list of ase.Atoms"
                        + (" (one Atoms given: pass [atoms])" if isinstance(frames, Atoms) else
                           f" (got {type(path).__name__} as the path)"))
    check_replace(path, bool(overwrite), how="write_frames(..., overwrite=True)")
    with atomic_write(path) as fh:
        write(fh, _writable(list(frames)), format="extxyz")


#: signals whose handler raised KeyboardInterrupt (``gpal learn``'s SIGTERM), noted in case
#: Python discarded the exception: one raised while a finalizer (``__del__``) runs is
#: printed as "Exception ignored" and lost, and the run had gone on to exit 0
_STOPS_PENDING: list = []


def note_stop(signum: int) -> None:
    """Note a signal that stops the run (called by the handler that raises for it)."""
    _STOPS_PENDING.append(int(signum))


def stop_pending() -> int | None:
    """The noted stop signal that no handled interrupt has taken yet (and forget it), or None."""
    if not _STOPS_PENDING:
        return None
    signum = _STOPS_PENDING[-1]
    _STOPS_PENDING.clear()
    return signum


@contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block is done, then deliver them.

    For the few steps that must not be cut in two: a label the oracle has already
    computed is written whole to ``train.xyz`` and counted before an interrupt stops the
    run. Outside the main thread (where signals cannot be handled) it does nothing.

    Every signal that came is delivered, each once, SIGTERM last: a handler that raises
    (Ctrl-C's ``KeyboardInterrupt``) does not swallow the signals after it, and a
    SIGTERM that came with a Ctrl-C still ends the process as a SIGTERM would.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda num, frame: received.append(num))
        except (ValueError, OSError):  # (an embedding interpreter that owns its signals)
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _raise_signals(sorted(set(received), key=lambda sig: sig == signal.SIGTERM))


def _raise_signals(sigs: list) -> None:
    """Raise each signal of ``sigs`` in turn, the next in a ``finally`` of the one before
    (so that one whose handler raises does not skip the rest)."""
    if sigs:
        try:
            signal.raise_signal(sigs[0])
        finally:
            _raise_signals(sigs[1:])


def append_frame(path: str | os.PathLike, atoms: Atoms, *, sync: bool = True) -> None:
    """Append one labelled frame to an extxyz file, whole or not at all, and flush it.

    Used by the active learner so that a label survives a crash the moment it arrives,
    and by ``gpal md``. An exception while writing (Ctrl-C, a full disk) cuts the file
    back to where it was: a cut frame made the whole file unreadable.

    Parameters
    ----------
    path : str or path-like
        The extxyz file (created if absent).
    atoms : ase.Atoms
        One frame, with its labels.
    sync : bool, default True
        Also ``fsync`` it to disk (a label paid for); ``gpal md``'s frames are only flushed.
    """
    data = frames_bytes([atoms])
    with open(path, "ab") as fh:
        end = fh.tell()
        try:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        except BaseException:
            fh.truncate(end)
            raise
