"""The projection table of the fused driver: one int64 row per projection (``Program.desc``).

The columns every kind shares come first; ``D_O1 .. D_O7``, ``D_N`` and ``D_FLAG`` mean what the
projection's kind says: each kind's module writes them (``pack``) and reads them back
(``scatter_packed``) in the same file, so writer and reader cannot drift apart.
"""

import numpy as np

D_MODE, D_SRC, D_DST, D_C_IN, D_H_IN, D_W_IN, D_C_OUT, D_H_OUT, D_W_OUT, D_KH, D_KW, D_FLAG = range(12)
D_O1, D_O2, D_O3, D_O4, D_O5, D_O6, D_O7, D_N = range(12, 20)
D_TALLY = 20
"""Shared by every kind: -1 when the kernel counts the projection's synaptic operations, else the offset in
the int64 buffer of a :func:`tally_table` of each source neuron's synaptic operations per event; the driver
then keeps a count of each source neuron's spikes and adds the table times those counts at the end of a
sample (the kernel's own count is not used): the per-event look-up of a kernel whose weights include
zeros, moved out of the event loop (:func:`evsim.kernels.run_network`)."""
DESC_WIDTH = 21


def tally_table(ops: np.ndarray) -> np.ndarray:
    """Each source neuron's synaptic operations per event, ``ops`` (its channels-last index), as the driver
    reads them, in the int64 buffer: ``[n, 16, the n counts as int16, four to a word]`` where every count
    fits 16 bits (a 3x3 conv's are at most 9 x C_out), else ``[n, 64, the n counts]``. The driver streams
    these tables once per sample; at int16 they take a quarter of the cache (the shipped ResNet-8's conv
    tables: 144 KB instead of 577 KB; streamed as int64 they cost as much as the per-event look-up they
    replace)."""
    ops = np.asarray(ops, dtype=np.int64).reshape(-1)
    n = ops.size
    if n == 0 or (ops.min() >= 0 and ops.max() <= np.iinfo(np.int16).max):
        packed = np.zeros(-(-n // 4) * 4, dtype=np.int16)
        packed[:n] = ops
        return np.concatenate([[n, 16], packed.view(np.int64)]).astype(np.int64)
    return np.concatenate([[n, 64], ops]).astype(np.int64)
