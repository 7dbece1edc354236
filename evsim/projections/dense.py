"""dense: a projection from a direct-encoded (real-valued) input, evaluated once per sample.

Its current is the same at every timestep, so it is computed once, densely (multiply-accumulates,
counted once: docs/COUNTING.md), and added to the target's drive; it has no event kernel and no row
in the driver's table. Lowering (:func:`lower`), the MAC counts and the current (:func:`current`)
live here together.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..jitcache import PARALLEL
from ..layout import linear_weight_cl, to_channels_last
from .csr import conv_explicit_nnz

NAME = "dense"


def conv_input_reach(weight: np.ndarray, geom) -> np.ndarray:
    """Non-zero synapses an input neuron (ci, y, x) reaches inside the output map, int64 (C_in, H, W).

    Offset (ky, kx) joins input row y to output row o when ``o * stride - pad + ky = y`` with o inside
    the map; the count is a sum over offsets of the non-zero (co) weights, in O(kernel x map)."""
    def joins(k, stride, pad, n_in, n_out):
        i = np.arange(n_in)[None, :] + pad - np.arange(k)[:, None]          # [offset, input] -> o * stride
        return ((i >= 0) & (i % stride == 0) & (i // stride < n_out)).astype(np.int64)
    ry = joins(geom.kernel[0], geom.stride[0], geom.padding[0], geom.h_in, geom.h_out)
    rx = joins(geom.kernel[1], geom.stride[1], geom.padding[1], geom.w_in, geom.w_out)
    nz = (weight != 0).sum(axis=0).astype(np.int64)                          # [ci, ky, kx] over co
    return np.einsum("ckl,ky,lx->cyx", nz, ry, rx)


def lower(pr, geom, dtype, source_shape, target_shape) -> tuple[dict, int, np.ndarray]:
    """The dense weight of a direct-input projection, its MACs over all positions, and the MACs each
    non-zero input value costs (per input neuron, PyTorch order)."""
    if geom is None:         # linear
        w = linear_weight_cl(pr.weight, source_shape, target_shape)
        arrays = {"weight_t": np.ascontiguousarray(w.T.astype(dtype))}      # (n_src_cl, n_tgt_cl)
        return arrays, int(np.count_nonzero(pr.weight)), np.count_nonzero(pr.weight, axis=0).astype(np.int64)
    # conv: rows ordered (ky, kx, ci) for direct_conv
    arrays = {"weight_t": np.ascontiguousarray(pr.weight.transpose(2, 3, 1, 0).reshape(-1, geom.c_out).astype(dtype))}
    return arrays, conv_explicit_nnz(pr.weight, geom), conv_input_reach(pr.weight, geom).reshape(-1)


@njit(**PARALLEL)
def direct_conv(x, wt, kh, kw, sh, sw, ph, pw, h_out, w_out, out):
    """Dense conv of a batch ``x`` (N, C_in, H, W) into ``out`` (N, H_out * W_out * C_out), channels-last.

    ``wt`` (kh * kw * C_in, C_out), rows ordered (ky, kx, ci). ``out`` is
    added to, one output position at a time, the innermost loop running over
    the contiguous output channels.
    """
    c_in, h_in, w_in = x.shape[1], x.shape[2], x.shape[3]
    c_out = wt.shape[1]
    for n in prange(x.shape[0]):
        for oy in range(h_out):
            for ox in range(w_out):
                o = (oy * w_out + ox) * c_out
                for ky in range(kh):
                    iy = oy * sh - ph + ky
                    if iy < 0 or iy >= h_in:
                        continue
                    for kx in range(kw):
                        ix = ox * sw - pw + kx
                        if ix < 0 or ix >= w_in:
                            continue
                        r = (ky * kw + kx) * c_in
                        for ci in range(c_in):
                            xv = x[n, ci, iy, ix]
                            for co in range(c_out):
                                out[n, o + co] += xv * wt[r + ci, co]


@njit(**PARALLEL)
def direct_linear(x, wt, out):
    """Dense linear map of a batch ``x`` (N, n_in) into ``out`` (N, n_out): ``out += x @ wt``."""
    n_in, n_out = wt.shape
    for n in prange(x.shape[0]):
        for i in range(n_in):
            xv = x[n, i]
            for o in range(n_out):
                out[n, o] += xv * wt[i, o]


def current(cp, x: np.ndarray, input_shape) -> np.ndarray:
    """The current of a batch ``x`` (N, *input_shape) through ``cp``: (N, n_target) channels-last."""
    wt = cp.arrays["weight_t"]
    n = x.shape[0]
    if cp.geometry is None:
        out = np.zeros((n, wt.shape[1]), dtype=wt.dtype)
        direct_linear(to_channels_last(x, input_shape), wt, out)
        return out
    g = cp.geometry
    out = np.zeros((n, g.h_out * g.w_out * g.c_out), dtype=wt.dtype)
    direct_conv(x, wt, g.kernel[0], g.kernel[1], g.stride[0], g.stride[1], g.padding[0], g.padding[1],
                g.h_out, g.w_out, out)
    return out
