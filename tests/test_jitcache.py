"""Numba's cache of evsim's kernels lives in a user cache directory, never inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys

from numba.core.registry import CPUDispatcher

import evsim.kernels as K
from evsim import jitcache, projections


def _kernels():
    """Every cached kernel: the driver's module and each projection kind's."""
    modules = [K, projections.positions, *projections.KINDS.values()]
    return [v for m in modules for v in vars(m).values() if isinstance(v, CPUDispatcher) and v._cache is not None]


def _cache_dirs_in(env: dict) -> set[str]:
    code = ("import evsim.kernels as K; from numba.core.registry import CPUDispatcher; "
            "print('\\n'.join({v._cache._cache_path for v in vars(K).values() if isinstance(v, CPUDispatcher)}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_every_kernel_is_cached_under_the_user_cache_root():
    kernels = _kernels()
    assert len(kernels) >= 20
    root = str(jitcache.cache_root() / "numba")
    for k in kernels:
        path = k._cache._cache_path
        assert path.startswith(root + os.sep), (k.__name__, path)
        assert not path.startswith(str(jitcache.PACKAGE_DIR))


def test_cache_dir_follows_evsim_cache_dir_and_numba_cache_dir_wins(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "EVSIM_CACHE_DIR")}
    ours = _cache_dirs_in(dict(env, EVSIM_CACHE_DIR=str(tmp_path / "e")))
    assert ours and all(p.startswith(str(tmp_path / "e" / "numba")) for p in ours)
    theirs = _cache_dirs_in(dict(env, EVSIM_CACHE_DIR=str(tmp_path / "e"), NUMBA_CACHE_DIR=str(tmp_path / "n")))
    assert theirs and all(p.startswith(str(tmp_path / "n")) for p in theirs)


def test_cache_dir_changes_with_the_inlined_helper_sources(tmp_path, monkeypatch):
    """An edit of simd.py or of a projection kind's module (compiled into the driver) must not reuse
    kernels compiled from the old code."""
    before = jitcache._sources_digest()
    for pattern in jitcache.KERNEL_SOURCES:
        for path in jitcache.PACKAGE_DIR.glob(pattern):
            rel = path.relative_to(jitcache.PACKAGE_DIR)
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(path.read_bytes())
    monkeypatch.setattr(jitcache, "PACKAGE_DIR", tmp_path)
    assert jitcache._sources_digest() == before
    for edited in ("simd.py", "projections/csr.py"):
        (tmp_path / edited).write_bytes((tmp_path / edited).read_bytes() + b"\n# edited\n")
        assert jitcache._sources_digest() != before
        before = jitcache._sources_digest()


def test_other_packages_keep_numbas_default(tmp_path):
    mod = tmp_path / "userkernel.py"
    mod.write_text("from numba import njit\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    code = ("import sys; sys.path.insert(0, %r); import evsim.kernels, userkernel; "
            "print(userkernel.f._cache._cache_path)" % str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path / "__pycache__")
