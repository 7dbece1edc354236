"""The engine's memory order: channels-last, ``(y * W + x) * C + c``, and conversions from PyTorch's.

Every stage after the file format works in this order (the compiler's arrays, the kernels' event
indices, the state); inputs, files and reports stay in PyTorch's ``C, H, W`` order.
"""

from __future__ import annotations

import numpy as np


def cl_permutation(shape: tuple[int, ...]) -> np.ndarray:
    """perm[cl] = PyTorch flat index of channels-last flat index cl."""
    if len(shape) == 1:
        return np.arange(shape[0])
    c, h, w = shape
    return np.arange(c * h * w).reshape(c, h * w).T.reshape(-1)


def to_channels_last(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, *shape) in PyTorch order -> (N, P * C) channels-last, contiguous."""
    n = x.shape[0]
    if len(shape) == 1:
        return np.ascontiguousarray(x.reshape(n, -1))
    c, h, w = shape
    return np.ascontiguousarray(x.reshape(n, c, h * w).transpose(0, 2, 1).reshape(n, h * w * c))


def from_channels_last(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(..., P * C) channels-last -> (..., *shape) in PyTorch order."""
    lead = x.shape[:-1]
    if len(shape) == 1:
        return x.reshape(*lead, shape[0])
    c, h, w = shape
    return np.moveaxis(x.reshape(*lead, h * w, c), -1, -2).reshape(*lead, c, h, w)


def linear_weight_cl(weight: np.ndarray, source_shape, target_shape) -> np.ndarray:
    """A linear weight (n_target, n_source) with both axes in channels-last order
    (``target_shape`` None: the readout, already flat)."""
    w = weight[:, cl_permutation(tuple(source_shape))]
    if target_shape is not None:
        w = w[cl_permutation(tuple(target_shape)), :]
    return w
