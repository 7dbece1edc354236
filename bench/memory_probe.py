"""Child process of case 5: peak memory of one evsim run, in a fresh process.

    python bench/memory_probe.py WEIGHTS CONV_MODE BATCH [--dtype float32]

Prints one JSON document. A fresh process is needed because the peak
resident set size (VmHWM, ``ru_maxrss``) is a high-water mark of the whole process:
only a process that has not run anything bigger yet shows the run's own
peak as a delta (on Linux the high-water mark is also reset to the current
RSS just before the run, through /proc/self/clear_refs, so the transient
peak of imports and JIT loading does not hide the run's). Steps: import and load the samples -> compile (RSS and
tracemalloc peak of the compile) -> warm-up run of one sample (loads the
JIT cache) -> the run of BATCH samples, once plainly (RSS high-water delta)
and once under tracemalloc (peak of the NumPy arrays the run allocates;
NumPy reports its allocations to tracemalloc, the Numba kernels allocate
nothing).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc


def maxrss_mib() -> float:
    """Peak RSS. VmHWM where /proc has it: ru_maxrss also counts the parent's peak inherited at fork."""
    hwm = status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def status_mib(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("conv_mode", choices=["kernel", "explicit"])
    ap.add_argument("batch", type=int)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import numba
    import numpy as np

    import evsim
    from evsim.datasets import load_fashion_mnist
    from evsim.engine import run
    from evsim.format import read_network

    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    x, _ = load_fashion_mnist("test")
    x = np.ascontiguousarray(x[:a.batch])
    g = read_network(a.weights)
    doc = {"conv_mode": a.conv_mode, "batch": a.batch, "dtype": a.dtype, "threads": a.threads}
    doc["rss_after_import_mib"] = status_mib("VmRSS")

    tracemalloc.start()
    t0 = time.perf_counter()
    net = evsim.compile_network(g, dtype=a.dtype, conv_mode=a.conv_mode)
    doc["compile_s"] = time.perf_counter() - t0
    doc["compile_tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    doc["compiled_nbytes"] = net.nbytes
    doc["rss_after_compile_mib"] = status_mib("VmRSS")

    run(net, x[:1], batch_size=1)                      # JIT cache load, small
    doc["rss_peak_before_run_mib"] = maxrss_mib()
    # the run's own peak: reset the high-water mark to the current RSS where Linux allows it,
    # else fall back to the growth of ru_maxrss (0 when an earlier transient peak was higher)
    doc["peak_reset"] = reset_peak()
    before = status_mib("VmRSS") if doc["peak_reset"] else maxrss_mib()
    t0 = time.perf_counter()
    run(net, x, batch_size=a.batch)
    doc["run_s"] = time.perf_counter() - t0
    after = status_mib("VmHWM") if doc["peak_reset"] else maxrss_mib()
    doc["rss_before_run_mib"] = before
    doc["rss_run_peak_mib"] = after
    doc["rss_run_delta_mib"] = after - before

    tracemalloc.start()
    run(net, x, batch_size=a.batch)
    doc["run_tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
