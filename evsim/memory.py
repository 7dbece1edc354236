"""Memory for the arrays the hot loops stream through: 2 MiB-aligned, huge-page backed.

With ordinary 4 KiB pages, where a layer's weights and accumulators land in
the physically indexed L2 cache depends on which pages the kernel hands
out; measured on this machine (bench, conv scatter 128->128 on 32x32), the
same call ran at 14.3 G additions/s in some processes and 10.4 in others.
Backed by transparent huge pages (2 MiB, physically contiguous) the runs
were consistently fast. So the weight buffer and the membrane/drive state
are allocated here: an anonymous mapping, aligned to 2 MiB and advised
``MADV_HUGEPAGE``. Where the system offers no huge pages (THP ``never``, no
``madvise``), this is an ordinary aligned allocation and nothing changes.
"""

from __future__ import annotations

import mmap

import numpy as np

from .tuning import ALIGN_BYTES, HUGE_PAGE_BYTES, HUGE_PAGE_MIN_BYTES

HUGE = HUGE_PAGE_BYTES
LINE = ALIGN_BYTES
_MIN_BYTES = HUGE_PAGE_MIN_BYTES


def empty(shape, dtype) -> np.ndarray:
    """Like ``np.empty``, aligned to a cache line; large arrays 2 MiB-aligned and advised for huge pages."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    nbytes = n * dtype.itemsize
    if nbytes < _MIN_BYTES:      # cache-line aligned (NumPy guarantees 16 bytes only)
        raw = np.empty(nbytes + LINE, dtype=np.uint8)
        off = (-raw.ctypes.data) % LINE
        return raw[off:off + nbytes].view(dtype).reshape(shape)
    size = -(-nbytes // HUGE) * HUGE + HUGE
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(m, dtype=np.uint8)
    off = (-buf.ctypes.data) % HUGE
    advise = getattr(m, "madvise", None)
    if advise is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            advise(mmap.MADV_HUGEPAGE, off, size - off)
        except OSError:
            pass
    return buf[off:off + nbytes].view(dtype).reshape(shape)


def copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` in :func:`empty` memory."""
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


def huge_page_share(a: np.ndarray) -> float | None:
    """Share of the resident memory of the mapping that holds ``a`` that is in huge pages (Linux
    ``/proc/self/smaps``); None where that cannot be read. For the benchmarks: page placement moves
    the kernels' speed by 10 % and more, so a measurement records what it ran on."""
    addr = a.ctypes.data
    try:
        with open("/proc/self/smaps") as f:
            inside, rss = False, 0
            for line in f:
                head = line.split()
                if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                    lo, hi = (int(v, 16) for v in head[0].split("-"))
                    inside = lo <= addr < hi
                elif inside and head[0] == "Rss:":
                    rss = int(head[1])
                elif inside and head[0] == "AnonHugePages:":
                    return int(head[1]) / rss if rss else 0.0
    except (OSError, ValueError, IndexError):
        return None
    return None
