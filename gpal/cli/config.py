"""The configuration file of ``gpal learn``: defaults, schema, checks and TOML output.

A configuration is a TOML file; every key is optional and falls back to the default
printed by ``gpal learn --print-config`` (the embedded EMT copper demo). The schema
follows the code: the keys of ``[md]``, ``[trigger]`` and ``[oracle]`` are the fields
of :class:`gpal.MDSettings`, :class:`gpal.Trigger` and :class:`gpal.OracleSpec`, the
keys of ``[model]`` the parameters of :class:`gpal.SparseGP` (``get_params``, without
the descriptor and kernel objects), the keys of ``[learner]`` the keyword parameters of
:class:`gpal.ActiveLearner` that a TOML value can express, and the keys of
``[descriptor]`` those of :class:`gpal.SOAP`. Their comments (units) come from the
same classes' docstrings.

Sections
--------
top level     ``run_dir``, ``steps`` (MD steps per walker, a total), ``workers``;
              ``walker_workers`` or ``walker_scheduler``: the walkers' MD as tasks
              (gpal.learning.walkers) on a local process pool or a running dask scheduler
[structure]   the start structure: ``file`` (+ ``index``), or ``bulk``/``crystal``/``a``/
              ``cubic``/``repeat`` (ase.build.bulk)
[oracle]      ``factory = "module:Name"`` and its ``kwargs``
[md]          Langevin MD settings (K, fs, 1/fs)
[trigger]     when the model is guessing
[model]       sparse GP settings (noises in eV/atom, eV/Å, eV/Å^3), or ``file``: a fitted
              model (.npz) to continue (its frames start the run; no bootstrap labels)
[descriptor]  SOAP settings (default: gpal's default SOAP for the structure)
[learner]     everything else the learner takes
[validation]  an independent oracle MD trajectory for calibration and errors
              (``steps = 0``: none)
[targets]     learning aimed at a target (gpal.TargetSet.from_file): ``file``
              of structures (e.g. NEB images), ``quantity``, ``tolerance``; no file: none
[stopping]    stop when the calibrated force bound is under ``tolerance`` (eV/Å;
              gpal.calibration.StoppingRule); no tolerance: the run makes all its steps

An unknown key or section, or a value of the wrong type, is a :class:`ConfigError`
whose one-line message names the key and suggests the closest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import os
import re
import tomllib
import warnings
from pathlib import Path

from ..exceptions import ConfigError

__all__ = ["DEFAULT_LEARN", "Key", "schema", "load_config", "check_config", "default_toml",
           "to_toml", "config_difference"]

DEFAULT_LEARN = {
    "run_dir": "gpal_run",
    "steps": 3000,
    "workers": 1,
    "structure": {"bulk": "Cu", "crystal": "fcc", "a": 3.61, "cubic": True, "repeat": [3, 3, 3]},
    "oracle": {"factory": "ase.calculators.emt:EMT", "kwargs": {}},
    "md": {"temperature": [300.0, 1000.0], "timestep": 1.0, "friction": 0.02},
    "trigger": {},
    "model": {"n_sparse": 300},
    "learner": {"n_walkers": 1, "random_state": 0},
    "validation": {"steps": 0, "every": 40, "seed": 123, "timestep": 1.0},  # temperature: fill_validation
}

#: ActiveLearner parameters the command line fills from elsewhere (not from [learner])
_LEARNER_SET_BY_CLI = ("model", "run_dir", "md", "trigger", "validation", "executor", "progress")
#: keys that may change when a run is resumed with a configuration
RESUMABLE = ("steps", "workers", "walker_workers", "walker_scheduler", "stopping")

_MISSING = object()
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "an array", dict: "a table"}


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: allowed TOML kinds, default (or none) and a comment."""

    name: str
    kinds: tuple
    default: object = _MISSING
    doc: str = ""

    def describe_kinds(self, section: str | None = None) -> str:
        if (section, self.name) in _FALSE_TURNS_OFF:  # (a bool in the signature: false is None)
            return " or ".join(_KIND_NAMES[k] for k in self.kinds if k is not bool) + " or false (off)"
        return " or ".join(_KIND_NAMES[k] for k in self.kinds)


#: (section, key) whose Python None (off) a TOML file writes as false (TOML has no None)
_FALSE_TURNS_OFF = (("trigger", "ceiling"), ("trigger", "temperature_steps"))


# --------------------------------------------------------------------------- schema
def _kinds(annotation, default) -> tuple:
    """TOML kinds a Python annotation allows (empty: not expressible in TOML)."""
    if annotation is inspect.Parameter.empty or annotation is None:
        if default is None or default is _MISSING:
            return ()
        annotation = type(default).__name__
    if isinstance(annotation, type):
        annotation = annotation.__name__
    text = str(annotation).replace("typing.", "")
    kinds = []
    for token in (t.strip() for t in text.split("|")):
        base = token.split("[", 1)[0].strip()
        kind = {"int": int, "float": float, "bool": bool, "str": str, "tuple": list, "list": list,
                "Sequence": None, "dict": dict}.get(base, None)
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


def _param_docs(obj) -> dict:
    """``{name: "type; first sentence"}`` from a numpydoc ``Parameters`` section."""
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    out: dict = {}
    try:
        start = next(i for i in range(len(lines) - 1)
                     if lines[i].strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"})
    except StopIteration:
        return out
    names, typ, desc = [], "", []

    def flush():
        if names:
            text = " ".join(desc)
            text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "")
            # the first sentence: up to a full stop followed by a capital (not "e.g. x")
            sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".:") if text else ""
            typ_clean = re.sub(r",?\s*default\b.*$", "", typ).strip()
            note = "; ".join(s for s in (typ_clean, sentence) if s)
            for n in names:
                out[n] = note

    for k in range(start + 2, len(lines)):
        line = lines[k]
        if k + 1 < len(lines) and line.strip() and set(lines[k + 1].strip()) == {"-"} and not line.startswith(" "):
            break  # next section
        m = re.match(r"^([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?::\s*(.*))?$", line)
        if m and not line.startswith(" "):
            flush()
            names = [n.strip() for n in m.group(1).split(",")]
            typ, desc = m.group(2) or "", []
        elif line.strip() and names:
            desc.append(line.strip())
    flush()
    return out


def _dataclass_keys(cls, docs_from=None) -> dict:
    docs = _param_docs(docs_from or cls)
    keys = {}
    for f in dataclasses.fields(cls):
        default = f.default
        if default is dataclasses.MISSING:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else _MISSING
        kinds = _kinds(f.type, default)
        if kinds:
            keys[f.name] = Key(f.name, kinds, _MISSING if default is None else default, docs.get(f.name, ""))
    return keys


def _signature_keys(func, names=None, exclude=(), docs_from=None) -> dict:
    docs = _param_docs(docs_from) if docs_from is not None else {}
    keys = {}
    for p in inspect.signature(func).parameters.values():
        if p.name == "self" or p.name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if names is not None and p.name not in names:
            continue
        if names is None and p.default is p.empty:
            continue  # required positional arguments come from elsewhere
        default = _MISSING if p.default in (p.empty, None) else p.default
        kinds = _kinds(p.annotation, p.default if p.default is not p.empty else _MISSING)
        if kinds:
            keys[p.name] = Key(p.name, kinds, default, docs.get(p.name, ""))
    return keys


def _learner_keys(learner_cls) -> dict:
    """``[learner]``: the learner's own arguments and every settings group's fields by their
    flat names (gpal.learning.settings.FLAT_NAMES), documented from the groups."""
    from ..learning import settings as groups

    keys = _signature_keys(learner_cls.__init__, exclude=_LEARNER_SET_BY_CLI, docs_from=learner_cls)
    for flat, (group, name) in groups.FLAT_NAMES.items():
        if flat in _LEARNER_SET_BY_CLI:
            continue
        cls = groups.GROUPS[group]
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        kinds = _kinds(field.type, field.default)
        if kinds:
            default = _MISSING if field.default is None else field.default
            keys[flat] = Key(flat, kinds, default, _param_docs(cls).get(name, ""))
    return keys


def _static(*rows) -> dict:
    return {name: Key(name, kinds, default, doc) for name, kinds, default, doc in rows}


def schema() -> dict:
    """The allowed keys: ``{section: {key: Key}}``; top-level keys are in section ``""``.

    Built from the code each time (dataclass fields, signatures, ``get_params``), so it
    follows renamed or added parameters.
    """
    from ..descriptors import SOAP
    from ..learning.learner import ActiveLearner, MDSettings, Trigger
    from ..learning.oracle import OracleSpec
    from ..model import SparseGP
    from ..learning.targets import TargetSet

    model_names = [n for n in SparseGP().get_params() if n not in ("descriptor", "kernel")]
    soap = _signature_keys(SOAP.__init__, names=("species", "r_cut", "n_max", "l_max", "sigma",
                                                  "periodic", "weighting"), docs_from=SOAP)
    soap["species"] = Key("species", (list,), _MISSING,
                          "chemical symbols (default: those of the structure)")
    # printed commented out: any [descriptor] key fixes the SOAP (no evidence choice of
    # l_max and sigma), so the printed configuration runs as no configuration does
    for name, default in (("r_cut", "default 5"), ("n_max", "default 8"),
                          ("l_max", "default: 3 or 6 by the evidence; 6 once any [descriptor] key is set"),
                          ("sigma", "default: 0.3 or 0.5 Å by the evidence; 0.5 once any [descriptor] key is set")):
        soap[name] = dataclasses.replace(soap[name], default=_MISSING, doc=f"{soap[name].doc}; {default}")
    soap["periodic"] = dataclasses.replace(soap["periodic"], default=_MISSING,
                                           doc="bool; default true: each structure's pbc decides (false ignores pbc)")
    soap["weighting"] = dataclasses.replace(
        soap["weighting"], default=_MISSING,
        doc='dscribe weighting; default {function = "poly", r0 = r_cut, c = 1, m = 1} (smooth cutoff)')
    return {
        "": _static(
            ("run_dir", (str,), _MISSING, "run folder: model, train.xyz, log, state, plots"),
            ("steps", (int,), _MISSING, "MD steps per walker (a total: resume continues up to it)"),
            ("workers", (int,), _MISSING, "oracle calls in parallel (a process pool when > 1)"),
            ("walker_workers", (int,), _MISSING,
             "walkers' MD segments on this many local processes (gpal.learning.walkers; > 1 to use it)"),
            ("walker_scheduler", (str,), _MISSING,
             "walkers' MD segments on the dask scheduler at this address (\"tcp://host:8786\"; "
             "needs dask.distributed)"),
        ),
        "structure": _static(
            ("file", (str,), _MISSING, "start structure file (any ASE format); replaces bulk"),
            ("index", (int, str), _MISSING, "frame of file to start from (default 0)"),
            ("bulk", (str,), _MISSING, "chemical symbol(s) for ase.build.bulk"),
            ("crystal", (str,), _MISSING, "crystal structure for ase.build.bulk (fcc, bcc, ...)"),
            ("a", (float,), _MISSING, "lattice constant, Å"),
            ("cubic", (bool,), _MISSING, "cubic cell"),
            ("repeat", (list,), _MISSING, "supercell repetitions [nx, ny, nz]"),
        ),
        "oracle": _dataclass_keys(OracleSpec),
        "md": {
            **_dataclass_keys(MDSettings),
            "factory": Key("factory", (str,), _MISSING,
                           "dynamics in place of Langevin, as \"module:function\" (function(atoms, "
                           "timestep, temperature_K, rng) -> ASE dynamics, e.g. an NPT integrator; "
                           "timestep in ASE time units, [md] timestep * ase.units.fs: pass it on as "
                           "it is); "
                           "the module is looked up next to the config and in the current folder too"),
        },
        "trigger": _dataclass_keys(Trigger),
        "model": {
            **_signature_keys(SparseGP.__init__, names=model_names, docs_from=SparseGP),
            "file": Key("file", (str,), _MISSING,
                        "a fitted model (.npz) to continue: its settings and training frames start "
                        "the run, no bootstrap label; other [model] and [descriptor] keys stay at "
                        "their defaults"),
        },
        "descriptor": soap,
        "learner": _learner_keys(ActiveLearner),
        "validation": _static(
            ("steps", (int,), _MISSING, "MD steps of the oracle validation trajectory (0: none)"),
            ("every", (int,), _MISSING, "label every this many steps of it"),
            ("temperature", (float,), _MISSING, "Langevin temperature, K (unset: the hottest of [md] temperature)"),
            ("timestep", (float,), _MISSING, "fs"),
            ("seed", (int,), _MISSING, "random seed (independent of the learner's)"),
        ),
        "targets": _signature_keys(TargetSet.from_file, names=list(inspect.signature(TargetSet.from_file).parameters),
                                   docs_from=TargetSet.from_file),
        "stopping": _static(
            ("tolerance", (float,), _MISSING, "eV/Å: stop once the calibrated force bound on the walkers' "
                                              "frames and the judged force RMSE stay under it"),
            ("patience", (int,), _MISSING, "consecutive checks under tolerance (default 3)"),
            ("use", (str,), _MISSING, "the bound: \"conformal\" (90 % conformal quantile × std, the default) "
                                      "or \"scale\" (recalibrated std)"),
            ("validation_tolerance", (float,), _MISSING, "eV/Å for the judged force RMSE (default: tolerance)"),
        ),
    }


# --------------------------------------------------------------------------- checks
def _where(section: str) -> str:
    return f"[{section}]" if section else "top level"


def _unknown(path, what: str, name: str, valid, section: str = "", top=()) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "valid: " + ", ".join(valid)
    lost = [name] if section and name in top else (
        difflib.get_close_matches(name, sorted(top), n=1, cutoff=0.6) if section and not close else [])
    if lost:  # a top-level key written below a section header belongs to that section in TOML
        hint = (f"{'it is' if lost[0] == name else f'did you mean {lost[0]!r}? that is'} a top-level key: "
                f"write it above the first [section] (in TOML every key after [{section}] belongs to it)")
    if what == "section":
        hint = f"did you mean [{close[0]}]?" if close else "valid sections: " + ", ".join(f"[{v}]" for v in valid)
        return ConfigError(f"{path}: unknown section [{name}]; {hint}")
    return ConfigError(f"{path}: unknown key {name!r} in {_where(section)}; {hint}")


def _check_value(path, section: str, key: Key, value):
    """Return ``value`` normalised (ints accepted as floats), or raise ConfigError."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    where = f"[{section}] " if section else ""

    def too_big(v) -> bool:  # (Python's TOML reader takes any integer, in lists too)
        if isinstance(v, (list, tuple)):
            return any(too_big(x) for x in v)
        if isinstance(v, dict):
            return any(too_big(x) for x in v.values())
        return isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63

    if too_big(value):
        raise ConfigError(f"{path}: {where}{key.name} = {json.dumps(value, default=str)} holds an integer beyond "
                          "TOML's 64 bits")
    if value is True and (section, key.name) in _FALSE_TURNS_OFF:
        raise ConfigError(f"{path}: {where}{key.name} = true is not a setting: give a number, or false to turn "
                          "it off")
    for kind in key.kinds:
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and is_number:
            return value if isinstance(value, int) and int in key.kinds else float(value)
        if kind is bool and isinstance(value, bool):
            return value
        if kind in (str, list, dict) and isinstance(value, kind):
            return value
    got = json.dumps(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    unit = f" ({key.doc})" if key.doc else ""
    raise ConfigError(f"{path}: {where}{key.name} must be {key.describe_kinds(section)}, got {got}{unit}")


def check_config(user: dict, path="config") -> dict:
    """Check a parsed configuration against :func:`schema`; returns it with values normalised.

    Raises
    ------
    ConfigError
        Unknown section or key (with the closest valid name), or a wrong type.
    """
    sch = schema()
    out: dict = {}
    for name, value in user.items():
        if name in sch[""]:
            out[name] = _check_value(path, "", sch[""][name], value)
        elif name in sch and name:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {name} must be a section [{name}], got {json.dumps(value)}")
            sec = {}
            for key, val in value.items():
                if key not in sch[name]:
                    raise _unknown(path, "key", key, sch[name], section=name, top=sch[""])
                sec[key] = _check_value(path, name, sch[name][key], val)
            out[name] = sec
        elif isinstance(value, dict):
            raise _unknown(path, "section", name, [s for s in sch if s])
        else:
            raise _unknown(path, "key", name, sch[""])
    _check_semantics(path, out)
    # a shell expands ~ on the command line; in a file it would name a folder "~" here
    for section, key in (("", "run_dir"), ("structure", "file"), ("targets", "file"), ("model", "file")):
        where = out if not section else out.get(section, {})
        if isinstance(where.get(key), str) and not where[key].strip():  # ("" was taken as the current folder)
            raise ConfigError(f"{path}: {f'[{section}] ' if section else ''}{key} is empty: give a path")
        if isinstance(where.get(key), str) and where[key].startswith("~"):
            where[key] = os.path.expanduser(where[key])
    return out


def learner_groups(learner: dict, path=None) -> dict:
    """The settings groups of a ``[learner]`` table (:func:`gpal.learning.settings.group_flat`),
    checked by the learner's own rules; a :class:`ConfigError` naming ``[learner]`` (and
    ``path``) otherwise."""
    from ..learning.learner import check_n_walkers
    from ..learning.settings import FLAT_NAMES, group_flat

    try:
        check_n_walkers(learner.get("n_walkers", 1))
        return group_flat({}, {k: v for k, v in learner.items() if k in FLAT_NAMES})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{f'{path}: ' if path else ''}[learner] {exc}") from None


def _check_semantics(path, cfg: dict) -> None:
    """Checks a type cannot express, run through the classes' own validation."""
    from ..learning.learner import MDSettings, Trigger
    from ..learning.oracle import OracleSpec

    md = cfg.get("md", {})
    if "temperature" in md and isinstance(md["temperature"], list):
        t = md["temperature"]
        if len(t) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in t):
            raise ConfigError(f"{path}: [md] temperature must be a number or a pair [start, end] of "
                              f"numbers (K), got {json.dumps(t)}")
    if "walker_workers" in cfg and cfg["walker_workers"] < 1:
        raise ConfigError(f"{path}: walker_workers must be >= 1, got {cfg['walker_workers']}")
    if "walker_workers" in cfg and "walker_scheduler" in cfg:
        raise ConfigError(f"{path}: set walker_workers (local processes) or walker_scheduler (a dask "
                          "scheduler), not both")
    if "walker_scheduler" in cfg and not re.match(r"^[a-z+]+://\S+$", cfg["walker_scheduler"]):
        raise ConfigError(f"{path}: walker_scheduler must be a scheduler address such as "
                          f"\"tcp://host:8786\", got {json.dumps(cfg['walker_scheduler'])}")
    rep = cfg.get("structure", {}).get("repeat")
    if rep is not None and (len(rep) != 3 or not all(isinstance(x, int) and x > 0 for x in rep)):
        raise ConfigError(f"{path}: [structure] repeat must be three positive integers, got {json.dumps(rep)}")
    oracle = cfg.get("oracle", {})
    if oracle and "factory" not in oracle:  # (its kwargs went to the demo's EMT, which took them)
        raise ConfigError(f"{path}: [oracle] sets {', '.join(sorted(oracle))} but no factory, the "
                          "calculator to run (e.g. factory = \"gpal.dft:PySCF\"; the demo's is "
                          "\"ase.calculators.emt:EMT\"): without one, the kwargs went to the demo's EMT")
    model = cfg.get("model", {})
    if "file" in model:  # a fitted model brings its settings: any other one would be ignored
        sch = schema()

        def changed(section):
            base = DEFAULT_LEARN.get(section, {})
            return [k for k, v in cfg.get(section, {}).items()
                    if k != "file" and v != base.get(k, sch[section][k].default)]

        other = [f"[model] {k}" for k in changed("model")] + [f"[descriptor] {k}" for k in changed("descriptor")]
        if other:
            raise ConfigError(f"{path}: [model] file gives a fitted model, whose settings come with it; "
                              f"remove {other[0]}")
    stopping = cfg.get("stopping", {})
    if stopping:
        if "tolerance" not in stopping:
            raise ConfigError(f"{path}: [stopping] {sorted(stopping)[0]} is set but tolerance is not "
                              "(eV/Å: the force bound to stop under)")
        from ..calibration import StoppingRule

        try:
            StoppingRule(**stopping)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: [stopping] {exc}") from None
    targets = cfg.get("targets", {})
    if targets and "file" not in targets:
        sch = schema()["targets"]
        changed = [k for k, v in targets.items() if v != sch[k].default]
        if changed:
            raise ConfigError(f"{path}: [targets] {changed[0]} is set but file is not "
                              "(the target structures, e.g. NEB images)")
    if targets.get("quantity", "energies") not in ("energies", "forces", "barrier", "difference"):
        raise ConfigError(f"{path}: [targets] quantity must be energies, forces, barrier or difference, "
                          f"got {json.dumps(targets['quantity'])}")
    val = cfg.get("validation", {})
    for key, low in (("steps", 0), ("every", 1), ("seed", 0)):
        if key in val and val[key] < low:
            raise ConfigError(f"{path}: [validation] {key} must be >= {low}, got {val[key]}")
    if "temperature" in val or "timestep" in val:  # the oracle MD's units, checked as [md]'s
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                MDSettings(**{k: val[k] for k in ("temperature", "timestep") if k in val})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: [validation] {exc}") from exc
        for w in caught:  # (said of [validation], not of [md])
            warnings.warn(f"{path}: [validation] {w.message}", w.category, stacklevel=2)
    if "learner" in cfg:
        learner_groups({**DEFAULT_LEARN.get("learner", {}), **cfg["learner"]}, path)
    for section, cls in (("trigger", Trigger), ("md", md_settings), ("oracle", OracleSpec)):
        if section in cfg:
            merged = {**DEFAULT_LEARN.get(section, {}), **cfg[section]}
            try:
                cls(**merged)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: [{section}] {exc}") from exc
    if "model" in cfg:
        from ..model import SparseGP

        try:
            SparseGP(**{k: v for k, v in cfg["model"].items() if k != "file"})._check_params()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: [model] {exc}") from exc


def md_settings(**md):
    """:class:`gpal.MDSettings` of an ``[md]`` section: a ``[start, end]`` temperature as a
    pair, a ``factory`` import path (``"module:function"``) imported (a ValueError if it
    does not import or is not callable)."""
    from ..exceptions import GpalError
    from ..learning.learner import MDSettings
    from ..learning.state import _import

    if isinstance(md.get("temperature"), list):
        md["temperature"] = tuple(md["temperature"])
    if isinstance(md.get("factory"), str):
        where = md["factory"]
        if ":" not in where:
            raise ValueError(f"factory must look like \"module:function\", got {json.dumps(where)}")
        try:
            md["factory"] = _import(where, "factory")
        except GpalError as exc:
            raise ValueError(str(exc)) from None
        if not callable(md["factory"]):
            raise ValueError(f"factory {where!r} is not callable")
    return MDSettings(**md)


def add_import_folders(config_path=None) -> list[str]:
    """Let ``"module:Name"`` settings (an oracle's or an MD factory) name a module of the
    user's own, next to the config (or next to the run folder ``--resume`` gives) or in
    the current folder, as ``python -m`` would: both folders are appended to ``sys.path``
    (after the installed packages, which they never shadow) and returned, for the caller
    to remove when its command ends. Called by ``gpal learn`` before it reads a
    configuration."""
    import sys

    added = []
    folders = [Path.cwd()] + ([Path(config_path).resolve().parent] if config_path else [])
    for folder in map(str, folders):
        if folder not in sys.path:
            sys.path.append(folder)
            added.append(folder)
    return added


# --------------------------------------------------------------------------- loading
def _merge(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else copy.deepcopy(v)
    return out


def load_config(path) -> tuple[dict, dict]:
    """Read and check a TOML configuration.

    Returns
    -------
    (dict, dict)
        The effective configuration (defaults updated with the file) and the file's
        own (checked) content.

    Raises
    ------
    ConfigError
        Missing file, invalid TOML, unknown key or section, wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists()
                          else f"config file {path} is not a file")
    try:
        user = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # (a byte-order mark some editors write)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text (TOML) file: {exc.reason}") from exc
    user = check_config(user, path)
    if not user:
        warnings.warn(f"{path} sets no key: the run takes every default (the embedded EMT Cu demo); "
                      "gpal learn --print-config shows the keys", UserWarning, stacklevel=2)
    if path.read_text(encoding="utf-8-sig").startswith(TOML_HEADER):
        # a run folder's own copy: earlier releases stored the built structure's defaults
        # beside a [structure] file; they never applied
        user = without_built_defaults(user)
    built = sorted(set(user.get("structure", {})) & set(_BUILT_STRUCTURE_KEYS))
    if "file" in user.get("structure", {}) and built:
        raise ConfigError(f"{path}: [structure] file and {', '.join(built)} exclude each other: the "
                          "structure is read from the file or built with ase.build.bulk, not both")
    # the built structure's defaults do not apply to a structure read from a file (and the
    # config stored in the run folder must be valid input again)
    return fill_validation(without_built_defaults(_merge(DEFAULT_LEARN, user))), user


_BUILT_STRUCTURE_KEYS = ("bulk", "crystal", "a", "cubic", "repeat")


def without_built_defaults(cfg: dict) -> dict:
    """``cfg`` without the keys of a built structure when ``[structure] file`` is given."""
    if "file" in cfg.get("structure", {}):
        cfg = {**cfg, "structure": {k: v for k, v in cfg["structure"].items()
                                    if k not in _BUILT_STRUCTURE_KEYS}}
    return cfg


def keep_stored(cfg: dict, user: dict, stored: dict) -> dict:
    """``cfg`` compared with a run's ``stored`` configuration: a key derived from others
    when unset (``[validation] temperature``, :func:`fill_validation`) and unset in the
    ``user``'s file takes the run's stored value, whatever the derivation gives now (a
    run of an earlier gpal stored another). Returns ``cfg``."""
    old = stored.get("validation", {})
    if "temperature" not in user.get("validation", {}) and "temperature" in old:
        cfg.setdefault("validation", {})["temperature"] = old["temperature"]
    return cfg


def fill_validation(cfg: dict) -> dict:
    """Give an unset ``[validation] temperature`` the hottest temperature of ``[md]`` (the
    run's protocol at its hottest point); returns ``cfg``."""
    val = cfg.setdefault("validation", {})
    if "temperature" not in val:
        t = cfg["md"]["temperature"]
        val["temperature"] = float(max(t) if isinstance(t, (list, tuple)) else t)
    return cfg


def config_difference(old: dict, new: dict, ignore=("run_dir",) + RESUMABLE) -> str | None:
    """The first key (``"[section] key"``) whose value differs, with both values; None if equal.

    A key left out counts as its default (``gpal learn --print-config`` writes every
    default out, and a run started without them has the same settings).
    """
    sch = schema()

    def value(d: dict, section: str, key: str):
        if key in d:
            return d[key]
        k = sch.get(section, {}).get(key)
        return None if k is None or k.default is _MISSING else k.default

    sections = sorted(set(old) | set(new), key=lambda s: (isinstance(old.get(s, new.get(s)), dict), s))
    for name in sections:
        if name in ignore:
            continue
        a, b = old.get(name, _MISSING), new.get(name, _MISSING)
        if isinstance(a, dict) or isinstance(b, dict):
            a = a if isinstance(a, dict) else {}
            b = b if isinstance(b, dict) else {}
            for key in sorted(set(a) | set(b)):
                va, vb = value(a, name, key), value(b, name, key)
                if _same(va, vb):
                    continue
                return f"[{name}] {key} ({_fmt(va)} in the run, {_fmt(vb)} in the config)"
        elif not _same(value(old, "", name), value(new, "", name)):
            return f"{name} ({_fmt(value(old, '', name))} in the run, {_fmt(value(new, '', name))} in the config)"
    return None


def _same(a, b) -> bool:
    """Equal as configuration values (a TOML array and a tuple default alike)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# --------------------------------------------------------------------------- TOML output
def _fmt(value) -> str:
    if value is None or value is _MISSING:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', str(k)) else json.dumps(str(k))} = {_fmt(v)}"
                          for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


#: first line of the config.toml gpal learn writes into a run folder (how a start of
#: gpal's own is told from a user's file)
TOML_HEADER = "# gpal learn: the configuration of this run"


_DIGEST = "# gpal's copy, checked on resume: edit a config of your own instead; sha256 "


def to_toml(cfg: dict) -> str:
    """A configuration as TOML (comments: :data:`TOML_HEADER`, then the SHA-256 of the
    rest, which :func:`stored_copy_edited` checks); :func:`tomllib.loads` reads it back
    equal."""
    top = [f"{k} = {_fmt(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    out = top
    for name, sec in cfg.items():
        if isinstance(sec, dict):
            out += ["", f"[{name}]"] + [f"{k} = {_fmt(v)}" for k, v in sec.items()]
    body = "\n".join(out) + "\n"
    return f"{TOML_HEADER}\n{_DIGEST}{_settings_digest(tomllib.loads(body))}\n{body}"


def _settings_digest(cfg: dict) -> str:
    """SHA-256 of the settings (not of the text: comments and layout may change)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def stored_copy_edited(text: str) -> bool:
    """Whether the settings in a run folder's ``config.toml`` (:func:`to_toml`'s text) were
    edited since gpal wrote it: they no longer have the SHA-256 its second line states
    (a comment added is no edit). A copy of an earlier release (no such line) cannot
    tell: False, as is a copy that does not parse (its reader says so)."""
    lines = text.split("\n", 2)
    if len(lines) < 3 or lines[0] != TOML_HEADER or not lines[1].startswith(_DIGEST):
        return False
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return _settings_digest(cfg) != lines[1][len(_DIGEST):].strip()


_SECTION_DOCS = {
    "structure": "start structure: a file, or ase.build.bulk(bulk, crystal, a=a, cubic=cubic).repeat(repeat)",
    "oracle": "the reference calculator: an import path 'module:Name' and its keyword arguments",
    "md": "Langevin MD on the model (gpal.MDSettings)",
    "trigger": "when to call the oracle (gpal.Trigger); thresholds in eV (energies_std) or eV/Å (forces_std)",
    "model": "the sparse GP (gpal.SparseGP); noises: energy eV/atom, force eV/Å, stress eV/Å^3",
    "descriptor": "SOAP (gpal.SOAP, dscribe's names); r_cut and sigma in Å",
    "learner": "the active learner (gpal.ActiveLearner)",
    "targets": "learning aimed at a target (gpal.TargetSet): a file of structures, the quantity "
               "(energies, forces, barrier, difference) and a tolerance for a target stop; no file: none",
    "validation": "an independent oracle MD trajectory for reported errors (steps = 0, the default: none; "
                  "every one of its oracle calls is counted; calibration needs none)",
    "stopping": "stop learning when the calibrated force bound stays under tolerance (eV/Å; "
                "gpal.calibration.StoppingRule; unset: the run makes all its steps); may change on --resume",
}


def _effective_defaults() -> dict:
    """Every key's default: DEFAULT_LEARN over the code's defaults (``_MISSING`` if none)."""
    sch = schema()
    out = {}
    for section, keys in sch.items():
        given = DEFAULT_LEARN if section == "" else DEFAULT_LEARN.get(section, {})
        out[section] = {name: given.get(name, key.default) for name, key in keys.items()}
    return out


def _comment_lines(text: str, width: int = 88) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2)] if text else []


def default_toml() -> str:
    """The full default configuration as commented TOML (``gpal learn --print-config``).

    Every valid key appears, with its unit in a comment; keys without a default are
    commented out. Loading the output gives the same run as no configuration at all.
    """
    sch = schema()
    defaults = _effective_defaults()
    out = ["# gpal learn configuration: every key, with its default (gpal learn --print-config).",
           "# Keys that are commented out have no default, or one that follows another setting",
           "# (the built [structure] keys give way to a file; n_sparse_initial follows [model]",
           "# n_sparse); remove the '#' to set them.", ""]

    # keys whose default follows another setting: written commented, so that setting that
    # one (a [structure] file, [model] n_sparse) in the printed file does not clash with them
    follows = {("structure", k) for k in _BUILT_STRUCTURE_KEYS} | {("learner", "n_sparse_initial")}

    def emit(section: str):
        for name, key in sch[section].items():
            out.extend(_comment_lines(key.doc))
            value = defaults[section][name]
            if value is _MISSING:
                out.append(f"# {name} = <{key.describe_kinds(section)}>")
            else:
                mark = "# " if (section, name) in follows else ""
                out.append(f"{mark}{name} = {_fmt(list(value) if isinstance(value, tuple) else value)}")

    emit("")
    for section in sch:
        if not section:
            continue
        out += [""] + _comment_lines(_SECTION_DOCS.get(section, "")) + [f"[{section}]"]
        emit(section)
    return "\n".join(out) + "\n"
