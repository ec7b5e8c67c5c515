"""Import of the ``"module:qualname"`` paths that configs, run states and model files name."""

from __future__ import annotations

import importlib


class MissingNameError(AttributeError):
    """The module imported but holds no object of the path's name."""


def import_object(path: str):
    """The object ``path`` (``"module:qualname"``, e.g. ``"ase.calculators.emt:EMT"``) names.

    Raises
    ------
    ValueError
        ``path`` is not of the form ``"module:qualname"``.
    ImportError
        The module cannot be found or imported.
    MissingNameError
        The module has no attribute of that (dotted) name.
    Exception
        Anything else the module raised while it was imported, unchanged.
    """
    module, sep, name = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not sep or not module or not name:
        raise ValueError(f"expected 'module:Name' (e.g. 'ase.calculators.emt:EMT'), got {path!r}")
    obj = importlib.import_module(module)
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise MissingNameError(f"module {module!r} has no attribute {name!r}") from None
    return obj
