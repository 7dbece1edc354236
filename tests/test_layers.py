"""The PyTorch neuron layers against plain per-timestep NumPy loops.

The loops below are the equations of the :mod:`evsim.neurons` docstring
written out directly; the layers must produce the very same spikes in
float64, scale them by the amplitude, and pass gradients back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evsim.bridge.layers import CTSN, BinaryLIF, TernaryLIF, make_neuron
from evsim.bridge.train import tmpr_loss

T, B, C = 4, 3, 50
TAU, TH = 0.25, 0.5


# ------------------------------------------------------------ NumPy references
def ref_ternary(x, tau=TAU, th=TH):
    u, o = np.zeros_like(x[0]), np.zeros_like(x[0])
    spikes, mems = [], []
    for t in range(len(x)):
        u = tau * u * (1 - np.abs(o)) + x[t]
        o = np.where(u >= th, 1.0, np.where(u <= -th, -1.0, 0.0))
        spikes.append(o)
        mems.append(u)
    return np.stack(spikes), np.stack(mems)


def ref_binary(x, tau=TAU, th=TH):
    u, o = np.zeros_like(x[0]), np.zeros_like(x[0])
    spikes, mems = [], []
    for t in range(len(x)):
        u = tau * u * (1 - o) + x[t]
        o = np.where(u >= th, 1.0, 0.0)
        spikes.append(o)
        mems.append(u)
    return np.stack(spikes), np.stack(mems)


def ref_ctsn(x, ka, kb, kg, form, tau=TAU, th=TH):
    v, h, o = np.zeros_like(x[0]), np.zeros_like(x[0]), np.zeros_like(x[0])
    spikes, mems = [], []
    for t in range(len(x)):
        u = tau * v * (1 - np.abs(o))
        if form == "static":
            h = ka * np.maximum(h, 0) + kb * np.minimum(h, 0) + kg * u
        else:
            h = ka * h + kb * np.maximum(u, 0) + kg * np.minimum(u, 0)
        v = h + x[t]
        o = np.where(np.abs(v) >= th, np.sign(v), 0.0)
        spikes.append(o)
        mems.append(v)
    return np.stack(spikes), np.stack(mems)


def _input(seed=0, scale=0.8):
    return np.random.default_rng(seed).normal(0.0, scale, size=(T, B, C))


def _layer(kind: str, amplitude: float):
    if kind == "ternary":
        m = TernaryLIF(learn_amplitude=True)
    elif kind == "binary":
        m = BinaryLIF(learn_amplitude=True)
    else:
        m = CTSN(learn_amplitude=True, form=kind.split("-")[1])
    m = m.double()  # before setting values, so they are exact float64 numbers
    with torch.no_grad():
        m.amplitude.fill_(amplitude)
        if isinstance(m, CTSN):
            m.alpha.fill_(0.8)
            m.beta.fill_(-0.6)
            m.gamma.fill_(1.1)
    m.timesteps = T
    return m


def _reference(kind, m, x):
    if kind == "ternary":
        return ref_ternary(x)
    if kind == "binary":
        return ref_binary(x)
    ka, kb, kg = (float(k.detach()) for k in m.coefficients())
    return ref_ctsn(x, ka, kb, kg, kind.split("-")[1])


KINDS = ["ternary", "binary", "ctsn-static", "ctsn-event"]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_numpy_loop(kind):
    x = _input()
    m = _layer(kind, 0.7)
    m.record_spikes = True
    m.record_membrane = True
    with torch.no_grad():
        out = m(torch.from_numpy(x.reshape(T * B, C)))
    spikes, mems = _reference(kind, m, x)
    assert out.shape == (T * B, C) and out.dtype == torch.float64
    # the very same spikes, spike for spike, and enough of each sign to mean something
    np.testing.assert_array_equal(m.spikes.numpy(), spikes)
    assert np.count_nonzero(spikes == 1) > 10
    if kind != "binary":
        assert np.count_nonzero(spikes == -1) > 10
    else:
        assert set(np.unique(spikes)) <= {0.0, 1.0}
    assert np.count_nonzero(spikes == 0) > 10
    # the amplitude multiplies the emitted spikes
    np.testing.assert_array_equal(out.numpy(), 0.7 * spikes.reshape(T * B, C))
    # membranes recorded for TMPR are u (LIF) / u~ (CTSN) before the reset
    assert len(m.membranes) == T
    np.testing.assert_allclose(torch.stack(m.membranes).numpy(), mems, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_amplitude_scales_output_linearly(kind):
    x = torch.from_numpy(_input(seed=1).reshape(T * B, C))
    with torch.no_grad():
        a = _layer(kind, 1.3)(x)
        one = _layer(kind, 1.0)(x)
    assert torch.count_nonzero(one) > 0
    torch.testing.assert_close(a, 1.3 * one, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_threshold_is_inclusive(kind):
    # u = +-v_th exactly fires (>= / <=), a hair below does not
    x = np.array([[TH, -TH, np.nextafter(TH, 0), -np.nextafter(TH, 0), 0.0]])
    m = _layer(kind, 1.0)
    m.timesteps = 1
    with torch.no_grad():
        out = m(torch.from_numpy(x)).numpy()
    want = [1.0, 0.0, 0.0, 0.0, 0.0] if kind == "binary" else [1.0, -1.0, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(out[0], want)
    np.testing.assert_array_equal(_reference(kind, m, x[:, None, :])[0][0, 0], want)


def test_ctsn_forms_differ():
    x = _input(seed=2)
    s_static = ref_ctsn(x, 0.7, 0.3, 0.6, "static")[0]
    s_event = ref_ctsn(x, 0.7, 0.3, 0.6, "event")[0]
    assert not np.array_equal(s_static, s_event)  # the test inputs tell the two forms apart


def test_ctsn_neuron_params_are_float64_sigmoids():
    m = CTSN(form="static")
    with torch.no_grad():
        m.alpha.fill_(0.3137)
        m.beta.fill_(-1.2345)
        m.gamma.fill_(2.71)
    p = m.neuron_params()
    # exactly what the float64 model (model.double(), the verification reference) evaluates
    k64 = [float(k.detach()) for k in m.double().coefficients()]
    assert [p["k_alpha"], p["k_beta"], p["k_gamma"]] == k64
    np.testing.assert_allclose(k64, 1 / (1 + np.exp(-np.array([0.3137, -1.2345, 2.71]))), rtol=1e-6)
    assert p["tau"] == TAU and p["v_threshold"] == TH


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow(kind):
    m = _layer(kind, 0.9)
    x = torch.from_numpy(_input(seed=3).reshape(T * B, C)).requires_grad_(True)
    w = torch.from_numpy(np.random.default_rng(4).normal(size=(T * B, C)))
    (m(x) * w).sum().backward()
    params = [x, m.amplitude] + ([m.alpha, m.beta, m.gamma] if isinstance(m, CTSN) else [])
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_make_neuron_kinds():
    assert isinstance(make_neuron("ternary"), TernaryLIF) and make_neuron("ternary").learn_amplitude
    assert not make_neuron("ternary-fixed").learn_amplitude
    assert isinstance(make_neuron("binary"), BinaryLIF)
    assert make_neuron("ctsn").model_name == "ctsn_static"
    assert make_neuron("ctsn-event").model_name == "ctsn_event"
    with pytest.raises(ValueError, match="unknown neuron"):
        make_neuron("relu")
    with pytest.raises(ValueError, match="form"):
        CTSN(form="dynamic")


# ------------------------------------------------------------------------ TMPR
def test_tmpr_loss_by_hand():
    lam = 0.05
    rng = np.random.default_rng(5)
    n_layers, steps = 3, 4
    # layers of different shapes: the mean is taken per layer and step
    shapes = [(2, 5), (2, 3, 4), (2, 7)]
    mems = [[rng.normal(size=shapes[n]) for _ in range(steps)] for n in range(n_layers)]
    expected = 0.0
    for n in range(n_layers):
        for t in range(1, steps + 1):
            expected += (lam / t) * np.mean(mems[n][t - 1] ** 2)
    expected /= steps * n_layers
    got = tmpr_loss([[torch.from_numpy(u) for u in layer] for layer in mems], lam)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_tmpr_loss_small_known_tensor():
    # T=2, N=1: u[1] = [1, 3] (mean sq 5), u[2] = [2, 2] (mean sq 4)
    # 1/(2*1) * (lam/1 * 5 + lam/2 * 4) = 0.5 * lam * 7
    mems = [[torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor([2.0, 2.0], dtype=torch.float64)]]
    assert float(tmpr_loss(mems, 0.1)) == pytest.approx(0.35, rel=1e-12)
    u = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    tmpr_loss([[u]], 1.0).backward()
    np.testing.assert_allclose(u.grad.numpy(), [1.0, 3.0])  # d/du mean(u^2) = 2u/2
