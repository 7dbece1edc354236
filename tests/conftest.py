"""Shared fixtures of the core test suite.

``tests/`` is on ``sys.path`` (pytest's rootdir-less "prepend" import mode),
so the tests import the dense reference and the hand-built networks as
``reference`` and ``networks``.
"""

from __future__ import annotations

import os

# The engine's kernels are Numba ``parallel=True`` and launch a thread team
# per call. With GNU OpenMP's default *active* wait policy, every launch costs
# milliseconds when the cores are shared (CI, other test processes), which made
# one small simulation take ~0.4 s instead of ~1 ms. Passive waiting keeps the
# suite fast; set before Numba loads its threading layer, overridable from outside.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import functools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import networks  # noqa: E402
import reference  # noqa: E402

MODELS = ("ternary_lif", "binary_lif", "ctsn_static", "ctsn_event")
ENCODINGS = ("direct", "spikes")
NETWORKS = {"residual_net": networks.residual_net, "mlp_net": networks.mlp_net,
            "residual_net_pruned_taps": networks.residual_net_pruned_taps}


@functools.lru_cache(maxsize=None)
def case(net_name: str, model: str, encoding: str, n: int = 3, seed: int = 1):
    """(network, inputs, reference outputs, reference spikes, reference syn ops), computed once."""
    net = NETWORKS[net_name](model=model, encoding=encoding)
    x = networks.random_input(net, n, seed=seed)
    outputs, spikes, ops = reference.simulate(net, x)
    return net, x, outputs, spikes, ops


@pytest.fixture(scope="session")
def residual_file(tmp_path_factory):
    """A residual_net (direct encoding, class names, input_range) written to HDF5."""
    from evsim import write_network
    path = tmp_path_factory.mktemp("nets") / "residual.h5"
    write_network(networks.residual_net(), path)
    return path


def ternary(rng: np.random.Generator, shape, density: float = 0.3) -> np.ndarray:
    """A random {-1, 0, 1} int8 array."""
    s = (rng.random(shape) < density).astype(np.int8)
    return s * np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
