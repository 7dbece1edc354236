"""Event-camera streams as input: read them from untrusted files, bin them into ternary frames.

An event camera emits one event ``(t, x, y, p)`` whenever a pixel's log intensity changes by
more than its contrast threshold: ``t`` in microseconds, ``(x, y)`` the pixel (column, row),
``p`` the polarity (ON: brighter, OFF: darker). ``evsim run --events FILE`` turns a stream into the
spike-encoded input of a network with ``encoding = "spikes"`` and ``input_shape`` ``(1, H, W)`` or
``(2, H, W)`` (docs/FORMAT.md, "Event-stream input"):

* **windows**: each sample's stream is cut into the network's T windows, starting at its first
  event: T equal windows over its span ``[t_first, t_last]`` (the last window closed), or windows
  of ``window_us`` microseconds each (events after the T-th window are dropped and counted);
* **frames**: one channel holds the sign of the net polarity of a pixel's events in the window
  (ON - OFF; equal numbers give 0); two channels hold the OFF events (channel 0) and the ON events
  (channel 1) as separate +1 spikes, channel = polarity bit as in tonic's ``ToFrame``. Several
  events at one pixel in one window merge into one spike: a spike is ternary.

Files (every one a regular file, its size checked against ``EVSIM_MAX_BYTES`` before its data is
read, no pickles; anything wrong is one line, an :class:`~evsim.errors.InputError`):

* ``.npy``: a 1-D NumPy structured array with fields ``t`` (integer or float, microseconds), ``x``,
  ``y`` (integers), ``p`` (bool or integer: 1 = ON, 0 or -1 = OFF, not both 0 and -1) and
  optionally ``sample`` (integer): with it the file holds samples 0 .. N-1, each with at least one
  event, sorted by sample; without it, one sample. Times are non-decreasing within a sample.
* ``.npz``: one stream (no ``sample`` field) per member, samples in the archive's order.
* a directory: one stream per ``.npy`` (or ``.aedat4``) file, samples sorted by file name.
* ``.aedat4`` (iniVation's DV format), when the optional ``aedat`` package is installed
  (``pip install 'evsim[aedat]'``): the events of its first event stream, one sample.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .files import FileError, open_regular, read_npy_header
from .limits import Limits

FIELDS = ("t", "x", "y", "p")
OPTIONAL_FIELDS = ("sample",)
#: a compact dtype for streams evsim writes (the synthetic datasets); any dtype with the fields reads
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
SAMPLE_EVENT_DTYPE = np.dtype([("sample", "<i4"), ("t", "<i4"), ("x", "u1"), ("y", "u1"), ("p", "i1")])
MAX_FILES = 1_000_000       # samples in a directory or archive


@dataclass
class EventStreams:
    """Validated events of N samples, sorted by sample, then time.

    ``t`` is int64 or float64 (microseconds), ``x``, ``y`` int32 (0 <= v < 2**31), ``on`` bool, ``sample`` int64 in
    0 .. n_samples-1 (non-decreasing), ``starts[i]:starts[i+1]`` the events of sample i.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    on: np.ndarray
    sample: np.ndarray
    n_samples: int
    source: str = ""
    sensor: tuple[int, int] | None = None        # (H, W) declared by the file (AEDAT4), if any

    @property
    def starts(self) -> np.ndarray:
        return np.searchsorted(self.sample, np.arange(self.n_samples + 1), side="left")

    def head(self, n: int) -> "EventStreams":
        """The first ``n`` samples."""
        if n >= self.n_samples:
            return self
        end = int(self.starts[n])
        return EventStreams(self.t[:end], self.x[:end], self.y[:end], self.on[:end], self.sample[:end], n,
                            self.source, self.sensor)


@dataclass
class BinStats:
    """What binning did to the events (``evsim run --events`` reports it)."""

    events: int = 0           # events read, in the samples used
    binned: int = 0           # events inside the T windows
    dropped: int = 0          # events after the T-th window (only with window_us)
    spikes: int = 0           # non-zeros of the frames (the network's input_events, summed over samples)
    window_us: float | None = None     # the fixed window, or None (equal windows per sample)
    span_us: list = field(default_factory=list)   # each sample's span t_last - t_first

    def to_dict(self) -> dict:
        spans = np.asarray(self.span_us, dtype=np.float64)
        return {"events": self.events, "binned": self.binned, "dropped_after_last_window": self.dropped,
                "input_spikes": self.spikes, "merged_or_cancelled": self.binned - self.spikes,
                "window_us": self.window_us,
                "mean_span_us": float(spans.mean()) if len(spans) else None}


# ------------------------------------------------------------------------------------------- reading
def _header(f, path: str, what: str):
    """(shape, fortran_order, dtype) of a .npy stream, or one line."""
    shape, fortran, dtype, _ = read_npy_header(f, f"{what} {path}", InputError, " (an .npz archive? give it a .npz name)")
    return shape, fortran, dtype


def _check_dtype(dtype: np.dtype, shape, path: str, what: str, allow_sample: bool) -> None:
    names = dtype.names
    if dtype.hasobject:
        raise InputError(f"{what} {path}: holds Python objects, not numbers")
    if names is None:
        raise InputError(f"{what} {path}: dtype {dtype.str} is not a structured array of events "
                         f"(fields {', '.join(FIELDS)}; see docs/FORMAT.md)")
    missing = [n for n in FIELDS if n not in names]
    if missing:
        raise InputError(f"{what} {path}: no field {', '.join(repr(m) for m in missing)} "
                         f"(events need fields {', '.join(FIELDS)})")
    allowed = FIELDS + (OPTIONAL_FIELDS if allow_sample else ())
    extra = [n for n in names if n not in allowed]
    if extra:
        raise InputError(f"{what} {path}: unknown field {extra[0]!r} (fields: {', '.join(allowed)})")
    kinds = {"t": "iuf", "x": "iu", "y": "iu", "p": "biu", "sample": "iu"}
    for n in names:
        fd = dtype.fields[n][0]
        if fd.subdtype is not None or fd.names is not None or fd.kind not in kinds[n]:
            want = {"iuf": "an integer or float", "iu": "an integer", "biu": "a bool or integer"}[kinds[n]]
            raise InputError(f"{what} {path}: field {n!r} has dtype {fd.str}, not {want} scalar")
    if len(shape) != 1:
        raise InputError(f"{what} {path}: events must be a 1-D array, got shape {tuple(shape)}")


def _read_npy(f, path: str, what: str, size: int | None, allow_sample: bool = True) -> np.ndarray:
    """A structured event array from an open stream whose header is checked before its data."""
    shape, fortran, dtype = _header(f, path, what)
    _check_dtype(dtype, shape, path, what, allow_sample)
    nbytes = math.prod(shape) * dtype.itemsize
    Limits.from_env().check_bytes(f"{what} {path}: {shape[0]} events", nbytes)
    if size is not None:
        held = size - f.tell()
        if held < nbytes:
            raise InputError(f"{what} {path}: truncated (the header declares {nbytes} bytes of events, "
                             f"the file holds {held})")
    try:
        data = f.read(nbytes)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"{what} {path}: cannot read ({detail})") from None
    if len(data) != nbytes:
        raise InputError(f"{what} {path}: truncated (the header declares {nbytes} bytes of events, "
                         f"{len(data)} could be read)")
    return np.frombuffer(data, dtype=dtype, count=shape[0])


def _read_aedat4(path: str, what: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    try:
        import aedat
    except ImportError:
        raise InputError(f"{what} {path}: reading AEDAT4 needs the 'aedat' package "
                         "(pip install 'evsim[aedat]'), or convert it to a .npy of events") from None
    with open_regular(path, what):      # a regular file, before the decoder opens it by name
        pass
    limits = Limits.from_env()
    try:
        dec = aedat.Decoder(path)
        streams = dec.id_to_stream()
        ids = [i for i, s in sorted(streams.items()) if s.get("type") == "events"]
        if not ids:
            raise InputError(f"{what} {path}: the AEDAT4 file holds no event stream")
        sid = ids[0]
        sensor = None
        if "height" in streams[sid] and "width" in streams[sid]:
            sensor = (int(streams[sid]["height"]), int(streams[sid]["width"]))
        parts, total = [], 0
        for packet in dec:
            if packet.get("stream_id") != sid or "events" not in packet:
                continue
            ev = packet["events"]
            total += ev.nbytes
            limits.check_bytes(f"{what} {path}: its events", total)
            parts.append(np.array(ev, copy=True))
    except InputError:
        raise
    except Exception as e:          # the decoder's own errors (RuntimeError, OSError, ...) on a damaged file
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"{what} {path}: cannot read as AEDAT4 ({detail})") from None
    if not parts:
        raise InputError(f"{what} {path}: holds no events")
    ev = np.concatenate(parts)
    if len(ev) and int(ev["t"].max()) > np.iinfo(np.int64).max:
        raise InputError(f"{what} {path}: a time is over 2**63 microseconds")
    out = np.empty(len(ev), EVENT_DTYPE)
    out["t"], out["x"], out["y"] = ev["t"], ev["x"], ev["y"]
    out["p"] = ev["on"].astype(np.int8)
    return out, sensor


def _read_one(path: str, what: str, allow_sample: bool):
    if path.lower().endswith(".aedat4"):
        return _read_aedat4(path, what)
    with open_regular(path, what) as f:
        return _read_npy(f, path, what, os.fstat(f.fileno()).st_size, allow_sample), None


def _read_npz(path: str, what: str) -> list[np.ndarray]:
    with open_regular(path, what) as f:
        try:
            zf = zipfile.ZipFile(f)
            infos = [i for i in zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise InputError(f"{what} {path}: not a readable .npz archive ({str(e) or type(e).__name__})") from None
        if not infos:
            raise InputError(f"{what} {path}: the archive holds no streams")
        if len(infos) > MAX_FILES:
            raise InputError(f"{what} {path}: {len(infos)} members, over the {MAX_FILES} limit")
        limits, total, out = Limits.from_env(), 0, []
        for info in infos:
            name = f"{path}:{info.filename}"
            total += info.file_size
            limits.check_bytes(f"{what} {path}: its members", total)
            try:
                with zf.open(info) as m:
                    out.append(_read_npy(m, name, what, info.file_size, allow_sample=False))
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
                raise InputError(f"{what} {name}: cannot read ({str(e) or type(e).__name__})") from None
        return out


def _validate(arrays: list[np.ndarray], names: list[str], what: str, sensors=None) -> EventStreams:
    """Join per-file arrays (each one sample, or one with a ``sample`` field) and check every event."""
    ts, ons, samples = [], [], []
    n = 0
    for a, name in zip(arrays, names):
        if len(a) == 0:
            raise InputError(f"{what} {name}: holds no events (an empty stream)")
        t = a["t"]
        if t.dtype.kind == "f":
            t = t.astype(np.float64)
            bad = ~np.isfinite(t)
            if bad.any():
                raise InputError(f"{what} {name}: time of event {int(np.argmax(bad))} is {t[bad][0]} (times must "
                                 f"be finite microseconds)")
        else:
            if t.dtype.kind == "u" and t.dtype.itemsize == 8 and int(t.max()) > np.iinfo(np.int64).max:
                raise InputError(f"{what} {name}: a time is over 2**63 microseconds")
            t = t.astype(np.int64)
        p = a["p"]
        if p.dtype.kind == "b":
            on = p.astype(bool)
        else:
            p = p.astype(np.int64) if not (p.dtype.kind == "u" and p.dtype.itemsize == 8) else p
            values = set(np.unique(p).tolist())
            unknown = sorted(values - {-1, 0, 1})
            if unknown:
                raise InputError(f"{what} {name}: unknown polarity value {unknown[0]} (1 = ON, 0 or -1 = OFF)")
            if {0, -1} <= values:
                raise InputError(f"{what} {name}: polarities hold both 0 and -1 (use 1/0 or 1/-1 for ON/OFF)")
            on = p == 1
        if "sample" in (a.dtype.names or ()):
            s = a["sample"]
            if s.dtype.kind == "i" and int(s.min()) < 0:
                raise InputError(f"{what} {name}: negative sample index {int(s.min())}")
            if s.dtype.kind == "u" and s.dtype.itemsize == 8 and int(s.max()) > np.iinfo(np.int64).max:
                raise InputError(f"{what} {name}: sample index over 2**63")
            s = s.astype(np.int64)
            ds = np.diff(s)
            if (ds < 0).any():
                i = int(np.argmax(ds < 0)) + 1
                raise InputError(f"{what} {name}: events not sorted by sample (event {i} is of sample {s[i]} "
                                 f"after sample {s[i - 1]})")
            present = np.unique(s)
            k = int(present[-1]) + 1
            if len(present) != k:          # (k may be huge in a damaged file: no arange(k))
                holes = np.nonzero(present != np.arange(len(present)))[0]
                gap = int(holes[0]) if len(holes) else len(present)
                raise InputError(f"{what} {name}: sample {gap} holds no events (samples are 0 .. {k - 1}; "
                                 f"each needs at least one event)")
            s = s + n
            n += k
        else:
            s = np.full(len(a), n, dtype=np.int64)
            n += 1
        dt = np.diff(t)
        back = (dt < 0) & (np.diff(s) == 0)
        if back.any():
            i = int(np.argmax(back)) + 1
            raise InputError(f"{what} {name}: times not sorted (event {i} at t={t[i]} comes after t={t[i - 1]}; "
                             f"events must be in time order within a sample)")
        ts.append(t), ons.append(on), samples.append(s)
    if n == 0:
        raise InputError(f"{what}: holds no streams")
    if any(t.dtype.kind == "f" for t in ts):
        ts = [t.astype(np.float64) for t in ts]
    t = np.concatenate(ts)
    for name_ in ("x", "y"):
        for a, name in zip(arrays, names):
            v = a[name_]
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= 2 ** 31:
                i = int(np.argmax(v < 0)) if lo < 0 else int(np.argmax(v == hi))
                raise InputError(f"{what} {name}: pixel {name_}={int(v[i])} of event {i} is outside the sensor")
    x = np.concatenate([a["x"].astype(np.int32) for a in arrays])
    y = np.concatenate([a["y"].astype(np.int32) for a in arrays])
    sensor = None
    if sensors:
        known = [s for s in sensors if s is not None]
        sensor = known[0] if known else None
    return EventStreams(t, x, y, np.concatenate(ons), np.concatenate(samples),
                        n, names[0] if len(names) == 1 else f"{len(names)} files", sensor)


def streams_of(events: np.ndarray, source: str, what: str = "events") -> EventStreams:
    """Check an in-memory event array (the fields of a ``.npy`` stream, with or without ``sample``) as
    :func:`read_events` checks a file's, and return its :class:`EventStreams`."""
    return _validate([events], [source], what)


def read_events(path: str | os.PathLike, what: str = "events") -> EventStreams:
    """Read and check an event file (.npy, .npz, .aedat4) or a directory of them; see the module docstring."""
    p = os.fspath(path)
    if os.path.isdir(p):
        files = sorted(e.name for e in os.scandir(p) if e.name.lower().endswith((".npy", ".aedat4")))
        if not files:
            raise InputError(f"{what} {p}: the directory holds no .npy or .aedat4 streams")
        if len(files) > MAX_FILES:
            raise InputError(f"{what} {p}: {len(files)} files, over the {MAX_FILES} limit")
        arrays, sensors, names, total = [], [], [], 0
        limits = Limits.from_env()
        for name in files:
            a, sensor = _read_one(os.path.join(p, name), what, allow_sample=False)
            total += a.nbytes
            limits.check_bytes(f"{what} {p}: its streams", total)
            arrays.append(a), sensors.append(sensor), names.append(os.path.join(p, name))
        return _validate(arrays, names, what, sensors)
    if p.lower().endswith(".npz"):
        arrays = _read_npz(p, what)
        return _validate(arrays, [f"{p}[{i}]" for i in range(len(arrays))], what)
    if not os.path.lexists(p):
        raise FileError(f"{what} file {p}: no such file")
    a, sensor = _read_one(p, what, allow_sample=True)
    return _validate([a], [p], what, [sensor])


# ------------------------------------------------------------------------------------------- binning
def window_index(t: np.ndarray, t0: np.ndarray, t1: np.ndarray, timesteps: int,
                 window_us: int | None) -> np.ndarray:
    """The window of each event (int64; >= timesteps means after the last window).

    ``t0``, ``t1``: the first and last time of each event's sample. Equal windows:
    ``floor((t - t0) * T / (t1 - t0))``, the last time in window T-1, every event in window 0 when
    ``t1 == t0``; fixed windows: ``floor((t - t0) / window_us)``. Integer times are binned exactly
    in integers, float times in float64 with the same formula.
    """
    T = int(timesteps)
    if t.dtype.kind == "f":
        d = t - t0
        if window_us is None:
            span = t1 - t0
            with np.errstate(divide="ignore", invalid="ignore"):
                b = np.where(span > 0, np.floor((d * T) / np.where(span > 0, span, 1.0)), 0.0)
            return np.minimum(b, T - 1).astype(np.int64)
        return np.floor(d / float(window_us)).astype(np.int64)
    d = t - t0
    if window_us is None:
        span = t1 - t0
        b = (d * T) // np.maximum(span, 1)
        return np.minimum(b, T - 1)
    return d // int(window_us)


def bin_events(ev: EventStreams, timesteps: int, channels: int, height: int, width: int,
               window_us: int | None = None, limits: Limits | None = None) -> tuple[np.ndarray, BinStats]:
    """Frames ``(N, T, C, H, W)`` int8 in {-1, 0, 1} from validated events; see the module docstring."""
    if channels not in (1, 2):
        raise InputError(f"event frames have 1 or 2 channels, not {channels}")
    limits = limits or Limits.from_env()
    N, T, C, H, W = ev.n_samples, int(timesteps), channels, int(height), int(width)
    if ev.sensor is not None and tuple(ev.sensor) != (H, W):
        raise InputError(f"events {ev.source}: the sensor is {ev.sensor[1]}x{ev.sensor[0]} (W x H) but the "
                         f"network's input is {W}x{H}")
    for name, v, hi in (("x", ev.x, W), ("y", ev.y, H)):
        if len(v) and int(v.max()) >= hi:
            i = int(np.argmax(v >= hi))
            raise InputError(f"events {ev.source}: pixel {name}={int(v[i])} of event {i} is outside the "
                             f"{W}x{H} sensor (0 <= x < {W}, 0 <= y < {H}, from the network's input_shape)")
    limits.check_bytes(f"event frames of {N} samples x T={T} x {C}x{H}x{W}", N * T * C * H * W)
    starts = ev.starts
    first = ev.t[starts[:-1]]
    last = ev.t[starts[1:] - 1]
    if ev.t.dtype.kind != "f":
        spans = [int(b) - int(a) for a, b in zip(first.tolist(), last.tolist())]
        if max(spans) > (2 ** 62) // (T if window_us is None else 1):
            raise InputError(f"events {ev.source}: a sample spans {max(spans)} us, too long to bin exactly")
    span = (last - first)
    t0 = np.repeat(first, np.diff(starts))
    t1 = np.repeat(last, np.diff(starts))
    b = window_index(ev.t, t0, t1, T, window_us)
    keep = b < T
    stats = BinStats(events=len(ev.t), binned=int(keep.sum()), dropped=int((~keep).sum()),
                     window_us=None if window_us is None else float(window_us),
                     span_us=[float(v) for v in span])
    frames = np.zeros((N, T, C, H, W), dtype=np.int8)
    flat = frames.reshape(-1)
    pix = ev.y.astype(np.int64) * W + ev.x
    base = (ev.sample * T + b) * C
    if C == 1:
        idx = (base * (H * W) + pix)[keep]
        sgn = np.where(ev.on, 1, -1)[keep]
        # several samples at a time, so the counts stay small beside the frames
        step = max(1, (1 << 24) // max(T * H * W, 1))
        sample_k = ev.sample[keep]
        cuts = np.searchsorted(sample_k, np.arange(0, N + step, step))
        for i in range(len(cuts) - 1):
            a, z = cuts[i], cuts[i + 1]
            if a == z:
                continue
            lo = i * step * T * H * W
            net = np.bincount(idx[a:z] - lo, weights=sgn[a:z], minlength=0)
            nz = np.nonzero(net)[0]
            flat[lo + nz] = np.sign(net[nz]).astype(np.int8)
    else:
        chan = np.where(ev.on, 1, 0)
        idx = ((base + chan) * (H * W) + pix)[keep]
        flat[idx] = 1
    stats.spikes = int(np.count_nonzero(flat))
    return frames, stats


def event_input_shape(network) -> tuple[int, int, int]:
    """(C, H, W) of a network that can take event frames, or one line saying why it cannot."""
    shape = tuple(int(s) for s in network.input_shape)
    if network.encoding != "spikes" or len(shape) != 3 or shape[0] not in (1, 2):
        raise InputError(f"--events needs a spike-encoded network with input (1, H, W) or (2, H, W); this one is "
                         f"{network.encoding}-encoded with input {shape}")
    return shape


def load_events_for_network(path, network, window_us: int | None = None, limit: int | None = None):
    """Read ``path`` and bin it for ``network``: (frames (N, T, C, H, W) int8, :class:`BinStats`)."""
    C, H, W = event_input_shape(network)
    ev = read_events(path)
    if limit:
        ev = ev.head(limit)
    return bin_events(ev, network.timesteps, C, H, W, window_us)


def write_events(f, events: np.ndarray) -> None:
    """Write a structured event array to an open binary file as .npy (no pickles)."""
    np.lib.format.write_array(f, np.ascontiguousarray(events), allow_pickle=False)
