"""Whole datasets and parameter sweeps: in-process, or on Dask distributed.

:func:`evaluate` runs a network over a whole dataset (:mod:`evsim.data`, read chunk by chunk) and
aggregates what the engine measured; :func:`sweep` does it for every point of a parameter grid.
Both run either in this process or on a Dask cluster (a LocalCluster of worker processes that
:func:`runner` starts, or an existing scheduler):

* the network is read and validated once, here; a worker plugin carries it to each worker once
  (and to any worker that joins or is restarted later); each worker compiles it once per point
  (``timesteps``, ``threshold_scale``) and keeps it, so a chunk ships only its samples;
* the chunks are read here lazily, checked (:func:`evsim.data.check_chunk`: a corrupt chunk is one
  line naming its first bad sample) and submitted a few at a time, so memory stays bounded;
* every chunk runs the same function (:func:`run_chunk`: :func:`evsim.engine.run` on its samples)
  in-process and on a worker, and each sample is simulated on its own, so outputs and per-sample
  counters do not depend on where or in which chunk a sample ran; totals are sums of integers
  (exact in any order) and the report is :func:`evsim.reports.build_report` of those totals, so a
  run is bit for bit the same whatever the number of workers or the chunk size;
* results are keyed by chunk index: a chunk Dask reruns after losing a worker is counted once;
* with ``out``, every finished chunk is kept in ``OUT.partial/`` (one file per chunk, written
  atomically, beside a manifest naming the network, the data, the chunk size and the run's
  settings); the results file is assembled from them at the end, written atomically, and the
  directory removed. A run started again with the same ``out`` skips the chunks already there;
  one with a different network, data or chunk size is refused in one line;
* a sweep with ``out`` keeps ``OUT.partial/`` the same way (:class:`SweepStore`): each finished point as its
  integer totals and predictions (its table row and report are rebuilt from them, bit for bit), the running
  point's finished chunks in a :class:`PartialStore` of its own; a sweep started again skips both and writes
  the table an uninterrupted sweep writes; one with a different network, grid, data or settings is refused.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .errors import EvsimError, InputError

RESULTS_FORMAT = "evsim-eval"
RESULTS_VERSION = 1
PARTIAL_FORMAT = "evsim-eval-partial"
SWEEP_PARTIAL_FORMAT = "evsim-sweep-partial"
POINT_FORMAT = "evsim-sweep-point"
POP_COUNTERS = ("spikes_pos", "spikes_neg")                              # (N, populations)
PROJ_COUNTERS = ("events_in", "synaptic_ops", "macs", "macs_nonzero")    # (N, projections)
COUNTERS = POP_COUNTERS + PROJ_COUNTERS + ("input_events",)
DEFAULT_CHUNK = 256


class EvalError(EvsimError):
    """A dataset run that cannot go on as asked."""


# ------------------------------------------------------------------ network, parameters, fingerprints
def network_key(network) -> str:
    """A digest of everything that defines a network (structure, constants, every weight)."""
    h = hashlib.sha256()
    head = {"timesteps": network.timesteps, "input_shape": list(network.input_shape), "encoding": network.encoding,
            "readout": network.readout, "input_range": network.input_range, "class_names": network.class_names,
            "populations": [[p.name, list(p.shape), p.model, sorted(p.params.items())] for p in network.populations],
            "projections": [[p.name, p.source, p.target, p.kind, list(p.stride), list(p.padding), p.scale]
                            + ([p.pool.to_dict()] if p.pool is not None else [])      # unchanged keys without
                            for p in network.projections]}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for p in network.projections:
        for a in (p.weight, p.bias):
            h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()[:32]


def _timesteps(text: str) -> int:
    from .limits import Limits
    try:
        v = int(text)
    except ValueError:
        raise EvalError(f"timesteps must be a positive integer, got {text!r}") from None
    limit = Limits.from_env().max_timesteps
    if not 1 <= v <= limit:
        raise EvalError(f"timesteps must be between 1 and {limit} (EVSIM_MAX_TIMESTEPS), got {v}")
    return v


def _scale(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise EvalError(f"threshold_scale must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise EvalError(f"threshold_scale must be finite and > 0, got {text!r}")
    return v


def _bits(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise EvalError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise EvalError(f"{name} must be between {lo} and {hi}, got {v}")
        return v
    return parse


# name -> (parse one value, what it does)
PARAMETERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "timesteps": (_timesteps, "the network's T"),
    "threshold_scale": (_scale, "multiplies every population's v_threshold"),
    "weight_bits": (_bits("weight_bits", 2, 16), "quantises the network (evsim quantize) to B-bit weights; runs in int32"),
    "membrane_bits": (_bits("membrane_bits", 4, 32), "with weight_bits: the membranes' width (default 16)"),
}


def parse_params(items: dict[str, Any] | None) -> dict[str, Any]:
    out = {}
    for k, v in (items or {}).items():
        if k not in PARAMETERS:
            raise EvalError(f"unknown parameter {k!r} (known: {', '.join(PARAMETERS)})")
        out[k] = PARAMETERS[k][0](str(v))
    return out


def apply_params(network, params: dict[str, Any]):
    """A copy of ``network`` with the point's parameters applied (the original is left as it is): T and the
    threshold scale first, then, with ``weight_bits``, the post-training quantiser of :mod:`evsim.fixedpoint`
    on the result (the same network ``evsim quantize`` would write)."""
    if not params:
        return network
    if "membrane_bits" in params and "weight_bits" not in params:
        raise EvalError("membrane_bits goes with weight_bits (it is a width of the quantised network)")
    if "weight_bits" in params and network.fixed_point is not None:
        raise EvalError("weight_bits quantises a real-valued network; this one is fixed point already")
    pops = list(network.populations)
    if "threshold_scale" in params:
        s = float(params["threshold_scale"])
        pops = [dataclasses.replace(p, params={k: (v * s if k == "v_threshold" else v) for k, v in p.params.items()})
                for p in pops]
    net = dataclasses.replace(network, populations=pops, timesteps=int(params.get("timesteps", network.timesteps)))
    try:
        net.validate(values=False)
    except EvsimError:
        raise
    except ValueError as e:
        raise EvalError(f"parameters {params}: {e}") from None
    if "weight_bits" in params:
        from .fixedpoint import quantize
        net = quantize(net, int(params["weight_bits"]), membrane_bits=int(params.get("membrane_bits", 16)))
    return net


# ------------------------------------------------------------------ the chunk function (here and on workers)
_NETWORKS: dict[str, Any] = {}                 # key -> Network, set by the plugin on a worker
_COMPILED: "OrderedDict[tuple, Any]" = OrderedDict()
_KEEP_COMPILED = 2


def _compiled(key: str, params: tuple, dtype: str, conv_mode: str):
    from .compiler import compile_network
    ck = (key, params, dtype, conv_mode)
    net = _COMPILED.get(ck)
    if net is None:
        try:
            network = _NETWORKS[key]
        except KeyError:
            raise EvalError(f"network {key} is not installed on this worker") from None
        net = compile_network(apply_params(network, dict(params)), dtype=dtype, conv_mode=conv_mode)
        _COMPILED[ck] = net
        while len(_COMPILED) > _KEEP_COMPILED:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(ck)
    return net


def run_chunk(key: str, params: tuple, dtype: str, conv_mode: str, threads: int | None, batch_size: int,
              x: np.ndarray) -> dict[str, np.ndarray]:
    """Simulate one chunk: its outputs and every per-sample counter, as (n, populations/projections) arrays."""
    from .engine import run
    net = _compiled(key, params, dtype, conv_mode)
    res = run(net, x, batch_size=batch_size, threads=threads)
    c = res.counters
    n = len(res.outputs)
    out = {"outputs": np.ascontiguousarray(res.outputs)}
    for kind in POP_COUNTERS:
        d = getattr(c, kind)
        out[kind] = np.array([d[p.name] for p in net.populations], dtype=np.int64).T.reshape(n, -1).copy()
    for kind in PROJ_COUNTERS:
        d = getattr(c, kind)
        out[kind] = np.array([d[p.name] for p in net.reported_projections], dtype=np.int64).T.reshape(n, -1).copy()
    out["input_events"] = (np.zeros(n, np.int64) if c.input_events is None
                           else np.asarray(c.input_events, dtype=np.int64).copy())
    return out


try:        # the plugin needs distributed; without it only in-process runs exist
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:          # pragma: no cover - distributed is an extra
    _WorkerPlugin = object


class NetworkPlugin(_WorkerPlugin):
    """Carries one network to every worker, once (Dask also hands it to workers that join later)."""

    def __init__(self, key: str, network):
        self.key, self.network = key, network
        self.name = f"evsim-network-{key}"

    def setup(self, worker=None):
        _NETWORKS[self.key] = self.network

    def teardown(self, worker=None):
        _NETWORKS.pop(self.key, None)
        for ck in [ck for ck in _COMPILED if ck[0] == self.key]:
            del _COMPILED[ck]


# ------------------------------------------------------------------ runners: in-process and Dask
class InProcessRunner:
    """Runs the chunks one after another in this process."""

    workers = 0
    where = "in-process"

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def install(self, key, network):
        _NETWORKS[key] = network

    def close(self):
        pass

    def map(self, fn, jobs: Iterator[tuple[int, tuple]]) -> Iterator[tuple[int, Any]]:
        for idx, args in jobs:
            yield idx, fn(*args)


class DaskRunner:
    """Runs the chunks on a Dask cluster, a bounded number in flight; results keyed by chunk index."""

    def __init__(self, client, threads: int | None = None, where: str = "dask"):
        self.client, self.threads, self.where = client, threads, where
        self.workers = len(client.scheduler_info().get("workers", {}))
        self.installed: set[str] = set()

    def install(self, key, network):
        """Send the network to every worker, once per runner (a sweep's points reuse it)."""
        if key not in self.installed:
            self.client.register_plugin(NetworkPlugin(key, network), name=f"evsim-network-{key}")
            self.installed.add(key)

    def close(self):
        """Take the networks off the workers (an existing cluster keeps nothing of this run)."""
        for key in sorted(self.installed):
            with contextlib.suppress(Exception):
                self.client.unregister_worker_plugin(f"evsim-network-{key}")
        self.installed.clear()

    def map(self, fn, jobs):
        from distributed import as_completed
        slots = max(2, 2 * sum(self.client.nthreads().values()))
        run_id = uuid.uuid4().hex[:12]
        pending = as_completed()
        index = {}
        error = None

        def submit_next() -> bool:
            nonlocal error
            if error is not None:
                return False
            try:
                idx, args = next(jobs)
            except StopIteration:
                return False
            except EvsimError as e:        # a corrupt chunk: stop submitting, keep what is in flight
                error = e
                return False
            fut = self.client.submit(fn, *args, key=f"evsim-chunk-{run_id}-{idx}", pure=False, retries=0)
            index[fut.key] = idx
            pending.add(fut)
            return True

        for _ in range(slots):
            if not submit_next():
                break
        try:
            for fut in pending:
                idx = index.pop(fut.key)
                try:
                    res = fut.result()
                finally:
                    fut.release()
                yield idx, res
                submit_next()
        except BaseException:
            for f in list(pending.futures):
                f.cancel()
            raise
        if error is not None:
            raise error


def local_cluster_threads(workers: int) -> int:
    """Engine threads per worker process so that N workers do not oversubscribe the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


@contextlib.contextmanager
def runner(workers: int | None = None, scheduler: str | None = None, threads: int | None = None, client=None):
    """The runner a run asks for: in-process (default), a LocalCluster of ``workers`` processes, an existing
    ``scheduler``, or a ``client`` the caller holds."""
    if client is not None:
        run = DaskRunner(client, threads, "dask client")
        try:
            yield run
        finally:
            run.close()
        return
    if workers is None and scheduler is None:
        yield InProcessRunner(threads)
        return
    if workers is not None and scheduler is not None:
        raise EvalError("give --workers (a cluster on this machine) or --scheduler (an existing one), not both")
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise EvalError("--workers and --scheduler need Dask: pip install 'evsim[distributed]'") from None
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise EvalError(f"cannot connect to the Dask scheduler at {scheduler} ({str(e).splitlines()[0]})") \
                from None
        with c:
            run = DaskRunner(c, threads, f"scheduler {scheduler}")
            try:
                yield run
            finally:
                run.close()
        return
    per = threads or local_cluster_threads(workers)
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive"), "NUMBA_NUM_THREADS": str(per),
           "OMP_NUM_THREADS": "1"}
    # Everything on loopback: the scheduler's HTTP server (dashboard, health and metrics pages), which Dask
    # starts even without a dashboard, would otherwise listen on every interface (":0" binds 0.0.0.0). No
    # statistical profiler in the workers: a thread that samples the engine thread's stack every 10 ms, for
    # a dashboard evsim does not show.
    import dask
    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         silence_logs=logging.ERROR, env=env) as cluster, Client(cluster) as c:
        yield DaskRunner(c, per, f"{workers} local worker process{'es' if workers > 1 else ''}, {per} thread(s) each")
        # the cluster ends here: nothing to take off its workers


# ------------------------------------------------------------------ progress
class Progress:
    """Chunks done, samples, samples/s and an ETA on stderr: redrawn in place on a TTY, else a line every ~5 s."""

    def __init__(self, total: int, chunks: int, enabled: bool, label: str = "eval", stream=None):
        self.stream = stream or sys.stderr
        self.enabled, self.total, self.chunks, self.label = enabled, total, chunks, label
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.done = self.done_chunks = self.resumed = 0
        self.last = 0.0

    def skip(self, n: int):
        self.done += n
        self.resumed += n
        self.done_chunks += 1

    def update(self, n: int):
        self.done += n
        self.done_chunks += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        if not self.tty and now - self.last < 5 and self.done < self.total:
            return
        self.last = now
        el = now - self.t0
        rate = (self.done - self.resumed) / el if el > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if math.isfinite(left) else "--:--:--"
        text = (f"{self.label}: {self.done_chunks}/{self.chunks} chunks, {self.done}/{self.total} samples, "
                f"{rate:.1f} samples/s, ETA {eta}")
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty and self.done_chunks:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------ partial results (resume)

def _open_partial_dir(store, out, fmt: str, keys: tuple, force: bool) -> None:
    """Open ``store.dir`` for ``store.manifest``: resume one made with the same ``keys``, refuse (or, with
    ``force``, discard) one made otherwise, create it when absent. One line for every refusal."""
    from .files import open_regular
    d = store.dir
    if os.path.lexists(d):
        if os.path.islink(d) or not d.is_dir():
            raise EvalError(f"{d}: exists and is not a directory of partial results")
        try:
            with open_regular(d / "manifest.json", "partial results manifest") as f:
                old = json.loads(f.read(1 << 20).decode("utf-8"))
            if not isinstance(old, dict) or old.get("format") != fmt:
                raise ValueError("not an evsim manifest")
        except (EvsimError, ValueError, UnicodeDecodeError) as e:
            raise EvalError(f"{d}: not evsim partial results ({str(e).splitlines()[0]}); "
                            f"remove it to start over") from None
        new = json.loads(json.dumps(store.manifest, sort_keys=True))
        differ = [k for k in keys if old.get(k) != new.get(k)]
        if differ:
            if not force:
                raise EvalError(f"{out}: cannot resume, the partial results in {d} were made with a "
                                f"different {', '.join(k.replace('_', ' ') for k in differ)} (pass --force to "
                                f"discard them and start over)")
            store.remove()
    if not os.path.lexists(d):
        try:
            os.mkdir(d)
        except OSError as e:
            raise EvalError(f"{d}: cannot create ({e.strerror})") from None
        store._write("manifest.json", json.dumps(store.manifest, indent=1, sort_keys=True).encode())


def _remove_known(d: Path, subdirs: str | None = None) -> None:
    """Remove what evsim wrote in ``d`` (its manifest, chunk/point files, temporaries; with ``subdirs``, the
    directories of partial results whose names start so), then ``d`` if nothing else is left."""
    if os.path.islink(d) or not d.is_dir():
        return
    for p in d.iterdir():
        if subdirs and p.name.startswith(subdirs) and p.name.endswith(".partial") and not p.is_symlink() \
                and p.is_dir():
            _remove_known(p)
        elif p.is_file() and not p.is_symlink() and (
                p.name == "manifest.json" or p.name.endswith(".tmp")
                or (p.name.startswith(("chunk-", "point-")) and p.name.endswith(".npz"))):
            p.unlink()
    with contextlib.suppress(OSError):
        d.rmdir()


class PartialStore:
    """``OUT.partial/``: a manifest and one ``chunk-XXXXXXXX.npz`` per finished chunk, each written atomically."""

    KEYS = ("network", "params", "data", "labels", "samples", "chunk_size", "dtype", "conv_mode")

    def __init__(self, out: Path, manifest: dict, force: bool):
        self.dir = Path(str(out) + ".partial")
        self.manifest = manifest
        # a fixed-point run's outputs are int64 sums over T (evsim.engine.output_dtype), a real run's its float type
        self.outputs_dtype = np.dtype(np.int64 if manifest["dtype"] in ("int16", "int32") else manifest["dtype"])
        _open_partial_dir(self, out, PARTIAL_FORMAT, self.KEYS, force)

    def _write(self, name: str, data: bytes):
        from .files import atomic_write
        with atomic_write(self.dir / name, force=True, what="partial results") as f:
            f.write(data)

    def chunk_path(self, idx: int) -> Path:
        return self.dir / f"chunk-{idx:08d}.npz"

    def save(self, idx: int, res: dict):
        buf = io.BytesIO()
        np.savez(buf, **res)
        self._write(self.chunk_path(idx).name, buf.getvalue())

    def load(self, idx: int, n: int, n_out: int, n_pop: int, n_proj: int) -> dict | None:
        """A finished chunk, or None when absent or not what this run would have written (it is then rerun)."""
        from .files import open_regular
        p = self.chunk_path(idx)
        if not os.path.lexists(p):
            return None
        want = {"outputs": (n, n_out), "input_events": (n,), **{k: (n, n_pop) for k in POP_COUNTERS},
                **{k: (n, n_proj) for k in PROJ_COUNTERS}}
        try:
            with open_regular(p, "partial chunk") as f, np.load(f, allow_pickle=False) as z:
                res = {k: z[k] for k in want}
        except Exception:                       # noqa: BLE001 - any unreadable chunk is simply rerun
            return None
        for k, shape in want.items():
            if res[k].shape != shape or (k != "outputs" and res[k].dtype != np.int64) or \
                    (k == "outputs" and res[k].dtype != self.outputs_dtype):
                return None
        return res

    def remove(self):
        _remove_known(self.dir)


class SweepStore:
    """``TABLE.partial/`` of a sweep: a manifest (network, grid, data, labels, chunk size, settings); per finished
    point a ``point-NNNN.npz`` (its integer totals, predictions and timing: all its table row needs); per running
    point a ``point-NNNN.partial/`` of finished chunks (a :class:`PartialStore`)."""

    KEYS = ("network", "grid", "data", "labels", "samples", "chunk_size", "dtype", "conv_mode")

    def __init__(self, out, manifest: dict, force: bool):
        self.dir = Path(str(out) + ".partial")
        self.manifest = manifest
        _open_partial_dir(self, out, SWEEP_PARTIAL_FORMAT, self.KEYS, force)

    _write = PartialStore._write

    def point(self, i: int) -> Path:
        """The base of point ``i``'s files: ``point-NNNN.npz`` when done, ``point-NNNN.partial/`` while running."""
        return self.dir / f"point-{i:04d}"

    def remove(self):
        _remove_known(self.dir, subdirs="point-")


def _save_point(path: Path, manifest: dict, preds: np.ndarray, totals: dict, seconds: float,
                samples_per_s: float | None, where: str) -> None:
    """A finished sweep point, written atomically: what its row and report are rebuilt from, bit for bit."""
    from .files import atomic_write
    meta = {"format": POINT_FORMAT, "manifest": manifest, "seconds": seconds, "samples_per_s": samples_per_s,
            "where": where}
    buf = io.BytesIO()
    np.savez(buf, predictions=preds, meta=np.array(json.dumps(meta, sort_keys=True)),
             **{"total_" + k: np.asarray(v, dtype=np.int64) for k, v in totals.items()})
    with atomic_write(path, force=True, what="partial results") as f:
        f.write(buf.getvalue())


def _load_point(path: Path, manifest: dict, n: int, n_pop: int, n_proj: int) -> tuple | None:
    """(predictions, totals, meta) of a finished point made with ``manifest``; None when absent or not that
    (the point is then run again)."""
    from .files import open_regular
    if not os.path.lexists(path):
        return None
    want = {"input_events": (), **{k: (n_pop,) for k in POP_COUNTERS}, **{k: (n_proj,) for k in PROJ_COUNTERS}}
    try:
        with open_regular(path, "sweep point") as f, np.load(f, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            preds = z["predictions"]
            totals = {k: z["total_" + k] for k in want}
    except Exception:                           # noqa: BLE001 - an unreadable point is simply rerun
        return None
    if not isinstance(meta, dict) or meta.get("format") != POINT_FORMAT or \
            meta.get("manifest") != json.loads(json.dumps(manifest, sort_keys=True)):
        return None
    if preds.shape != (n,) or preds.dtype != np.int64 or \
            any(totals[k].shape != s or totals[k].dtype != np.int64 for k, s in want.items()):
        return None
    totals["input_events"] = np.int64(totals["input_events"])
    return preds, totals, meta


# ------------------------------------------------------------------ aggregation and report
@dataclass
class EvalResult:
    report: Any                       # evsim.reports.Report of the totals
    samples: int
    chunks: int
    chunks_resumed: int
    seconds: float
    samples_per_s: float | None       # over the samples computed in this run
    predictions: np.ndarray
    labels: np.ndarray | None = None
    accuracy: float | None = None
    correct: int | None = None
    confusion: np.ndarray | None = None
    totals: dict[str, np.ndarray] = field(default_factory=dict)   # integer sums over all samples
    per_sample: dict[str, np.ndarray] | None = None               # keep_samples: every sample's arrays
    out: str | None = None
    where: str = "in-process"
    params: dict = field(default_factory=dict)


def _report(net, totals: dict, n: int, energy: str, mac_basis: str):
    """build_report on the integer totals: the same float arithmetic as on the whole per-sample result."""
    from .engine import Counters, SimulationResult
    from .reports import build_report
    c = Counters(input_events=np.array([totals["input_events"]], dtype=np.int64))
    for kind, items in ((k, net.populations) for k in POP_COUNTERS):
        getattr(c, kind).update({p.name: np.array([totals[kind][i]], dtype=np.int64) for i, p in enumerate(items)})
    for kind in PROJ_COUNTERS:
        getattr(c, kind).update({p.name: np.array([totals[kind][i]], dtype=np.int64)
                                 for i, p in enumerate(net.reported_projections)})
    from .engine import output_dtype
    outputs = np.broadcast_to(np.zeros((1, net.n_outputs), dtype=output_dtype(net)), (n, net.n_outputs))
    return build_report(net, SimulationResult(outputs=outputs, counters=c, timesteps=net.network.timesteps),
                        energy, mac_basis)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _labels(labels, src, n: int, data) -> tuple[np.ndarray | None, str | None]:
    """The first ``n`` labels (int64) and what identifies them in a manifest."""
    from .data import load_labels
    if labels is not None and src.labels is not None and isinstance(data, str):
        raise EvalError("--labels goes with a data file; a dataset by name brings its own")
    if labels is None:
        y = None if src.labels is None else np.asarray(src.labels, dtype=np.int64)[:n]
        return y, None if y is None else "dataset"
    if isinstance(labels, (str, os.PathLike)):
        y = load_labels(str(labels), len(src))[:n]
        return y, f"{labels} sha256:{hashlib.sha256(y.tobytes()).hexdigest()[:32]}"
    y = np.asarray(labels).reshape(-1)
    if len(y) < n or y.dtype.kind not in "iu":
        raise InputError(f"labels must be {n} integers, one per sample; got shape {y.shape}, dtype {y.dtype}")
    y = y[:n].astype(np.int64)
    return y, f"array sha256:{hashlib.sha256(y.tobytes()).hexdigest()[:32]}"


def evaluate(weights, data, labels=None, *, runner_=None, workers: int | None = None, scheduler: str | None = None,
             client=None, chunk_size: int = DEFAULT_CHUNK, out: str | os.PathLike | None = None, force: bool = False,
             dtype: str = "float32", conv_mode: str = "kernel", threads: int | None = None,
             progress: bool | None = None, energy: str = "45nm-fp32", mac_basis: str = "nonzero",
             params: dict | None = None, keep_samples: bool = False, batch_size: int = 256,
             on_chunk: Callable[[int, int], None] | None = None, limit: int | None = None,
             _network_key: str | None = None, _label: str = "eval", _point: Path | None = None) -> EvalResult:
    """Run ``weights`` (a path or a :class:`~evsim.graph.Network`) over ``data`` (a spec for
    :func:`evsim.data.open_data`, a :class:`~evsim.data.DataSource` or an array).

    ``labels``: a spec for :func:`evsim.data.load_labels` or an array (a dataset by name brings its own).
    ``workers`` / ``scheduler`` / ``client``: where the chunks run (default: here). ``out``: the results
    file (HDF5; resumable, see the module docstring). ``keep_samples``: also return every sample's outputs
    and counters in memory. ``on_chunk(index, done)`` is called after each chunk (tests).
    """
    from .data import ArraySource, DataSource, check_chunk, open_data
    from .files import check_writable_target
    from .format import read_network
    from .reports import energy_model, _check_basis

    energy_model(energy)
    _check_basis(mac_basis)
    if chunk_size < 1:
        raise EvalError("chunk size must be at least 1")
    params = parse_params(params)
    network = read_network(weights) if isinstance(weights, (str, os.PathLike)) else weights
    key = _network_key or network_key(network)
    point = apply_params(network, params)
    from .compiler import engine_dtype
    dtype = engine_dtype(point, dtype, explicit=False)   # a fixed-point point runs in int32 (int16 if asked)
    if out is not None:
        out = check_writable_target(out, force, "results file")
    own_source = isinstance(data, (str, os.PathLike))
    src = open_data(str(data)) if own_source else data if isinstance(data, DataSource) else ArraySource(data)
    try:
        n = len(src) if limit is None else min(limit, len(src))
        lead = (point.timesteps,) if point.encoding == "spikes" else ()
        if src.sample_shape != lead + tuple(point.input_shape):
            raise InputError(f"{src.name}: samples of shape {src.sample_shape} do not fit the network (expected "
                             f"{lead + tuple(point.input_shape)}" + (f" with T={point.timesteps}" if lead else "") + ")")
        y, labels_id = _labels(labels, src, n, data)
        from .limits import Limits
        Limits.from_env().check_bytes(f"a chunk of {chunk_size} samples of shape {src.sample_shape}",
                                      chunk_size * math.prod(src.sample_shape) * 8)
        with contextlib.ExitStack() as stack:
            run = runner_ if runner_ is not None else stack.enter_context(runner(workers, scheduler, threads, client))
            return _evaluate(run, network, point, key, params, src, y, labels_id, n, chunk_size, out, force, dtype,
                             conv_mode, progress, energy, mac_basis, keep_samples, batch_size, on_chunk,
                             check_chunk, weights, _label, _point)
    finally:
        if own_source:
            src.close()


def _evaluate(run, network, point, key, params, src, y, labels_id, n, chunk_size, out, force, dtype, conv_mode,
              progress, energy, mac_basis, keep_samples, batch_size, on_chunk, check_chunk, weights,
              label, point_base=None) -> EvalResult:
    """One run over the data. ``point_base`` (a sweep's, see :class:`SweepStore`): its finished chunks are kept in
    ``point_base.partial/``; when the whole point is done, its totals in ``point_base.npz``, and a point found
    there finished is not run again: its result is rebuilt from those integers."""
    from .compiler import compile_network
    _NETWORKS.setdefault(key, network)        # the client's copy: compiles the point for its report
    net = _compiled(key, tuple(sorted(params.items())), dtype, conv_mode) if isinstance(run, InProcessRunner) \
        else compile_network(point, dtype=dtype, conv_mode=conv_mode)
    n_out, n_pop, n_proj = net.n_outputs, len(net.populations), len(net.reported_projections)
    if y is not None:
        bad = (y < 0) | (y >= n_out)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"label {int(y[i])} of sample {i} is not a class of the network (0..{n_out - 1})")
    spans = _chunks(n, chunk_size)
    manifest = {"format": PARTIAL_FORMAT, "version": 1, "network": key, "params": params,
                "data": src.fingerprint() + (f" limit={n}" if n != len(src) else ""), "labels": labels_id,
                "samples": n, "chunk_size": chunk_size, "dtype": dtype, "conv_mode": conv_mode,
                "n_outputs": n_out, "populations": [p.name for p in net.populations],
                "projections": [p.name for p in net.reported_projections]}
    prog = Progress(n, len(spans), sys.stderr.isatty() if progress is None else progress, label)
    if point_base is not None:
        if keep_samples or out is not None:
            raise EvalError("a sweep point keeps its totals only (no keep_samples, no out)")
        finished = _load_point(Path(str(point_base) + ".npz"), manifest, n, n_pop, n_proj)
        if finished is not None:
            preds, totals, meta = finished
            for s, e in spans:
                prog.skip(e - s)
            prog.close()
            _remove_known(Path(str(point_base) + ".partial"))          # a leftover, if any
            return _result(net, totals, preds, y, n, len(spans), len(spans), meta["seconds"], meta["samples_per_s"],
                           None, meta["where"], params, energy, mac_basis)
    store = PartialStore(out if point_base is None else point_base, manifest, force) \
        if out is not None or point_base is not None else None

    totals = {k: np.zeros(n_pop, np.int64) for k in POP_COUNTERS}
    totals.update({k: np.zeros(n_proj, np.int64) for k in PROJ_COUNTERS})
    totals["input_events"] = np.int64(0)
    preds = np.full(n, -1, dtype=np.int64)
    kept: dict[int, dict] = {}
    done: set[int] = set()

    def add(idx: int, res: dict):
        if idx in done:               # a rerun chunk is counted once (cannot happen through as_completed)
            return
        done.add(idx)
        s, e = spans[idx]
        preds[s:e] = res["outputs"].argmax(1)
        for k in POP_COUNTERS + PROJ_COUNTERS:
            totals[k] += res[k].sum(axis=0, dtype=np.int64)
        totals["input_events"] += res["input_events"].sum(dtype=np.int64)
        if keep_samples:
            kept[idx] = res

    resumed = 0
    if store is not None:
        for idx, (s, e) in enumerate(spans):
            res = store.load(idx, e - s, n_out, n_pop, n_proj)
            if res is not None:
                add(idx, res)
                prog.skip(e - s)
                resumed += 1
    todo = [i for i in range(len(spans)) if i not in done]
    params_t = tuple(sorted(params.items()))
    bsz = max(1, min(batch_size, chunk_size))

    def jobs():
        for idx in todo:
            s, e = spans[idx]
            x = src.read(s, e)
            check_chunk(point, x, idx, s, src.name)
            yield idx, (key, params_t, dtype, conv_mode, run.threads, bsz, x)

    t0 = time.perf_counter()
    computed = 0
    run.install(key, network)
    try:
        for idx, res in run.map(run_chunk, jobs()):
            if store is not None:
                store.save(idx, res)
            add(idx, res)
            computed += spans[idx][1] - spans[idx][0]
            prog.update(spans[idx][1] - spans[idx][0])
            if on_chunk is not None:
                on_chunk(idx, len(done))
    finally:
        prog.close()
    seconds = time.perf_counter() - t0
    if len(done) != len(spans):                           # pragma: no cover - map raises first
        raise EvalError(f"only {len(done)} of {len(spans)} chunks finished")
    result = _result(net, totals, preds, y, n, len(spans), resumed, seconds,
                     computed / seconds if computed and seconds > 0 else None, out, run.where, params, energy,
                     mac_basis)
    if keep_samples:
        result.per_sample = {k: np.concatenate([kept[i][k] for i in range(len(spans))]) for k in kept[0]}
    if point_base is not None:
        _save_point(Path(str(point_base) + ".npz"), manifest, preds, totals, seconds, result.samples_per_s, run.where)
        store.remove()
    elif store is not None:
        _write_results(out, force, result, net, store, spans, manifest, weights, src.name, energy, mac_basis)
        store.remove()
    return result


def _result(net, totals, preds, y, n, chunks, resumed, seconds, samples_per_s, out, where, params, energy,
            mac_basis) -> EvalResult:
    """The result of a run from its integer totals and predictions (the report, accuracy and confusion matrix are
    functions of these alone: a point rebuilt from its saved integers is the point that was run)."""
    n_out = net.n_outputs
    result = EvalResult(report=_report(net, totals, n, energy, mac_basis), samples=n, chunks=chunks,
                        chunks_resumed=resumed, seconds=seconds, samples_per_s=samples_per_s, predictions=preds,
                        labels=y, totals=totals, out=None if out is None else str(out), where=where, params=params)
    if y is not None:
        result.correct = int((preds == y).sum())
        result.accuracy = result.correct / n
        conf = np.zeros((n_out, n_out), dtype=np.int64)
        np.add.at(conf, (y, preds), 1)
        result.confusion = conf
    return result


def _write_results(out, force, result, net, store, spans, manifest, weights, data_name, energy, mac_basis):
    """One HDF5 file: every sample's predictions, labels, outputs and counters, and the aggregated report."""
    import h5py

    from .files import atomic_write
    n, n_out = result.samples, net.n_outputs
    cols = {k: len(net.populations) for k in POP_COUNTERS}
    cols.update({k: len(net.reported_projections) for k in PROJ_COUNTERS})
    rep = result.report
    with atomic_write(out, force=force, what="results file") as fobj, h5py.File(fobj, "w") as f:
        f.attrs["format"] = RESULTS_FORMAT
        f.attrs["format_version"] = RESULTS_VERSION
        f.attrs["weights"] = str(weights) if isinstance(weights, (str, os.PathLike)) else "<network>"
        f.attrs["data"] = data_name
        f.attrs["samples"] = n
        f.attrs["manifest"] = json.dumps(manifest, sort_keys=True)
        f.attrs["report"] = json.dumps(rep.to_dict(), sort_keys=True)
        str_t = h5py.string_dtype("utf-8")
        f.create_dataset("populations", data=np.array([p.name for p in net.populations], dtype=object), dtype=str_t)
        f.create_dataset("projections", data=np.array([p.name for p in net.reported_projections], dtype=object), dtype=str_t)
        s = f.create_group("samples")
        s.attrs["note"] = ("row i = sample i of the data; spikes_* columns follow /populations, the other counters "
                           "/projections (macs: every input position, macs_nonzero: non-zero inputs only)")
        s.create_dataset("predictions", data=result.predictions)
        if result.labels is not None:
            s.create_dataset("labels", data=result.labels)
        from .engine import output_dtype
        ds = {"outputs": s.create_dataset("outputs", (n, n_out), dtype=output_dtype(net)),
              "input_events": s.create_dataset("input_events", (n,), dtype=np.int64)}
        for k, c in cols.items():
            ds[k] = s.create_dataset(k, (n, c), dtype=np.int64)
        for idx, (a, b) in enumerate(spans):
            res = store.load(idx, b - a, n_out, cols["spikes_pos"], cols["events_in"])
            if res is None:
                raise EvalError(f"{store.dir}: chunk {idx} disappeared before the results were written")
            for k, d in ds.items():
                d[a:b] = res[k]
        r = f.create_group("report")
        r.attrs["energy_model"] = energy
        r.attrs["mac_basis"] = mac_basis
        t = rep.totals
        for k in ("firing_rate", "synaptic_ops", "macs", "spikes"):
            r.attrs[k] = t[k]
        r.attrs["energy_snn_uj"] = rep.energy["snn_uj"]
        r.attrs["energy_ann_uj"] = rep.energy["ann_uj"]
        if result.accuracy is not None:
            r.attrs["accuracy"] = result.accuracy
            r.attrs["correct"] = result.correct
            r.create_dataset("confusion", data=result.confusion).attrs["note"] = "rows: label, columns: prediction"
        r.create_dataset("firing_rate", data=np.array([p.firing_rate for p in rep.populations]))
        r.create_dataset("synaptic_ops", data=np.array([p.synaptic_ops for p in rep.projections]))
        r.create_dataset("macs", data=np.array([p.macs for p in rep.projections]))
        tot = r.create_group("totals")
        for k, v in result.totals.items():
            tot.create_dataset(k, data=v)


# ------------------------------------------------------------------ sweeps
def parse_grid(items: Iterable[str]) -> list[tuple[str, list]]:
    """``['timesteps=2,4', 'threshold_scale=0.8,1']`` -> ``[('timesteps', [2, 4]), ('threshold_scale', [0.8, 1.0])]``."""
    grid, seen = [], set()
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise EvalError(f"grid {item!r}: write NAME=V1,V2,... (known names: {', '.join(PARAMETERS)})")
        if name not in PARAMETERS:
            raise EvalError(f"unknown parameter {name!r} in --grid (known: {', '.join(PARAMETERS)})")
        if name in seen:
            raise EvalError(f"parameter {name!r} given twice in --grid")
        seen.add(name)
        grid.append((name, [PARAMETERS[name][0](v.strip()) for v in values.split(",")]))
    if not grid:
        raise EvalError("give at least one --grid NAME=V1,V2,...")
    return grid


@dataclass
class SweepPoint:
    params: dict
    result: EvalResult


def table_base(out) -> str:
    """``out`` without a .csv or .md suffix: the tables are BASE.csv and BASE.md, the partial results BASE.partial/."""
    base = str(out)
    for suf in (".csv", ".md"):
        if base.lower().endswith(suf):
            return base[:-len(suf)]
    return base


def sweep(weights, data, grid: list[tuple[str, list]], labels=None, *, workers=None, scheduler=None, client=None,
          chunk_size=DEFAULT_CHUNK, dtype="float32", conv_mode="kernel", threads=None, progress=None,
          energy="45nm-fp32", mac_basis="nonzero", limit=None, on_point=None, on_chunk=None, out=None, force=False,
          title: str | Callable[[list], str] = "") -> list[SweepPoint]:
    """Every point of ``grid`` (the product of its values, in order) over the same data and the same cluster.

    ``out``: the table (``OUT.csv`` and ``OUT.md``, written at the end; ``title``: a line, or a function of the
    points giving it). Until then every finished point (its integer totals and predictions) and, within the
    running point, every finished chunk are kept in ``OUT.partial/``; a sweep started again with the same ``out``
    skips them, and its table is the one an uninterrupted run writes (``samples_per_s`` of a point is that of the
    run that computed it). Partial results made with a different network, grid, data, labels, chunk size, dtype
    or convolution mode are refused in one line (``force``: discarded). ``on_point(i, params, result)`` after each
    point and ``on_chunk(i, chunk, done)`` after each chunk of point ``i`` (tests).
    """
    from .data import ArraySource, DataSource, open_data
    from .files import check_writable_target
    from .format import read_network
    network = read_network(weights) if isinstance(weights, (str, os.PathLike)) else weights
    key = network_key(network)
    names = [g[0] for g in grid]
    points = [dict(zip(names, vals)) for vals in itertools.product(*[g[1] for g in grid])]
    for p in points:
        apply_params(network, p)         # refuse a bad point before anything runs
    base = None
    if out is not None:
        base = table_base(out)
        for suf in (".csv", ".md"):
            check_writable_target(base + suf, force, "table")
    rows = []
    with contextlib.ExitStack() as stack:
        if isinstance(data, (str, os.PathLike)):
            src = stack.enter_context(open_data(str(data)))
        else:
            src = data if isinstance(data, DataSource) else ArraySource(data)
        store = None
        if base is not None:
            n = len(src) if limit is None else min(limit, len(src))
            _, labels_id = _labels(labels, src, n, data)
            manifest = {"format": SWEEP_PARTIAL_FORMAT, "version": 1, "network": key,
                        "grid": [[k, list(v)] for k, v in grid], "data": src.fingerprint() + (
                            f" limit={n}" if n != len(src) else ""), "labels": labels_id, "samples": n,
                        "chunk_size": chunk_size, "dtype": dtype, "conv_mode": conv_mode}
            store = SweepStore(base, manifest, force)
        run = stack.enter_context(runner(workers, scheduler, threads, client))
        for i, p in enumerate(points):
            label = "sweep " + " ".join(f"{k}={v:g}" for k, v in p.items()) + f" ({i + 1}/{len(points)})"
            res = evaluate(network, src, labels, runner_=run, chunk_size=chunk_size, dtype=dtype, conv_mode=conv_mode,
                           progress=progress, energy=energy, mac_basis=mac_basis, params=p, limit=limit,
                           _network_key=key, _label=label, _point=None if store is None else store.point(i),
                           on_chunk=None if on_chunk is None else (lambda c, d, i=i: on_chunk(i, c, d)))
            rows.append(SweepPoint(p, res))
            if on_point is not None:
                on_point(i, p, res)
    if base is not None:
        write_table(rows, base, force, title(rows) if callable(title) else title)
        store.remove()
    return rows


TABLE_COLUMNS = ("accuracy", "firing_rate", "synaptic_ops", "macs", "energy_uj", "samples", "samples_per_s")


def sweep_table(points: list[SweepPoint]) -> tuple[list[str], list[list]]:
    names = list(points[0].params) if points else []
    header = names + list(TABLE_COLUMNS)
    rows = []
    for pt in points:
        r, t = pt.result, pt.result.report.totals
        rows.append([pt.params[k] for k in names] + [r.accuracy, t["firing_rate"], t["synaptic_ops"], t["macs"],
                                                      r.report.energy["snn_uj"], r.samples, r.samples_per_s])
    return header, rows


def write_table(points: list[SweepPoint], out: str, force: bool = False, title: str = "") -> tuple[Path, Path]:
    """``OUT.csv`` and ``OUT.md`` (``out`` with or without either suffix), both written atomically."""
    from .files import atomic_write, check_writable_target
    base = table_base(out)
    paths = Path(base + ".csv"), Path(base + ".md")
    for p in paths:
        check_writable_target(p, force, "table")
    header, rows = sweep_table(points)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in r])
    with atomic_write(paths[0], force=force, what="table") as f:
        f.write(buf.getvalue().encode())

    def fmt(k, v):
        if v is None:
            return "-"
        if k == "accuracy" or k == "firing_rate":
            return f"{100 * v:.2f} %"
        if k in ("synaptic_ops", "macs"):
            return f"{v / 1e6:.4f} M"
        if k == "energy_uj":
            return f"{v:.4f}"
        if k == "samples_per_s":
            return f"{v:.1f}"
        return f"{v:g}" if isinstance(v, float) else str(v)
    md = [title] if title else []
    md.append("| " + " | ".join(header).replace("synaptic_ops", "AC per sample").replace("macs", "MAC per sample")
              .replace("energy_uj", "energy per sample (uJ)") + " |")
    md.append("|" + "---|" * len(header))
    for r in rows:
        md.append("| " + " | ".join(fmt(k, v) for k, v in zip(header, r)) + " |")
    with atomic_write(paths[1], force=force, what="table") as f:
        f.write(("\n".join(md) + "\n").encode())
    return paths
