"""Where Numba keeps evsim's compiled kernels: a user cache directory, never the installed package.

Numba's default puts a module's cache in ``__pycache__`` beside the source.
For an installed evsim that is ``site-packages/evsim/__pycache__``: files pip
does not know about, which outlive ``pip uninstall`` and leave an empty
``evsim`` namespace package behind that shadows a later editable install.
So evsim's own kernels are cached in

    ``$EVSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/evsim``, else ``~/.cache/evsim``

(``NUMBA_CACHE_DIR``, when a user sets it, still wins, as Numba documents),
in a subdirectory per source tree *and per content of the kernel sources*:
the kernels inline code from :mod:`evsim.simd` and :mod:`evsim.neurons`,
whose edits Numba's own staleness check (the kernel file's timestamp) does
not see, so a changed helper gets a fresh cache instead of a stale one.

Only functions defined in evsim's own files use this location; every other
package's Numba cache is left where Numba puts it. This relies on Numba's
cache-locator list (``numba.core.caching.CacheImpl._locator_classes``,
present from 0.59 to at least 0.68); where that is missing, Numba's default
applies and nothing else changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# files whose code is compiled into the cached kernels
KERNEL_SOURCES = ("kernels.py", "clock.py", "simd.py", "simd_plain.py", "intrinsics.py", "tuning.py", "neurons.py",
                  "layout.py", "projections/*.py")
# how every evsim kernel is compiled: cached, no GIL, IEEE arithmetic, no bounds checks (the compiler
# guarantees the indices); PARALLEL for the batch kernels and the driver (prange)
SERIAL = dict(cache=True, nogil=True, fastmath=False, boundscheck=False)
PARALLEL = dict(SERIAL, parallel=True)
# which vector building blocks the kernels are compiled against (set by evsim.intrinsics before the
# kernels are defined): kernels of each variant live in a directory of their own
_variant = ["probe"]


def set_variant(name: str) -> None:
    """Cache the functions decorated from now on under variant ``name`` (``ir`` or ``plain``)."""
    _variant[0] = name


def cache_root() -> Path:
    """The directory evsim's kernel cache lives under (not created here)."""
    explicit = os.environ.get("EVSIM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "evsim"


def _sources_digest() -> str:
    h = hashlib.sha1()
    for pattern in KERNEL_SOURCES:
        for path in sorted(PACKAGE_DIR.glob(pattern)) or [PACKAGE_DIR / pattern]:
            try:
                h.update(path.read_bytes())
            except OSError:
                h.update(pattern.encode())
    return h.hexdigest()[:12]


def install() -> bool:
    """Register the locator (idempotent); False where this Numba has no locator list to extend."""
    try:
        from numba.core import caching
        base = caching.UserWideCacheLocator
        locators = caching.CacheImpl._locator_classes
    except (ImportError, AttributeError):
        return False
    if any(getattr(c, "_evsim", False) for c in locators):
        return True
    digest = _sources_digest()

    class EvsimCacheLocator(base):
        """Numba cache locator for functions in evsim's own source files."""

        _evsim = True

        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = str(cache_root() / "numba" / (self.get_suitable_cache_subpath(py_file) + "-" + digest
                                                             + "-" + _variant[0]))

        @classmethod
        def from_function(cls, py_func, py_file):
            try:
                inside = PACKAGE_DIR in Path(py_file).resolve().parents
            except (OSError, RuntimeError):
                inside = False
            return super().from_function(py_func, py_file) if inside else None

    # after the user's NUMBA_CACHE_DIR locator, before the in-tree __pycache__ one
    at = 1 if locators and locators[0] is getattr(caching, "UserProvidedCacheLocator", None) else 0
    locators.insert(at, EvsimCacheLocator)
    return True
