"""Event-stream input (evsim/events.py), the simulated event camera (evsim/eventcam.py), and the CLI around them."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from evsim import write_network
from evsim.errors import EvsimError
from evsim.eventcam import CameraConfig, record_image
from evsim.events import EVENT_DTYPE, SAMPLE_EVENT_DTYPE, bin_events, read_events
from evsim.graph import Network, Population, Projection
from test_cli import assert_user_error, invoke, ok

H, W, T = 5, 6, 3


# ------------------------------------------------------------------ a plain-Python reference binner
def reference_frames(streams, timesteps, channels, height, width, window_us=None):
    """streams: list (one per sample) of lists of (t, x, y, on). Loops, Python numbers, no NumPy tricks."""
    out = np.zeros((len(streams), timesteps, channels, height, width), dtype=np.int8)
    for s, events in enumerate(streams):
        t0, t1 = events[0][0], events[-1][0]
        acc = {}
        for t, x, y, on in events:
            if window_us is None:
                if t1 == t0:
                    k = 0
                elif isinstance(t, float):
                    k = min(timesteps - 1, math.floor(((t - t0) * timesteps) / (t1 - t0)))
                else:
                    k = min(timesteps - 1, ((t - t0) * timesteps) // (t1 - t0))
            else:
                k = math.floor((t - t0) / window_us) if isinstance(t, float) else (t - t0) // window_us
            if k >= timesteps:
                continue
            key = (k, y, x)
            pos, neg = acc.get(key, (0, 0))
            acc[key] = (pos + on, neg + (not on))
        for (k, y, x), (pos, neg) in acc.items():
            if channels == 1:
                out[s, k, 0, y, x] = (pos > neg) - (pos < neg)
            else:
                out[s, k, 0, y, x] = 1 if neg else 0
                out[s, k, 1, y, x] = 1 if pos else 0
    return out


@st.composite
def streams(draw):
    floats = draw(st.booleans())
    n = draw(st.integers(1, 3))
    out = []
    for _ in range(n):
        k = draw(st.integers(1, 25))
        if floats:
            ts = sorted(draw(st.lists(st.floats(0, 1e4, allow_nan=False, width=64), min_size=k, max_size=k)))
        else:
            ts = sorted(draw(st.lists(st.integers(0, 10 ** 6), min_size=k, max_size=k)))
        ev = [(t, draw(st.integers(0, W - 1)), draw(st.integers(0, H - 1)), draw(st.booleans())) for t in ts]
        out.append(ev)
    return out


def to_array(streams_, polarity="01"):
    rows = [(s, t, x, y, on) for s, ev in enumerate(streams_) for t, x, y, on in ev]
    floats = any(isinstance(r[1], float) for r in rows)
    dtype = np.dtype([("sample", "<i4"), ("t", "<f8" if floats else "<i8"), ("x", "<i2"), ("y", "u1"),
                      ("p", "i1")])
    a = np.empty(len(rows), dtype)
    off = 0 if polarity == "01" else -1
    for i, (s, t, x, y, on) in enumerate(rows):
        a[i] = (s, t, x, y, 1 if on else off)
    return a


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from([1, 2]), st.one_of(st.none(), st.integers(1, 4000)),
       st.sampled_from(["01", "-11"]), st.integers(1, 5))
def test_binning_matches_reference(tmp_path_factory, s, channels, window, polarity, timesteps):
    path = tmp_path_factory.mktemp("bin") / "e.npy"
    np.save(path, to_array(s, polarity))
    ev = read_events(path)
    frames, stats = bin_events(ev, timesteps, channels, H, W, window)
    want = reference_frames(s, timesteps, channels, H, W, window)
    np.testing.assert_array_equal(frames, want)
    assert stats.events == sum(map(len, s))
    assert stats.spikes == np.count_nonzero(want)
    assert stats.binned + stats.dropped == stats.events
    if window is None:
        assert stats.dropped == 0


def test_npz_and_directory_match_sample_field(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(3):
        a = np.zeros(20, EVENT_DTYPE)
        a["t"] = np.sort(rng.integers(0, 1000, 20))
        a["x"], a["y"], a["p"] = rng.integers(0, W, 20), rng.integers(0, H, 20), rng.integers(0, 2, 20)
        parts.append(a)
    np.savez(tmp_path / "s.npz", *parts)
    d = tmp_path / "dir"
    d.mkdir()
    for i, a in enumerate(parts):
        np.save(d / f"{i:03d}.npy", a)
    joined = np.empty(60, SAMPLE_EVENT_DTYPE)
    for f in ("t", "x", "y", "p"):
        joined[f] = np.concatenate([a[f] for a in parts])
    joined["sample"] = np.repeat(np.arange(3), 20)
    np.save(tmp_path / "joined.npy", joined)
    ref = bin_events(read_events(tmp_path / "joined.npy"), T, 2, H, W)[0]
    for p in (tmp_path / "s.npz", d):
        np.testing.assert_array_equal(bin_events(read_events(p), T, 2, H, W)[0], ref)


# -------------------------------------------------------------- the command line, end to end
def tiny_net(channels, timesteps=T, encoding="spikes", seed=0):
    rng = np.random.default_rng(seed)
    pops = [Population("c1", (3, H, W), "ternary_lif", {"tau": 0.25, "v_threshold": 0.5}),
            Population("h", (8,), "ternary_lif", {"tau": 0.25, "v_threshold": 0.5})]
    projs = [Projection("conv", "input", "c1", "conv2d", rng.normal(0, 0.8, (3, channels, 3, 3)),
                        rng.normal(0, 0.1, 3), (1, 1), (1, 1)),
             Projection("fc1", "c1", "h", "linear", rng.normal(0, 0.5, (8, 3 * H * W)), None),
             Projection("fc2", "h", "readout", "linear", rng.normal(0, 0.5, (4, 8)), rng.normal(0, 0.1, 4))]
    return Network(pops, projs, timesteps, (channels, H, W), encoding=encoding)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("evnets")
    paths = {}
    for c in (1, 2):
        paths[c] = d / f"net{c}.h5"
        write_network(tiny_net(c), paths[c])
    paths["direct"] = d / "direct.h5"
    write_network(tiny_net(1, encoding="direct"), paths["direct"])
    paths[3] = d / "net3.h5"
    write_network(tiny_net(3), paths[3])
    return paths


def random_stream(seed, n_samples=4, per=60, span=5000):
    rng = np.random.default_rng(seed)
    a = np.empty(n_samples * per, SAMPLE_EVENT_DTYPE)
    a["sample"] = np.repeat(np.arange(n_samples), per)
    a["t"] = np.concatenate([np.sort(rng.integers(0, span, per)) for _ in range(n_samples)])
    a["x"], a["y"] = rng.integers(0, W, len(a)), rng.integers(0, H, len(a))
    a["p"] = np.where(rng.random(len(a)) < 0.5, 1, -1)
    return a


@pytest.mark.parametrize("channels,window", [(1, None), (2, None), (2, 1500), (1, 900)])
def test_run_events_equals_run_input_on_the_frames(nets, tmp_path, channels, window):
    a = random_stream(channels)
    np.save(tmp_path / "e.npy", a)
    streams_ = [[(int(r["t"]), int(r["x"]), int(r["y"]), bool(r["p"] == 1)) for r in a[a["sample"] == s]]
                for s in range(4)]
    frames = reference_frames(streams_, T, channels, H, W, window)
    np.save(tmp_path / "frames.npy", frames)
    extra = ["--window-us", window] if window else []
    ev = json.loads(ok(invoke("run", "--weights", nets[channels], "--events", tmp_path / "e.npy", "--json",
                              "--per-sample", *extra)).stdout)
    fr = json.loads(ok(invoke("run", "--weights", nets[channels], "--input", tmp_path / "frames.npy", "--json",
                              "--per-sample")).stdout)
    binning = ev.pop("event_binning")
    for d in (ev, fr):
        d.pop("timing")
    assert ev == fr
    assert binning["events"] == len(a)
    assert binning["input_spikes"] == np.count_nonzero(frames) == round(ev["totals"]["input_events"] * 4)
    assert binning["input_spikes"] < binning["events"]          # merged in a window at a pixel
    text = ok(invoke("run", "--weights", nets[channels], "--events", tmp_path / "e.npy", *extra)).stdout
    assert f"events: {len(a)} read" in text


def test_run_events_limit_and_labels(nets, tmp_path):
    np.save(tmp_path / "e.npy", random_stream(5))
    np.save(tmp_path / "y.npy", np.array([0, 1], dtype=np.int64))
    doc = json.loads(ok(invoke("run", "--weights", nets[2], "--events", tmp_path / "e.npy", "--limit", 2,
                               "--labels", tmp_path / "y.npy", "--json")).stdout)
    assert doc["samples"] == 2 and "accuracy" in doc and doc["event_binning"]["events"] == 120


# ------------------------------------------------------------------------- malformed streams
def _good():
    a = np.zeros(4, EVENT_DTYPE)
    a["t"], a["x"], a["y"], a["p"] = [0, 5, 5, 9], [0, 1, 2, 3], [0, 1, 2, 3], [1, 0, 1, 0]
    return a


def _bad(kind, d):
    a = _good()
    path = d / f"{kind}.npy"
    if kind == "unsorted":
        a["t"] = [0, 9, 5, 10]
    elif kind == "x_outside":
        a["x"][2] = W
    elif kind == "y_outside":
        a["y"][1] = H + 3
    elif kind == "x_negative":
        b = np.zeros(4, [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")])
        b["t"], b["x"], b["y"], b["p"] = a["t"], [0, -1, 0, 0], 0, 1
        a = b
    elif kind == "polarity":
        a["p"][3] = 2
    elif kind == "polarity_mixed":
        b = np.zeros(4, [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
        b["t"], b["p"] = a["t"], [1, 0, -1, 1]
        a = b
    elif kind == "empty":
        a = a[:0]
    elif kind == "plain":
        a = np.zeros((4, 4), np.int64)
    elif kind == "missing_field":
        a = np.zeros(4, [("t", "<i8"), ("x", "<u2"), ("y", "<u2")])
    elif kind == "unknown_field":
        a = np.zeros(4, [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1"), ("q", "i1")])
    elif kind == "float_x":
        a = np.zeros(4, [("t", "<i8"), ("x", "<f4"), ("y", "<u2"), ("p", "i1")])
    elif kind == "nan_time":
        b = np.zeros(4, [("t", "<f8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
        b["t"] = [0, np.nan, 2, 3]
        a = b
    elif kind == "two_d":
        a = np.stack([a, a])
    elif kind == "sample_gap":
        b = np.zeros(4, SAMPLE_EVENT_DTYPE)
        b["sample"] = [0, 0, 2, 2]
        a = b
    elif kind == "sample_unsorted":
        b = np.zeros(4, SAMPLE_EVENT_DTYPE)
        b["sample"] = [0, 1, 0, 1]
        a = b
    elif kind == "object":
        np.save(path, np.array([{"t": 1}], dtype=object), allow_pickle=True)
        return path
    elif kind == "truncated":
        np.save(path, a)
        path.write_bytes(path.read_bytes()[:-5])
        return path
    elif kind == "not_npy":
        path.write_text("t,x,y,p\n0,0,0,1\n")
        return path
    elif kind == "npz_empty":
        path = d / "e.npz"
        np.savez(path)
        return path
    elif kind == "npz_with_sample":
        path = d / "s.npz"
        np.savez(path, np.zeros(3, SAMPLE_EVENT_DTYPE))
        return path
    elif kind == "empty_dir":
        path = d / "empty_dir"
        path.mkdir()
        return path
    elif kind == "missing":
        return d / "nope.npy"
    elif kind == "aedat_garbage":
        path = d / "x.aedat4"
        path.write_bytes(b"#!AER-DAT4.0\r\n" + b"\xff" * 40)
        return path
    np.save(path, a)
    return path


MALFORMED = {
    "unsorted": ["times not sorted", "event 2"],
    "x_outside": ["x=6", "outside", "6x5 sensor"],
    "y_outside": ["y=8", "outside"],
    "x_negative": ["x=-1", "outside the sensor"],
    "polarity": ["unknown polarity value 2"],
    "polarity_mixed": ["both 0 and -1"],
    "empty": ["no events"],
    "plain": ["not a structured array of events"],
    "missing_field": ["no field 'p'"],
    "unknown_field": ["unknown field 'q'"],
    "float_x": ["field 'x'", "not an integer"],
    "nan_time": ["time of event 1 is nan"],
    "two_d": ["1-D"],
    "sample_gap": ["sample 1 holds no events"],
    "sample_unsorted": ["not sorted by sample"],
    "object": ["Python objects"],
    "truncated": ["truncated"],
    "not_npy": ["not a .npy file"],
    "npz_empty": ["holds no streams"],
    "npz_with_sample": ["unknown field 'sample'"],
    "empty_dir": ["holds no .npy or .aedat4"],
    "missing": ["no such file"],
    "aedat_garbage": ["x.aedat4"],
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_stream_is_one_line(nets, tmp_path, kind):
    path = _bad(kind, tmp_path)
    assert_user_error(invoke("run", "--weights", nets[1], "--events", path), *MALFORMED[kind])


def test_aedat4_without_the_package_is_one_line(nets, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "aedat", None)
    path = tmp_path / "rec.aedat4"
    path.write_bytes(b"#!AER-DAT4.0\r\n")
    assert_user_error(invoke("run", "--weights", nets[1], "--events", path), "needs the 'aedat' package")


@pytest.mark.parametrize("net,fragments", [("direct", ["spike-encoded", "direct"]), (3, ["(3, 5, 6)"])])
def test_events_need_a_spike_network_of_one_or_two_channels(nets, tmp_path, net, fragments):
    np.save(tmp_path / "e.npy", _good())
    assert_user_error(invoke("run", "--weights", nets[net], "--events", tmp_path / "e.npy"), *fragments)


def test_events_options(nets, tmp_path):
    np.save(tmp_path / "e.npy", _good())
    assert_user_error(invoke("run", "--weights", nets[1], "--events", tmp_path / "e.npy", "--input",
                             tmp_path / "e.npy"), "exactly one of")
    r = invoke("run", "--weights", nets[1], "--input", tmp_path / "e.npy", "--window-us", 5)
    assert r.exit_code == 2 and "--window-us goes with --events" in r.stderr


def test_mutated_stream_never_crashes(tmp_path):
    good = io.BytesIO()
    np.save(good, random_stream(3, n_samples=2, per=10))
    raw = bytearray(good.getvalue())
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npy"
    outcomes = set()
    for _ in range(300):
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(b)))
            b[i] = int(rng.integers(0, 256)) if rng.random() < 0.8 else b[i] ^ 0x80
        if rng.random() < 0.1:
            b = b[: int(rng.integers(0, len(b)))]
        path.write_bytes(bytes(b))
        try:
            frames, _ = bin_events(read_events(path), T, 2, H, W)
            assert frames.dtype == np.int8 and set(np.unique(frames)) <= {0, 1}
            outcomes.add("ok")
        except EvsimError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
    assert outcomes == {"ok", "refused"}


# ------------------------------------------------------------------------------- the event camera
def test_camera_is_deterministic_by_seed():
    rng = np.random.default_rng(0)
    img = rng.random((28, 28))
    cfg = CameraConfig(noise_hz=2.0)
    a, b = record_image(img, 7, seed=1, cfg=cfg), record_image(img, 7, seed=1, cfg=cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, record_image(img, 7, seed=2, cfg=cfg))
    assert not np.array_equal(a, record_image(img, 8, seed=1, cfg=cfg))   # each index its own generator
    assert np.all(np.diff(a["t"]) >= 0) and set(np.unique(a["p"])) == {-1, 1}


def test_blank_image_emits_only_noise():
    blank = np.full((28, 28), 0.5)
    assert len(record_image(np.zeros((28, 28)), 0, cfg=CameraConfig())) == 0
    # a uniform grey image on a black sensor: only its border moves, so only there are events
    ev = record_image(blank, 0, cfg=CameraConfig(threshold_sigma=0.0))
    assert len(ev) > 0
    inner = (ev["x"] > 10) & (ev["x"] < 24) & (ev["y"] > 10) & (ev["y"] < 24)
    assert not inner.any()
    cfg = CameraConfig(noise_hz=20.0)
    noise = record_image(np.zeros((28, 28)), 0, cfg=cfg)
    expected = 20.0 * 34 * 34 * 0.3
    assert abs(len(noise) - expected) < 5 * math.sqrt(expected)


def test_moving_edge_emits_on_ahead_and_off_behind():
    img = np.zeros((28, 28))
    img[8:20, 8:20] = 1.0                    # a bright square
    ev = record_image(img, 0, cfg=CameraConfig(threshold_sigma=0.0))
    first = ev[ev["t"] < 100_000]            # saccade 1: down and to the right
    last = ev[ev["t"] > 200_000]             # saccade 3: back to the left
    on, off = first[first["p"] == 1], first[first["p"] == -1]
    assert len(on) > 20 and len(off) > 20
    assert on["x"].mean() > off["x"].mean() + 3 and on["y"].mean() > off["y"].mean() + 3
    on3, off3 = last[last["p"] == 1], last[last["p"] == -1]
    assert on3["x"].mean() < off3["x"].mean() - 3
    # the refractory period holds at every pixel
    key = ev["y"].astype(np.int64) * 34 + ev["x"]
    order = np.lexsort((ev["t"], key))
    same = np.diff(key[order]) == 0
    assert np.all(np.diff(ev["t"][order].astype(np.int64))[same] >= CameraConfig().refractory_us)


def test_datasets_command_writes_synthetic_events(nets, tmp_path):
    out = tmp_path / "nf"
    r = ok(invoke("datasets", "nfashion-mnist", "--out", out, "--limit", 3))
    assert "synthetic" in r.stdout
    meta = json.loads((out / "test_meta.json").read_text())
    assert meta["synthetic"] and meta["samples"] == 3 and "SYNTHETIC" in meta["description"]
    ev = np.load(out / "test_events.npy")
    assert len(ev) == meta["events"] and set(np.unique(ev["sample"])) == {0, 1, 2}
    np.testing.assert_array_equal(np.load(out / "test_labels.npy"), [9, 2, 1])
    assert_user_error(invoke("datasets", "nfashion-mnist", "--out", out, "--limit", 3), "already exists",
                      "--force")
    ok(invoke("datasets", "nfashion-mnist", "--out", out, "--limit", 2, "--force"))
    assert json.loads((out / "test_meta.json").read_text())["samples"] == 2
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
