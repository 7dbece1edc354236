"""Small Numba loops that probe the machine itself (used by the scaling case)."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def vector_adds(a, b, reps):
    """Row i of ``a`` += row i of ``b``, ``reps`` times: one row per thread, all in L1, vectorised adds."""
    for i in prange(a.shape[0]):
        for _ in range(reps):
            for j in range(a.shape[1]):
                a[i, j] += b[i, j]


@njit(parallel=True, cache=True)
def scalar_chain(n, reps):
    """``n`` independent chains of ``reps`` dependent multiply-adds (latency-bound)."""
    total = 0.0
    for i in prange(n):
        s = 0.0
        x = (i + 1) * 1e-9
        for _ in range(reps):
            s = s * 0.999999 + x
        total += s
    return total
