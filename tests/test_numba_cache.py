"""numba's cache of gpal's compiled functions lives outside the package, and it works.

Cache files inside an installed package outlive ``pip uninstall`` and turn the
package folder into a namespace-package ghost that shadows a later editable install
(see gpal/_numba_cache.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gpal

PROBE = r"""
import json, os
import numba
from numba.core.caching import NullCache
import sys
import gpal
from gpal import _jit

pkg = os.path.dirname(os.path.abspath(gpal.__file__))
locators = {}
# every gpal module imported by ``import gpal``, subpackages included
for mod in [m for n, m in sorted(sys.modules.items()) if n == "gpal" or n.startswith("gpal.")]:
    for name, obj in vars(mod).items():
        cache = getattr(obj, "_cache", None)
        if isinstance(obj, numba.core.registry.CPUDispatcher) and not isinstance(cache, NullCache):
            loc = cache._impl._locator
            locators[f"{mod.__name__}.{name}"] = [type(loc).__name__, loc.get_cache_path()]
_jit._ipow(2.0, 3)
print(json.dumps({
    "pkg": pkg,
    "locators": locators,
    "hits": sum(_jit._ipow.stats.cache_hits.values()),
    "misses": sum(_jit._ipow.stats.cache_misses.values()),
}))
"""


def _probe(cache_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
    env["XDG_CACHE_HOME"] = str(cache_home)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cache_files(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")}


def test_cache_outside_the_package_and_reused(tmp_path):
    pkg = Path(gpal.__file__).resolve().parent
    before = _cache_files(pkg)
    first = _probe(tmp_path)
    assert len(first["locators"]) > 20  # every cached routine of gpal's jit modules
    assert any(".selection." in name for name in first["locators"])  # subpackages too
    for name, (kind, path) in first["locators"].items():
        assert kind == "GpalCacheLocator", name
        assert Path(path).is_relative_to(tmp_path / "gpal" / "numba"), (name, path)
    assert first["misses"] == 1 and first["hits"] == 0  # empty cache: compiled
    second = _probe(tmp_path)
    assert second["hits"] == 1 and second["misses"] == 0  # loaded, not recompiled
    assert _cache_files(tmp_path)
    assert _cache_files(pkg) == before  # nothing written next to the sources


def test_other_packages_keep_numbas_locators():
    from numba.core import caching

    from gpal._numba_cache import GpalCacheLocator

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    classes = impl._locator_classes
    assert classes.count(GpalCacheLocator) == 1
    # numba's NUMBA_CACHE_DIR locator keeps precedence
    assert classes.index(GpalCacheLocator) == 1
    assert GpalCacheLocator.from_function(json.dumps, json.__file__) is None
