"""The PyTorch bridge: folding, export, verification against the engine, training and the CLI.

Models are tiny (width 4, 16x16 or 28x28, T=2..4) with BatchNorm statistics,
amplitudes and CTSN coefficients set to non-trivial values, so every folding
rule changes the numbers and a wrong one shows.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from evsim.bridge.dense import run_folded_torch
from evsim.bridge.fold import bn_affine, fold_model
from evsim.bridge.layers import CTSN, SpikingNeuron, TernaryLIF
from evsim.bridge.models import SpikingNet, build_model
from evsim.bridge.train import TrainConfig, load_checkpoint, save_checkpoint, train
from evsim.bridge.verify import format_verification, verify
from evsim.cli import main
from evsim.errors import EvsimError, NetworkError
from evsim.format import read_network, write_network
from evsim.neurons import NEURON_MODELS

NEURONS = ["ternary", "binary", "ctsn", "ctsn-event"]
AMPLITUDES = (0.7, 1.3, 0.9, 1.1)


# ------------------------------------------------------------------- helpers
def randomize(model: SpikingNet, seed: int = 0) -> SpikingNet:
    """Non-trivial BatchNorm state, amplitudes and CTSN coefficients; eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    k = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
            if isinstance(m, SpikingNeuron) and m.learn_amplitude:
                m.amplitude.fill_(AMPLITUDES[k % len(AMPLITUDES)])
                k += 1
            if isinstance(m, CTSN):
                for p in (m.alpha, m.beta, m.gamma):
                    p.copy_(torch.randn(1, generator=g))
    return model.eval()


def small(arch, neuron="ternary", timesteps=3, image_size=16, encoding="direct", seed=0) -> SpikingNet:
    torch.manual_seed(seed)
    return randomize(build_model(arch, neuron=neuron, timesteps=timesteps, in_channels=1, image_size=image_size,
                                 width=4, encoding=encoding), seed)


def reference(model: SpikingNet, x: np.ndarray):
    """The unfolded model in float64: outputs and pure spikes per neuron module path."""
    ref = copy.deepcopy(model).double().eval()
    neurons = dict(ref.neurons())
    for m in neurons.values():
        m.record_spikes = True
    with torch.no_grad():
        out = ref(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    return out, {n: m.spikes for n, m in neurons.items()}


def images(n=6, size=16, seed=1):
    return np.random.default_rng(seed).random((n, 1, size, size))


def amp(model, path) -> float:
    return float(dict(model.named_modules())[path].amplitude.detach().double())


def bn_scale_shift(bn):
    """Eval BatchNorm as s*x + c, written out here independently of the folder."""
    var = bn.running_var.detach().double().numpy()
    s = bn.weight.detach().double().numpy() / np.sqrt(var + bn.eps)
    return s, bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * s


def w64(conv):
    return conv.weight.detach().double().numpy()


def proj(network, name):
    found = [p for p in network.projections if p.name == name]
    assert len(found) == 1, f"no projection {name!r} in {[p.name for p in network.projections]}"
    return found[0]


# ------------------------------------------------------ 3. fold correctness
@pytest.mark.parametrize("neuron", NEURONS)
@pytest.mark.parametrize("arch,size", [("convnet", 16), ("vgg", 16), ("resnet8", 16), ("convnet", 28)])
def test_folded_network_matches_unfolded_model(arch, size, neuron):
    model = small(arch, neuron, image_size=size)
    x = images(5, size)
    net = fold_model(model)
    out_ref, spikes_ref = reference(model, x)
    out, spikes = run_folded_torch(net, torch.from_numpy(x))
    assert set(spikes) == set(spikes_ref) == {p.name for p in net.populations}
    total = 0
    for name, s in spikes_ref.items():
        assert spikes[name].shape == s.shape
        assert torch.equal(spikes[name], s), f"{name}: {int((spikes[name] != s).sum())} spikes differ"
        total += int(s.abs().sum())
    assert total > 0
    assert float((out - out_ref).abs().max()) <= 1e-9
    # the folded network emits pure spikes: amplitudes live in the weights now
    for s in spikes.values():
        assert set(torch.unique(s).tolist()) <= ({0.0, 1.0} if neuron == "binary" else {-1.0, 0.0, 1.0})


def test_fold_constants_are_the_float64_model_constants():
    model = small("resnet8", "ctsn")
    net = fold_model(model)
    ref = dict(copy.deepcopy(model).double().neurons())
    for pop in net.populations:
        m = ref[pop.name]
        ka, kb, kg = (float(k.detach()) for k in m.coefficients())
        assert pop.model == "ctsn_static"
        assert pop.params == {"tau": m.tau, "v_threshold": m.v_threshold, "k_alpha": ka, "k_beta": kb, "k_gamma": kg}
        assert len({ka, kb, kg}) == 3 and 0.5 not in (ka, kb, kg)   # the random coefficients got through


def test_fold_resnet_weights_bn_and_amplitudes():
    model = small("resnet8", "ternary")
    net = fold_model(model)
    L = model.layers
    amps = {p.name: amp(model, p.name) for p in net.populations}
    assert len(set(amps.values())) > 1 and 1.0 not in amps.values()

    # stem: from the input (no amplitude), BN folded
    s, c = bn_scale_shift(L[1])
    np.testing.assert_allclose(proj(net, "layers.0").weight, w64(L[0]) * s[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(proj(net, "layers.0").bias, c, rtol=1e-12, atol=1e-15)

    # identity shortcut: scale = the source population's amplitude
    sc = proj(net, "layers.3.shortcut")
    assert sc.kind == "identity" and sc.source == "layers.2" and sc.target == "layers.3.sn2"
    assert sc.scale == amps["layers.2"]
    assert sc.weight is None and sc.bias is None

    # every conv leaving a population: unfolded weight * BN scale * source amplitude
    for blk, src_in in (("3", "layers.2"), ("4", "layers.3.sn2"), ("5", "layers.4.sn2")):
        b = L[int(blk)]
        for conv_name, conv, bn, src in (("conv1", b.conv1, b.bn1, src_in),
                                         ("conv2", b.conv2, b.bn2, f"layers.{blk}.sn1")):
            p = proj(net, f"layers.{blk}.{conv_name}")
            s, c = bn_scale_shift(bn)
            assert p.source == src
            np.testing.assert_allclose(p.weight, w64(conv) * s[:, None, None, None] * amps[src], rtol=1e-12)
            np.testing.assert_allclose(p.bias, c, rtol=1e-12, atol=1e-15)
            assert p.stride == tuple(conv.stride) and p.padding == tuple(conv.padding)
        if blk != "3":   # projection shortcut: 1x1 conv + BN of the block's input spikes
            p = proj(net, f"layers.{blk}.shortcut")
            s, c = bn_scale_shift(b.shortcut[1])
            assert p.kind == "conv2d" and p.source == src_in and p.stride == (2, 2)
            np.testing.assert_allclose(p.weight, w64(b.shortcut[0]) * s[:, None, None, None] * amps[src_in],
                                       rtol=1e-12)
            np.testing.assert_allclose(p.bias, c, rtol=1e-12, atol=1e-15)

    # readout: global average pool + linear as one linear map over the (C, H, W) spikes
    ro = [p for p in net.projections if p.target == "readout"]
    assert len(ro) == 1 and ro[0].kind == "linear" and ro[0].source == "layers.5.sn2"
    C, H, W = net.population("layers.5.sn2").shape
    lin = L[8]
    expected = np.repeat(w64(lin)[:, :, None], H * W, axis=2).reshape(10, C * H * W) / (H * W) * amps["layers.5.sn2"]
    np.testing.assert_allclose(ro[0].weight, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ro[0].bias, lin.bias.detach().double().numpy(), rtol=1e-12, atol=1e-15)


def test_fold_bn_affine_helper():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
        bn.weight.copy_(torch.tensor([1.2, 0.7, -0.4]))
        bn.bias.copy_(torch.tensor([0.05, 0.0, -0.1]))
    bn.eval()
    s, c = bn_affine(bn)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    want = bn.double()(x)
    got = x * torch.from_numpy(s)[:, None, None] + torch.from_numpy(c)[:, None, None]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fold_vgg_pool_becomes_strided_conv():
    model = small("vgg", "ternary")
    net = fold_model(model)
    L = model.layers
    # layers.6 AvgPool2d(2) then layers.7 Conv2d(3x3, s1, p1) + BN layers.8 -> one conv named after the pool
    for pool_idx, src in ((6, "layers.5"), (13, "layers.12")):
        pool, conv, bn = L[pool_idx], L[pool_idx + 1], L[pool_idx + 2]
        assert isinstance(pool, nn.AvgPool2d) and isinstance(conv, nn.Conv2d)
        p = proj(net, f"layers.{pool_idx}")
        assert p.kind == "conv2d" and p.source == src and p.target == f"layers.{pool_idx + 3}"
        assert p.weight.shape[2:] == (2 * conv.kernel_size[0], 2 * conv.kernel_size[1]) == (6, 6)
        assert p.stride == (2 * conv.stride[0], 2 * conv.stride[1]) == (2, 2)
        assert p.padding == (2 * conv.padding[0], 2 * conv.padding[1]) == (2, 2)
        s, c = bn_scale_shift(bn)
        a = amp(model, src)
        expected = np.repeat(np.repeat(w64(conv), 2, axis=2), 2, axis=3) / 4 * s[:, None, None, None] * a
        np.testing.assert_allclose(p.weight, expected, rtol=1e-12)
        np.testing.assert_allclose(p.bias, c, rtol=1e-12, atol=1e-15)
        # the strided big-kernel conv computes pool-then-conv on any map, not only on spikes
        Cin, H, W = net.population(src).shape
        xm = torch.randn(2, Cin, H, W, dtype=torch.float64)
        want = F.conv2d(F.avg_pool2d(xm * a, 2), conv.weight.double(), None, conv.stride, conv.padding)
        want = want * torch.from_numpy(s)[:, None, None] + torch.from_numpy(c)[:, None, None]
        got = F.conv2d(xm, torch.from_numpy(p.weight), torch.from_numpy(p.bias), p.stride, p.padding)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not any(isinstance(p, nn.AvgPool2d) for p in net.projections)


def _net(*layers, T=2, shape=(1, 8, 8)):
    return SpikingNet(nn.Sequential(*layers), T, shape).eval()


@pytest.mark.parametrize("layers,match", [
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4), TernaryLIF(), nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(64, 10)], r"layers\.3: layer type MaxPool2d"),
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), TernaryLIF(), nn.Flatten(), nn.Linear(256, 10)],
     r"layers\.1: layer type ReLU"),
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), TernaryLIF(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, 1, 1), TernaryLIF(),
              nn.Flatten(), nn.Linear(256, 10)], r"layers\.2: BatchNorm2d"),
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), TernaryLIF(), nn.AvgPool2d(2, divisor_override=1), nn.Conv2d(4, 4, 3, 1, 1),
              TernaryLIF(), nn.Flatten(), nn.Linear(64, 10)], r"layers\.2: .*divisor_override"),
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), TernaryLIF(), nn.AvgPool2d(3, stride=1), nn.Conv2d(4, 4, 3, 1, 1),
              TernaryLIF(), nn.Flatten(), nn.Linear(144, 10)], r"layers\.2: only non-overlapping"),
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), TernaryLIF(), nn.Conv2d(4, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 1, 1),
              TernaryLIF(), nn.Flatten(), nn.Linear(256, 10)], r"two convs"),
    (lambda: [nn.Conv2d(1, 4, 3, 1, 1), TernaryLIF()], r"must end in a Linear readout"),
])
def test_fold_refuses_unsupported_layers(layers, match):
    model = _net(*layers())
    with pytest.raises(NetworkError, match=match):
        fold_model(model)


def test_fold_refuses_non_spikingnet():
    with pytest.raises(NetworkError, match="SpikingNet"):
        fold_model(nn.Sequential(nn.Linear(2, 2)))


# ------------------------------------------- 4. export + engine + verify
def _roundtrip(model, x, tmp_path):
    net = fold_model(model)
    path = write_network(net, tmp_path / "net.h5")
    back = read_network(path)
    assert [p.name for p in back.populations] == [p.name for p in net.populations]
    for a, b in zip(net.projections, back.projections):
        assert (a.name, a.kind, a.source, a.target, a.scale) == (b.name, b.kind, b.source, b.target, b.scale)
        if a.weight is not None:
            np.testing.assert_array_equal(a.weight, b.weight)
    for a, b in zip(net.populations, back.populations):
        assert a.params == b.params
    res = verify(model, back, x)
    assert res["passed"], format_verification(res)
    assert res["first_divergence"] is None
    assert len(res["layers"]) == len(net.populations)
    for lay in res["layers"]:
        assert lay["identical_float64"] == 1.0
        assert lay["spikes_reference"] == lay["spikes_engine"]
    assert sum(lay["spikes_reference"] for lay in res["layers"]) > 0
    assert res["max_output_diff_float64"] <= 1e-9
    assert res["predictions_agree_float64"] == 1.0
    assert "PASSED" in format_verification(res)
    return res


@pytest.mark.parametrize("neuron", NEURONS)
@pytest.mark.parametrize("arch", ["resnet8", "vgg"])
def test_export_engine_verify_roundtrip(arch, neuron, tmp_path):
    model = small(arch, neuron, seed=3)
    res = _roundtrip(model, images(4, 16, seed=2), tmp_path)
    assert res["samples"] == 4 and res["timesteps"] == 3


@pytest.mark.parametrize("arch", ["resnet8", "convnet"])
def test_spike_encoded_model_verifies(arch, tmp_path):
    T = 3
    model = small(arch, "ternary", timesteps=T, encoding="spikes", seed=4)
    x = np.random.default_rng(5).integers(-1, 2, size=(4, T, 1, 16, 16)).astype(np.float64)
    net = fold_model(model)
    assert net.encoding == "spikes"
    out_ref, spikes_ref = reference(model, x)
    out, spikes = run_folded_torch(net, torch.from_numpy(x))
    assert all(torch.equal(spikes[n], s) for n, s in spikes_ref.items())
    assert float((out - out_ref).abs().max()) <= 1e-9
    _roundtrip(model, x, tmp_path)


def test_hidden_linear_with_batchnorm1d_verifies(tmp_path):
    torch.manual_seed(6)
    model = randomize(_net(nn.Flatten(), nn.Linear(64, 24), nn.BatchNorm1d(24), TernaryLIF(learn_amplitude=True),
                           nn.Linear(24, 10), T=3), seed=6)
    net = fold_model(model)
    assert [p.kind for p in net.projections] == ["linear", "linear"]
    s, c = bn_scale_shift(model.layers[2])
    lin = model.layers[1]
    np.testing.assert_allclose(net.projections[0].weight, w64(lin) * s[:, None], rtol=1e-12)
    np.testing.assert_allclose(net.projections[0].bias, lin.bias.detach().double().numpy() * s + c, rtol=1e-12)
    np.testing.assert_allclose(net.projections[1].weight, w64(model.layers[4]) * 0.7, rtol=1e-7)
    _roundtrip(model, images(5, 8, seed=7), tmp_path)


# --------------------------------------------------------- 5. negative test
def test_verify_reports_first_divergence_of_a_perturbed_weight():
    model = small("resnet8", "ternary", seed=8)
    x = images(4, 16, seed=9)
    net = fold_model(model)
    assert verify(model, net, x)["passed"]
    _, spikes_ref = reference(model, x)
    # the smallest of a few nudges to one weight that flips a spike, first at a timestep other than
    # the sample index (so the report cannot mix the two up unnoticed)
    found = False
    for frac in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        for ci in range(4):
            bad = copy.deepcopy(net)
            p = proj(bad, "layers.3.conv1")
            p.weight[0, ci, 1, 1] += frac * np.abs(p.weight).max()
            _, spikes_bad = run_folded_torch(bad, torch.from_numpy(x))
            diff = (spikes_ref["layers.3.sn1"] != spikes_bad["layers.3.sn1"]).nonzero()
            if len(diff) and diff[0][0] != diff[0][1]:
                found = True
                break
        if found:
            break
    assert found, "no small nudge of one weight flipped a spike"
    assert frac <= 0.1   # slight: a tenth of the largest weight at most
    res = verify(model, bad, x)
    assert res["passed"] is False
    d = res["first_divergence"]
    assert d is not None
    # upstream of the perturbed projection nothing changes; its target diverges first
    by_name = {lay["population"]: lay for lay in res["layers"]}
    assert by_name["layers.2"]["identical_float64"] == 1.0 and by_name["layers.2"]["first_divergence"] is None
    assert d["population"] == "layers.3.sn1"
    assert by_name["layers.3.sn1"]["identical_float64"] < 1.0
    assert 0 <= d["timestep"] < 3 and 0 <= d["sample"] < 4
    shape = bad.population(d["population"]).shape
    assert len(d["neuron"]) == 3 and all(0 <= i < n for i, n in zip(d["neuron"], shape))
    assert d["neuron"][0] == 0   # only output channel 0 was touched
    # the reported spikes are the model's and the perturbed network's at that place
    at = (d["timestep"], d["sample"], *d["neuron"])
    assert d["reference"] == int(spikes_ref[d["population"]][at]) != d["engine"] == int(spikes_bad[d["population"]][at])
    assert tuple(diff[0].tolist()) == at   # the first one in time order
    text = format_verification(res)
    assert "FAILED" in text and "first divergence: population layers.3.sn1" in text


def test_verify_fails_on_output_difference_alone():
    model = small("convnet", "ternary", seed=10)
    x = images(3, 16, seed=11)
    bad = fold_model(model)
    bad.projections[-1].bias[0] += 1e-6   # readout only: every spike stays, the output moves
    res = verify(model, bad, x)
    assert res["passed"] is False and res["first_divergence"] is None
    assert all(lay["identical_float64"] == 1.0 for lay in res["layers"])
    assert 1e-7 < res["max_output_diff_float64"] < 1e-5


def test_verify_refuses_mismatched_model():
    model = small("convnet", "ternary", seed=12)
    net = fold_model(model)
    x = images(2, 16)
    with pytest.raises(EvsimError, match="different networks"):
        verify(small("convnet", "ternary", timesteps=2), net, x)
    with pytest.raises(EvsimError, match="binary_lif in the checkpoint"):
        verify(small("convnet", "binary"), net, x)
    with pytest.raises(EvsimError, match="no matching neuron layer"):
        verify(small("resnet8", "ternary"), net, x)


# ----------------------------------------------------- 6. training and CLI
@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_training_checkpoint_export_verify_cli(tmp_path, restore_threads):
    ckpt = tmp_path / "tiny.pt"
    cfg = TrainConfig(arch="convnet", width=4, epochs=1, batch_size=32, train_limit=256, test_limit=128, threads=1)
    model, record = train(cfg, out=ckpt, progress=False)
    assert ckpt.exists()
    assert record["history"][0]["epoch"] == 1 and 0.0 <= record["history"][0]["test_acc_torch"] <= 1.0
    assert np.isfinite(record["history"][0]["train_loss"])
    assert not model.training

    from evsim.datasets import load_dataset
    x, _ = load_dataset("fashion-mnist", "test")
    x = x[:6]
    loaded, raw = load_checkpoint(ckpt)
    assert raw["config"]["arch"] == "convnet" and raw["config"]["width"] == 4
    assert raw["record"]["train_config"]["train_limit"] == 256
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(x)), model(torch.from_numpy(x)), rtol=0, atol=0)
    assert any(float(m.amplitude.detach()) != 1.0 for _, m in loaded.neurons())   # training moved the amplitudes

    np.save(tmp_path / "x.npy", x)
    h5 = tmp_path / "f.h5"
    runner = CliRunner()
    r = runner.invoke(main, ["export", "-c", str(ckpt), "-o", str(h5)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and h5.exists()
    net = read_network(h5)
    assert net.class_names[0] == "T-shirt/top" and net.input_range == (0.0, 1.0)
    assert net.provenance["checkpoint"] == "tiny.pt"

    r = runner.invoke(main, ["verify", "-w", str(h5), "-c", str(ckpt), "-i", str(tmp_path / "x.npy")])
    assert r.exit_code == 0, r.output
    assert "PASSED" in r.output and "FAILED" not in r.output
    r = runner.invoke(main, ["verify", "-w", str(h5), "-c", str(ckpt), "-i", str(tmp_path / "x.npy"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and doc["samples"] == 6
    assert all(lay["identical_float64"] == 1.0 for lay in doc["layers"])

    # export never overwrites silently
    before = _digest(h5)
    r = runner.invoke(main, ["export", "-c", str(ckpt), "-o", str(h5)])
    assert r.exit_code == 1
    assert "already exists" in r.output and "--force" in r.output
    assert "Traceback" not in r.output
    assert _digest(h5) == before
    r = runner.invoke(main, ["export", "-c", str(ckpt), "-o", str(h5), "--force"])
    assert r.exit_code == 0, r.output
    assert read_network(h5).n_params == net.n_params

    # a checkpoint that does not describe the file: one line, exit 1, no traceback
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("convnet", width=8, timesteps=4, image_size=28), {})
    r = runner.invoke(main, ["verify", "-w", str(h5), "-c", str(other), "-i", str(tmp_path / "x.npy")])
    assert r.exit_code == 1
    assert isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output and "PASSED" not in r.output
    err = r.stderr.strip()
    assert err.startswith("Error:") and len(err.splitlines()) == 1
    assert "layers." in err

    # a file that is no checkpoint at all: also one line
    r = runner.invoke(main, ["verify", "-w", str(h5), "-c", str(tmp_path / "x.npy"), "-i", str(tmp_path / "x.npy")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_fine_tuning_starts_from_the_checkpoint_and_records_the_rate(tmp_path, restore_threads):
    base = tmp_path / "base.pt"
    cfg = TrainConfig(arch="convnet", width=4, epochs=1, batch_size=32, train_limit=128, test_limit=64, threads=1)
    start, _ = train(cfg, out=base, progress=False)
    # lr 0: one epoch of "training" from the checkpoint must leave its weights as they were
    tuned, record = train(TrainConfig(**{**cfg.__dict__, "init": str(base), "lr": 0.0, "rate_reg": 1.0}),
                          progress=False)
    for (k, a), (_, b) in zip(start.state_dict().items(), tuned.state_dict().items()):
        if a.dtype.is_floating_point and "running" not in k:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    h = record["history"][0]
    assert 0.0 < h["test_firing_rate"] < 1.0
    # the rate is the one the model itself shows on the same images
    from evsim.bridge.train import evaluate
    from evsim.datasets import load_dataset
    x, y = load_dataset("fashion-mnist", "test")
    acc, rate = evaluate(tuned, x[:64], y[:64], with_rate=True)
    assert rate == pytest.approx(h["test_firing_rate"]) and acc == pytest.approx(h["test_acc_torch"])
    # another architecture cannot start from it
    with pytest.raises(EvsimError, match="architecture"):
        train(TrainConfig(**{**cfg.__dict__, "init": str(base), "width": 8}), progress=False)


@pytest.mark.parametrize("model", sorted(NEURON_MODELS))
@pytest.mark.parametrize("encoding", ["direct", "spikes"])
def test_dense_runner_matches_the_plain_reference(model, encoding):
    """The one dense PyTorch runner (evsim.bridge.dense), every neuron model, against the NumPy reference
    written apart (tests/reference.py): the same spikes, outputs to float64 rounding."""
    from networks import random_input, residual_net
    from reference import simulate as reference

    net = residual_net(seed=3, model=model, encoding=encoding)
    x = random_input(net, 3, seed=4)
    out, spikes = run_folded_torch(net, torch.from_numpy(x))
    ref_out, ref_spikes, _ = reference(net, x)
    for name, s in ref_spikes.items():
        assert np.array_equal(spikes[name].numpy().astype(np.int8), s), name
    assert sum(int(np.abs(s).sum()) for s in ref_spikes.values()) > 0
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=0, atol=1e-10)


def test_event_frames_for_training_are_what_run_events_sees(tmp_path):
    """The training frames of the synthetic event data are the written dataset binned as `evsim run --events`
    bins it (chunked generation, a chunk size that does not divide the count)."""
    from evsim.datasets import nfashion_frames, write_nfashion_mnist
    from evsim.events import bin_events, read_events

    write_nfashion_mnist(tmp_path, "test", limit=7)
    frames, labels = nfashion_frames("test", 3, 2, limit=7, chunk=3)
    ev = read_events(tmp_path / "test_events.npy")
    expected, _ = bin_events(ev, 3, 2, 34, 34)
    assert frames.dtype == np.int8 and frames.shape == (7, 3, 2, 34, 34)
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(labels, np.load(tmp_path / "test_labels.npy"))
    one, _ = nfashion_frames("test", 3, 1, limit=2)
    assert set(np.unique(one)) <= {-1, 0, 1} and (one == -1).any()


def _events_cfg(**kw):
    return TrainConfig(**{**dict(arch="convnet", neuron="ctsn-event", tmpr=0.01, width=4, epochs=2, batch_size=16,
                                 train_limit=48, test_limit=16, threads=1, dataset="nfashion-mnist"), **kw})


def test_training_on_event_frames_and_resuming_gives_the_uninterrupted_result(tmp_path, restore_threads,
                                                                            monkeypatch):
    from evsim.bridge import train as train_mod

    cfg = _events_cfg()
    data = train_mod.load_training_data(cfg)
    assert data[0].shape == (48, 4, 2, 34, 34)
    whole, rec = train(cfg, progress=False, data=data)
    assert whole.encoding == "spikes" and whole.input_shape == (2, 34, 34) and len(rec["history"]) == 2

    # the same run, killed after its first epoch (the second evaluation raises), then started again
    calls = {"n": 0}
    real = train_mod.evaluate

    def dies_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    state = tmp_path / "run.resume"
    monkeypatch.setattr(train_mod, "evaluate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, data=data, resume=state)
    monkeypatch.setattr(train_mod, "evaluate", real)
    assert state.exists()
    resumed, rec2 = train(cfg, progress=False, data=data, resume=state)
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert [h["test_acc_torch"] for h in rec2["history"]] == [h["test_acc_torch"] for h in rec["history"]]

    # a state of another config, or a damaged one, is one line
    with pytest.raises(EvsimError, match="another training config"):
        train(_events_cfg(seed=1), progress=False, data=data, resume=state)
    state.write_bytes(b"not a torch file")
    with pytest.raises(EvsimError, match="not a readable resume state"):
        train(cfg, progress=False, data=data, resume=state)


def test_train_export_verify_on_events_cli(tmp_path, restore_threads):
    from evsim.datasets import write_nfashion_mnist

    ckpt, h5 = tmp_path / "ev.pt", tmp_path / "ev.h5"
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--arch", "convnet", "--width", "4", "--neuron", "ternary", "--epochs", "1",
                             "--batch-size", "16", "--dataset", "nfashion-mnist", "--train-limit", "32",
                             "--test-limit", "8", "--threads", "1", "-T", "3", "--out", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert not os.path.exists(str(ckpt) + ".resume")
    assert runner.invoke(main, ["export", "-c", str(ckpt), "-o", str(h5)]).exit_code == 0
    net = read_network(h5)
    assert net.encoding == "spikes" and tuple(net.input_shape) == (2, 34, 34) and net.class_names[0] == "T-shirt/top"
    write_nfashion_mnist(tmp_path / "nf", "test", limit=5)
    r = runner.invoke(main, ["verify", "-w", str(h5), "-c", str(ckpt), "--events", str(tmp_path / "nf" /
                                                                                  "test_events.npy"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and doc["samples"] == 5
    r = runner.invoke(main, ["verify", "-w", str(h5), "-c", str(ckpt), "--window-us", "1000", "-i", "x.npy"])
    assert r.exit_code == 2 and "--window-us goes with --events" in r.output
