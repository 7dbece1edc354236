"""Hand-built networks for the tests: every projection kind, random weights."""

from __future__ import annotations

import numpy as np

from evsim.graph import Network, Population, Projection

LIF = {"tau": 0.25, "v_threshold": 0.5}
CTSN = {"tau": 0.25, "v_threshold": 0.5, "k_alpha": 0.6, "k_beta": 0.3, "k_gamma": 0.55}
CUBA = {"tau": 0.5, "v_threshold": 0.5, "k_syn": 0.6}


def _w(rng, *shape, fan_in=None, gain=1.5, prune=0.0):
    fan_in = fan_in or int(np.prod(shape[1:]))
    w = rng.normal(0, gain / np.sqrt(fan_in), size=shape)
    if prune:
        w[rng.random(shape) < prune] = 0.0
    return w


def pooled_linear(w_linear, c, h, w, pool):
    """avgpool(pool) then linear -> one linear weight over the unpooled (C, H, W) map."""
    n_out = w_linear.shape[0]
    hp, wp = h // pool, w // pool
    wl = w_linear.reshape(n_out, c, hp, wp)
    full = np.repeat(np.repeat(wl, pool, axis=2), pool, axis=3) / (pool * pool)
    return full.reshape(n_out, c * h * w)


def residual_net(seed=0, model="ternary_lif", timesteps=4, encoding="direct", c=4, hw=8, prune=0.2,
                 shortcut_scale=0.8, tap_prune=0.0):
    """conv stem -> residual block (identity shortcut with scale) -> strided block (1x1 conv
    shortcut) -> avgpool(2)+linear folded -> readout. Covers stride, padding, identity, pooling."""
    rng = np.random.default_rng(seed)
    params = CTSN if model.startswith("ctsn") else CUBA if model.startswith("cuba") else LIF
    pops = [
        Population("stem", (c, hw, hw), model, params),
        Population("b1.mid", (c, hw, hw), model, params),
        Population("b1.out", (c, hw, hw), model, params),
        Population("b2.mid", (2 * c, hw // 2, hw // 2), model, params),
        Population("b2.out", (2 * c, hw // 2, hw // 2), model, params),
    ]
    cin = 2
    projs = [
        Projection("stem.conv", "input", "stem", "conv2d", _w(rng, c, cin, 3, 3, gain=2.0),
                   rng.normal(0, 0.1, c), (1, 1), (1, 1)),
        Projection("b1.conv1", "stem", "b1.mid", "conv2d", _w(rng, c, c, 3, 3, prune=prune), rng.normal(0, 0.1, c),
                   (1, 1), (1, 1)),
        Projection("b1.conv2", "b1.mid", "b1.out", "conv2d", _w(rng, c, c, 3, 3, prune=prune), rng.normal(0, 0.1, c),
                   (1, 1), (1, 1)),
        Projection("b1.shortcut", "stem", "b1.out", "identity", scale=shortcut_scale),
        Projection("b2.conv1", "b1.out", "b2.mid", "conv2d", _w(rng, 2 * c, c, 3, 3), rng.normal(0, 0.1, 2 * c),
                   (2, 2), (1, 1)),
        Projection("b2.conv2", "b2.mid", "b2.out", "conv2d", _w(rng, 2 * c, 2 * c, 3, 3), None, (1, 1), (1, 1)),
        Projection("b2.shortcut", "b1.out", "b2.out", "conv2d", _w(rng, 2 * c, c, 1, 1), rng.normal(0, 0.1, 2 * c),
                   (2, 2), (0, 0)),
        Projection("fc", "b2.out", "readout", "linear",
                   pooled_linear(_w(rng, 5, 2 * c * (hw // 4) ** 2), 2 * c, hw // 2, hw // 2, 2), rng.normal(0, 0.1, 5)),
    ]
    if tap_prune:   # empty whole taps (all output channels) of a stride-1 and a stride-2 conv
        for p in projs:
            if p.name in ("b1.conv2", "b2.conv1"):
                p.weight[:, rng.random(p.weight.shape[1:]) < tap_prune] = 0.0
    in_shape = (cin, hw, hw)
    return Network(pops, projs, timesteps, in_shape, encoding=encoding,
                   class_names=[f"class{i}" for i in range(5)],
                   input_range=(-3.0, 3.0) if encoding == "direct" else None,
                   provenance={"made_by": "tests/networks.py residual_net", "seed": seed})


def mlp_net(seed=0, model="ternary_lif", timesteps=3, encoding="direct", n_in=12, hidden=16, prune=0.3):
    """input -> linear -> population -> linear -> population -> linear readout."""
    rng = np.random.default_rng(seed)
    params = CTSN if model.startswith("ctsn") else LIF
    pops = [Population("h1", (hidden,), model, params), Population("h2", (hidden,), model, params)]
    projs = [
        Projection("fc1", "input", "h1", "linear", _w(rng, hidden, n_in, gain=2.5), rng.normal(0, 0.1, hidden)),
        Projection("fc2", "h1", "h2", "linear", _w(rng, hidden, hidden, prune=prune), None),
        Projection("fc3", "h2", "readout", "linear", _w(rng, 4, hidden), rng.normal(0, 0.1, 4)),
    ]
    return Network(pops, projs, timesteps, (n_in,), encoding=encoding)


def random_input(net: Network, n: int, seed=1, density=0.3):
    rng = np.random.default_rng(seed)
    if net.encoding == "direct":     # like an image: real values on a background of zeros
        x = rng.uniform(0, 1, size=(n,) + tuple(net.input_shape))
        x[rng.random(x.shape) < 0.4] = 0.0
        return x
    shape = (n, net.timesteps) + tuple(net.input_shape)
    s = (rng.random(shape) < density).astype(np.int8)
    return s * np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)


def residual_net_pruned_taps(**kw):
    """residual_net with most taps of two convs empty: the compiler scatters those tap by tap."""
    return residual_net(tap_prune=0.7, **kw)
