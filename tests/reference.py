"""A plain NumPy dense reference simulator: the equations, nothing clever.

Dense tensors in PyTorch order, float64, every projection applied as a full
matrix or convolution every timestep. The engine must reproduce it spike
for spike. It also counts synaptic operations the slow way (per event,
per reached synapse with a non-zero weight) so the engine's counters can be
checked against an independent count.
"""

from __future__ import annotations

import numpy as np

from evsim.graph import INPUT, READOUT, Network


def conv2d(x, w, stride, padding):
    """x (C, H, W), w (Co, Ci, kh, kw) -> (Co, Ho, Wo); direct definition."""
    ci, hi, wi = x.shape
    co, _, kh, kw = w.shape
    ph, pw = padding
    sh, sw = stride
    xp = np.zeros((ci, hi + 2 * ph, wi + 2 * pw))
    xp[:, ph:ph + hi, pw:pw + wi] = x
    ho = (hi + 2 * ph - kh) // sh + 1
    wo = (wi + 2 * pw - kw) // sw + 1
    out = np.zeros((co, ho, wo))
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + sh * (ho - 1) + 1:sh, kx:kx + sw * (wo - 1) + 1:sw]  # ci, ho, wo
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], patch)
    return out


def conv_reach(shape_in, w, stride, padding):
    """count[ci, y, x] = non-zero synapses an event at (ci, y, x) reaches inside the output map."""
    ci, hi, wi = shape_in
    co, _, kh, kw = w.shape
    ho = (hi + 2 * padding[0] - kh) // stride[0] + 1
    wo = (wi + 2 * padding[1] - kw) // stride[1] + 1
    count = np.zeros(shape_in, dtype=np.int64)
    nz = (w != 0).sum(0)  # ci, kh, kw
    for y in range(hi):
        for x in range(wi):
            for ky in range(kh):
                for kx in range(kw):
                    ny, nx = y + padding[0] - ky, x + padding[1] - kx
                    if ny < 0 or nx < 0 or ny % stride[0] or nx % stride[1]:
                        continue
                    if ny // stride[0] < ho and nx // stride[1] < wo:
                        count[:, y, x] += nz[:, ky, kx]
    return count


def apply(pr, x):
    if pr.kind == "identity":
        return pr.scale * x
    if pr.kind == "linear":
        y = pr.weight @ x.reshape(-1)
    else:
        y = conv2d(x, pr.weight, pr.stride, pr.padding)
    if pr.bias is not None:
        y = y + (pr.bias if pr.kind == "linear" else pr.bias[:, None, None])
    return y


def reach(pr, shape):
    """Synaptic operations each source neuron's event costs through ``pr`` (source shape)."""
    if pr.kind == "identity":     # one addition per event; a scale of 0 adds nothing
        return np.full(shape, int(pr.scale != 0), dtype=np.int64)
    if pr.kind == "linear":
        return (pr.weight != 0).sum(0).reshape(shape)
    return conv_reach(shape, pr.weight, pr.stride, pr.padding)


def simulate_one(net: Network, x: np.ndarray):
    """One sample. Returns outputs, spikes {name: (T, *shape)}, syn_ops {projection: int}."""
    T = net.timesteps
    order = net.topological_order()
    pops = {p.name: p for p in net.populations}
    u = {n: np.zeros(pops[n].shape) for n in order}
    h = {n: np.zeros(pops[n].shape) for n in order}
    o = {n: np.zeros(pops[n].shape) for n in order}
    spikes = {n: np.zeros((T,) + pops[n].shape, dtype=np.int8) for n in order}
    ops = {pr.name: 0 for pr in net.projections}
    out = np.zeros(net.n_classes)
    for t in range(T):
        inp = x if net.encoding == "direct" else x[t].astype(np.float64)

        def value(src):
            return inp if src == INPUT else o[src]

        for n in order:
            pop = pops[n]
            prm = pop.params
            xin = np.zeros(pop.shape)
            for pr in net.incoming(n):
                xin = xin + apply(pr, value(pr.source))
                if not (pr.source == INPUT and net.encoding == "direct"):
                    ops[pr.name] += int((reach(pr, net.shape_of(pr.source)) * (value(pr.source) != 0)).sum())
            if pop.model == "ternary_lif":
                u[n] = prm["tau"] * u[n] * (1 - np.abs(o[n])) + xin
                o[n] = (u[n] >= prm["v_threshold"]).astype(float) - (u[n] <= -prm["v_threshold"])
            elif pop.model == "binary_lif":
                u[n] = prm["tau"] * u[n] * (1 - o[n]) + xin
                o[n] = (u[n] >= prm["v_threshold"]).astype(float)
            elif pop.model == "binary_lif_sub":
                u[n] = prm["tau"] * u[n] - prm["v_threshold"] * o[n] + xin
                o[n] = (u[n] >= prm["v_threshold"]).astype(float)
            elif pop.model in ("cuba_lif", "cuba_lif_sub"):   # h[n] holds the synaptic current i
                h[n] = prm["k_syn"] * h[n] + xin
                if pop.model == "cuba_lif":
                    u[n] = prm["tau"] * u[n] * (1 - o[n]) + h[n]
                else:
                    u[n] = prm["tau"] * u[n] - prm["v_threshold"] * o[n] + h[n]
                o[n] = (u[n] >= prm["v_threshold"]).astype(float)
            else:  # CTSN: u[n] holds u~
                uu = prm["tau"] * u[n] * (1 - np.abs(o[n]))
                if pop.model == "ctsn_static":
                    h[n] = prm["k_alpha"] * np.maximum(h[n], 0) + prm["k_beta"] * np.minimum(h[n], 0) + prm["k_gamma"] * uu
                else:
                    h[n] = prm["k_alpha"] * h[n] + prm["k_beta"] * np.maximum(uu, 0) + prm["k_gamma"] * np.minimum(uu, 0)
                u[n] = h[n] + xin
                o[n] = (u[n] >= prm["v_threshold"]).astype(float) - (u[n] <= -prm["v_threshold"])
            spikes[n][t] = o[n]
        for pr in net.incoming(READOUT):
            out += apply(pr, value(pr.source))
            if not (pr.source == INPUT and net.encoding == "direct"):
                ops[pr.name] += int((reach(pr, net.shape_of(pr.source)) * (value(pr.source) != 0)).sum())
    return out / T, spikes, ops


def simulate(net: Network, xs: np.ndarray):
    """A batch: outputs (N, n_out), spikes {name: (T, N, *shape)}, ops {projection: (N,)}."""
    results = [simulate_one(net, x) for x in xs]
    outputs = np.stack([r[0] for r in results])
    spikes = {n: np.stack([r[1][n] for r in results], axis=1) for n in results[0][1]}
    ops = {k: np.array([r[2][k] for r in results]) for k in results[0][2]}
    return outputs, spikes, ops
