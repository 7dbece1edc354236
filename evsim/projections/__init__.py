"""One module per projection kind of the compiled network.

A graph projection (``linear``, ``conv2d``, ``identity``: evsim.graph) is lowered by the compiler to
one of these kinds; the kind's name is its ``mode`` everywhere (compiled network, program table,
reports, tests). Each module owns its three forms: ``lower`` (graph -> its arrays), ``pack`` (its
row of the driver's table and its slice of the shared buffers) and its Numba kernel with the
decoding of that row (``scatter_packed``), plus ``scatter_batch``, the same kernel over a batch of
samples, which the kernel tests and the kernel micro-benchmark call directly (the engine itself runs
only the driver). ``dense`` (a direct-encoded input) has no event
kernel: its current is computed once per sample (``current``).

Adding a kind: a module with that interface, an entry in :data:`EVENT_KINDS`, and one line in the
driver's dispatch (:func:`evsim.kernels._scatter_one`: Numba compiles it statically).
"""

from .. import jitcache

jitcache.install()   # before the kinds' @njit(cache=True) functions are defined

from . import conv_rows, conv_taps, csr, dense, identity  # noqa: E402

EVENT_KINDS = {m.NAME: m for m in (conv_rows, conv_taps, csr, identity)}
KINDS = {**EVENT_KINDS, dense.NAME: dense}

__all__ = ["EVENT_KINDS", "KINDS", "conv_rows", "conv_taps", "csr", "dense", "identity"]
