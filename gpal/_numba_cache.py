"""Where numba keeps gpal's compiled functions: outside the installed package.

gpal compiles its numba routines with ``cache=True``. Numba's default locator writes
the cache files (``*.nbi``, ``*.nbc``) into ``__pycache__`` next to the source file
whenever that folder is writable, i.e. into ``site-packages/gpal/__pycache__`` after
``pip install .``. pip does not know about those files, so ``pip uninstall`` (which
``pip install -e .`` runs first) leaves ``site-packages/gpal/__pycache__`` behind: an
empty ``gpal`` folder without ``__init__.py`` that Python imports as a namespace package,
shadowing the editable install (``ImportError: cannot import name '__version__' from
'gpal' (unknown location)``).

This module registers a cache locator for gpal's own source files only. It puts their
cache in a per-user folder, ``<user cache dir>/gpal/numba/<source folder>_<hash>``
(``~/.cache/gpal/numba/...`` on Linux, honouring ``XDG_CACHE_HOME``), or, if that is not
writable, under the system temporary folder. Functions of other packages keep numba's
default behaviour, and a ``NUMBA_CACHE_DIR`` set by the user still wins (numba's own
locator for it stays first). Nothing is changed in ``os.environ``.

Importing this module (``gpal/__init__.py`` does it before anything else) is enough;
the locator must be in place before the first ``@numba.njit(cache=True)`` decorator
runs, since numba picks a function's locator when it is decorated.
"""

from __future__ import annotations

import getpass
import os
import tempfile

from numba.core import caching
from numba.misc.appdirs import AppDirs

__all__ = ["GpalCacheLocator", "cache_root", "install"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# numba >= 0.61 dropped the leading underscores of these names
_CacheImpl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
_UserProvided = getattr(caching, "UserProvidedCacheLocator", None) or getattr(
    caching, "_UserProvidedCacheLocator"
)


def cache_root() -> str:
    """Per-user folder for gpal's numba cache (it need not exist yet)."""
    return os.path.join(AppDirs(appname="gpal", appauthor=False).user_cache_dir, "numba")


def _fallback_root() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return os.path.join(tempfile.gettempdir(), f"gpal-numba-cache-{uid}")


def _is_gpal_source(py_file: str) -> bool:
    """A file of gpal's package or of one of its subpackages (selection/, descriptors/, ...)."""
    try:
        return os.path.commonpath([os.path.abspath(py_file), _PACKAGE_DIR]) == _PACKAGE_DIR
    except (TypeError, ValueError):
        return False


class GpalCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba cache locator for gpal's modules: a per-user cache folder, never the package.

    The subfolder is named after the source folder and a hash of its full path
    (numba's ``get_suitable_cache_subpath``), so a regular and an editable install of
    gpal, or two virtual environments, never share (or overwrite) each other's entries.
    Freshness is checked by numba as usual (source stamp of the module file).
    """

    _roots = (cache_root, _fallback_root)

    def __init__(self, py_func, py_file, root: str):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self) -> str:
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        """A locator for gpal's source files whose cache folder is writable, else None."""
        if not _is_gpal_source(py_file) or not os.path.exists(py_file):
            return None
        for root in cls._roots:
            self = cls(py_func, py_file, root())
            try:
                self.ensure_cache_path()
            except OSError:
                continue
            return self
        return None  # numba's own locators decide (caching may then be disabled)


def install() -> None:
    """Put :class:`GpalCacheLocator` right after numba's ``NUMBA_CACHE_DIR`` locator (idempotent)."""
    classes = _CacheImpl._locator_classes
    if any(c.__name__ == GpalCacheLocator.__name__ and c.__module__ == __name__ for c in classes):
        return
    pos = classes.index(_UserProvided) + 1 if _UserProvided in classes else 0
    classes.insert(pos, GpalCacheLocator)


install()
