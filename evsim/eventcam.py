"""A simulated event camera that records still images moved along saccades: synthetic event data.

**The data this makes is synthetic.** The images are real (Fashion-MNIST's), the camera is not:
no sensor recorded them. Each image is shown to a model of an event camera the way N-MNIST was
recorded (Orchard et al., "Converting static image datasets to spiking neuromorphic datasets using
saccades", Front. Neurosci. 2015): the image moves along three saccades of 100 ms each, tracing an
isosceles triangle (here: down-right, up-right, then back left to the start, ``amplitude`` pixels
each way; the paper moved the sensor on a pan-tilt unit in front of a monitor), seen on a sensor
larger than the image (28x28 on 34x34, as N-MNIST).

The pixel model is the one of ESIM (Rebecq et al., CoRL 2018) and v2e (Hu et al., CVPR-W 2021):

* the scene is rendered every ``dt_us`` microseconds (bilinear sub-pixel shift; zero outside the
  image), and each pixel sees the log intensity ``L = log(I + eps)`` (``eps``: the monitor's
  black level, which also keeps the log finite);
* a pixel remembers the level ``L_ref`` of its last event (at the start: its first view). Between
  two renderings ``L`` is taken as linear in time; every time it crosses ``L_ref +- C`` the pixel
  emits an ON (+) or OFF (-) event at the interpolated crossing time (microseconds, rounded down)
  and moves ``L_ref`` by ``C``. ``C`` is the contrast threshold, drawn once per pixel from
  ``N(threshold, threshold_sigma)`` (threshold mismatch);
* a crossing less than ``refractory_us`` after the pixel's previous event is not emitted; the
  pixel then keeps its ``L_ref`` and fires when the refractory period has passed, if the change is
  still there;
* optional noise: ``noise_hz`` events per pixel per second at uniform times, polarity random
  (shot noise, as v2e's), merged into the stream.

Everything random comes from ``numpy.random.default_rng([seed, index])``, one generator per image
index: a sample does not depend on which other samples are generated with it (``--limit``).
The pixel loop is one Numba function (serial, one core).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np

from . import jitcache
from .events import SAMPLE_EVENT_DTYPE

jitcache.install()      # cached in the user's cache directory, never beside the installed source


LOG_TABLE = 4096


@dataclass(frozen=True)
class CameraConfig:
    sensor: tuple[int, int] = (34, 34)     # (H, W)
    saccade_us: int = 100_000              # each of the three saccades
    amplitude: float = 3.0                 # pixels moved along x and y in a saccade
    dt_us: int = 2000                      # rendering interval (the image moves 0.06 px between renderings)
    threshold: float = 0.25                # contrast threshold C, log units
    threshold_sigma: float = 0.03          # per-pixel mismatch of C (std)
    refractory_us: int = 500
    eps: float = 0.15                      # black level: L = log(I + eps), I in [0, 1]
    noise_hz: float = 0.0                  # noise events per pixel per second

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sensor"] = list(self.sensor)
        return d


def saccade_path(cfg: CameraConfig, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The image's offset (dx, dy) in pixels at each rendering time 0 .. n_steps-1 (times k * dt_us)."""
    a = cfg.amplitude
    corners = np.array([[0.0, 0.0], [a, a], [2 * a, 0.0], [0.0, 0.0]])     # (dx, dy): a triangle
    t = np.arange(n_steps) * cfg.dt_us / cfg.saccade_us                     # in saccades
    k = np.minimum(t.astype(np.int64), 2)
    f = np.clip(t - k, 0.0, 1.0)[:, None]
    p = corners[k] * (1 - f) + corners[k + 1] * f
    return p[:, 0], p[:, 1]


@numba.njit(cache=True, nogil=True)
def _record(pimg, bx, by, fx, fy, H, W, dt, thr, refr, log_tbl, out_t, out_x, out_y, out_p):
    """Events of one image (its own buffers; returns their number, or -needed when they are too small).

    ``pimg``: the image inside a zero margin; at rendering k, sensor pixel (v, u) sees the bilinear
    sample of ``pimg`` at row ``v + by[k]`` + ``fy[k]``, column ``u + bx[k]`` + ``fx[k]`` (the shift is
    the same for every pixel, so the weights are too). ``log_tbl[i] = log(i / n + eps)``, i = 0 .. n: the
    log intensity, interpolated linearly between its entries (for n = 4096 and eps = 0.15 within 4e-7
    of the exact log, against thresholds of 0.25), several times faster than a log per pixel.
    """
    n_steps = bx.shape[0]
    lref = np.empty((H, W))
    lprev = np.empty((H, W))
    last = np.full((H, W), -(1 << 40), dtype=np.int64)
    n = 0
    cap = out_t.shape[0]
    n_tbl = log_tbl.shape[0] - 1
    for k in range(n_steps):
        a11 = fy[k] * fx[k]
        a10 = fy[k] - a11
        a01 = fx[k] - a11
        a00 = 1.0 - fx[k] - fy[k] + a11
        for v in range(H):
            r = v + by[k]
            for u in range(W):
                c0 = u + bx[k]
                val = (a00 * pimg[r, c0] + a01 * pimg[r, c0 + 1]) + (a10 * pimg[r + 1, c0] + a11 * pimg[r + 1, c0 + 1])
                q = val * n_tbl
                i = min(int(q), n_tbl - 1)
                L = log_tbl[i] + (q - i) * (log_tbl[i + 1] - log_tbl[i])
                if k == 0:
                    lref[v, u] = L
                    lprev[v, u] = L
                    continue
                lp = lprev[v, u]
                lprev[v, u] = L
                c = thr[v, u]
                t_prev = (k - 1) * dt
                while True:
                    diff = L - lref[v, u]
                    if diff >= c:
                        target = lref[v, u] + c
                        pol = 1
                    elif diff <= -c:
                        target = lref[v, u] - c
                        pol = -1
                    else:
                        break
                    # the crossing between the two renderings (L linear in time); at t_prev if it was pending
                    if L != lp:
                        frac = (target - lp) / (L - lp)
                        frac = min(max(frac, 0.0), 1.0)
                    else:
                        frac = 0.0
                    te = t_prev + int(np.floor(frac * dt))
                    if te - last[v, u] < refr:
                        te = last[v, u] + refr          # blocked: it fires when the period ends ...
                        if te > k * dt:                 # ... unless that is after this rendering
                            break
                    if n < cap:
                        out_t[n] = te
                        out_x[n] = u
                        out_y[n] = v
                        out_p[n] = pol
                    n += 1
                    last[v, u] = te
                    lref[v, u] = target
    return n if n <= cap else -n


def record_image(image: np.ndarray, index: int, seed: int = 0, cfg: CameraConfig = CameraConfig()) -> np.ndarray:
    """The event stream (``SAMPLE_EVENT_DTYPE`` with ``sample`` = 0, sorted by time) of one image in [0, 1]."""
    img = np.ascontiguousarray(np.asarray(image, dtype=np.float64).reshape(image.shape[-2:]))
    H, W = cfg.sensor
    h, w = img.shape
    rng = np.random.default_rng([seed, index])
    duration = 3 * cfg.saccade_us
    n_steps = duration // cfg.dt_us + 1
    dx, dy = saccade_path(cfg, n_steps)
    x0 = (W - w - 2 * cfg.amplitude) / 2          # the triangle's bounding box centred on the sensor
    y0 = (H - h - cfg.amplitude) / 2
    # sensor pixel u sees image column u - x0 - dx: integer part b, fraction f
    sx, sy = -(x0 + dx), -(y0 + dy)
    bx, by = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - bx, sy - by
    mx = max(int(-bx.min()), int(W - w + bx.max() + 1), 0) + 1
    my = max(int(-by.min()), int(H - h + by.max() + 1), 0) + 1
    pimg = np.zeros((h + 2 * my, w + 2 * mx))
    pimg[my:my + h, mx:mx + w] = img
    bx, by = bx + mx, by + my
    thr = np.maximum(rng.normal(cfg.threshold, cfg.threshold_sigma, size=(H, W)), 0.01 * cfg.threshold) \
        if cfg.threshold_sigma > 0 else np.full((H, W), float(cfg.threshold))
    log_tbl = np.log(np.linspace(0.0, 1.0, LOG_TABLE + 1) + cfg.eps)
    cap = 32768
    while True:
        bufs = (np.empty(cap, np.int64), np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap, np.int8))
        n = _record(pimg, bx, by, fx, fy, H, W, cfg.dt_us, thr, cfg.refractory_us, log_tbl, *bufs)
        if n >= 0:
            break
        cap = -n
    t, x, y, p = (b[:n] for b in bufs)
    if cfg.noise_hz > 0:
        k = rng.poisson(cfg.noise_hz * H * W * duration * 1e-6)
        t = np.concatenate([t, rng.integers(0, duration + 1, k)])
        x = np.concatenate([x, rng.integers(0, W, k)])
        y = np.concatenate([y, rng.integers(0, H, k)])
        p = np.concatenate([p, np.where(rng.random(k) < 0.5, 1, -1).astype(np.int8)])
    order = np.argsort(t, kind="stable")
    out = np.empty(len(t), SAMPLE_EVENT_DTYPE)
    out["sample"] = 0
    out["t"], out["x"], out["y"], out["p"] = t[order], x[order], y[order], p[order]
    return out


def record_images(images: np.ndarray, seed: int = 0, cfg: CameraConfig = CameraConfig(), first_index: int = 0,
                  progress=None) -> np.ndarray:
    """One event array for many images: ``sample`` i holds image i (sorted by sample, then time)."""
    parts = []
    for i, img in enumerate(images):
        ev = record_image(img, first_index + i, seed, cfg)
        ev["sample"] = i
        parts.append(ev)
        if progress is not None:
            progress(1)
    return np.concatenate(parts) if parts else np.empty(0, SAMPLE_EVENT_DTYPE)
