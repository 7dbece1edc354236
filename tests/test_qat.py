"""Quantisation-aware fine-tuning (evsim.bridge.qat): the fake-quantised folded network is the one
``evsim.fixedpoint.quantize`` makes, number for number, and ``evsim train --qat-bits`` trains, saves and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_bridge import small

from evsim.bridge.checkpoint import load_checkpoint
from evsim.bridge.dense import DenseRunner
from evsim.bridge.fold import fold_model
from evsim.bridge.qat import QATNet
from evsim.bridge.train import TrainConfig, train
from evsim.cli import main
from evsim.errors import EvsimError
from evsim.fixedpoint import quantize, real_outputs
from evsim.format import read_network


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)

@pytest.mark.parametrize("arch", ["resnet8", "vgg"])      # identity and conv shortcuts; pooling folded into a conv
@pytest.mark.parametrize("bits", [2, 3])
def test_fake_quantised_folded_weights_are_what_quantize_makes(arch, bits):
    model = small(arch, image_size=16).double()
    qn = quantize(fold_model(model, input_range=(0.0, 1.0)), bits)
    fx = qn.fixed_point
    qat = QATNet(model, bits, input_range=(0.0, 1.0))
    got = qat.quantized_weights()
    assert set(got) == {pr.name for pr in qn.projections}
    for pr in qn.projections:
        w, b = got[pr.name]
        q = fx.membrane_unit[pr.target]
        if pr.kind == "identity":            # the shortcut's rounded scale, in real units
            assert w == pr.scale * q
            continue
        # levels * step * unit: evsim.fixedpoint's integers times the real value of one unit
        unit = fx.weight_scale[pr.name] if pr.name in fx.rescale else q
        assert np.array_equal(w, pr.weight * unit), pr.name
        assert np.unique(np.round(w / fx.weight_scale[pr.name])).size <= 2 ** bits - 1
        assert (b is None) == (pr.bias is None) and (b is None or np.array_equal(b, pr.bias * q)), pr.name
    # and the forward is the integer network's (evsim.bridge.dense, neuron_step_fixed): thresholds, leak
    # floors, saturation and the input's levels included
    x = np.random.default_rng(1).integers(0, 256, (5, 1, 16, 16)) / 255.0
    with torch.no_grad():
        out = qat(torch.from_numpy(x)).numpy()
    ref = real_outputs(qn, DenseRunner(qn)(torch.from_numpy(x)).numpy())
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)


def test_gradients_reach_weights_batchnorm_and_amplitudes_and_batchnorm_stays_frozen():
    model = small("resnet8", image_size=16).float()
    qat = QATNet(model, 2, input_range=(0.0, 1.0)).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.rand(4, 1, 16, 16)
    torch.nn.functional.cross_entropy(qat(x), torch.tensor([0, 1, 2, 3])).backward()
    mods = dict(model.named_modules())
    for name in ("layers.0", "layers.3.conv1", "layers.5.shortcut.0", "layers.8"):
        assert mods[name].weight.grad is not None and mods[name].weight.grad.abs().sum() > 0, name
    assert mods["layers.1"].weight.grad.abs().sum() > 0          # BatchNorm gamma learns through the fold
    assert mods["layers.2"].amplitude.grad.abs().sum() > 0        # amplitudes through the weights they scale
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k
    assert not any(m.training for m in model.modules())


def test_qat_refuses_what_it_does_not_model(restore_threads):
    with pytest.raises(EvsimError, match="LIF"):
        QATNet(small("convnet", neuron="ctsn", image_size=16), 2)
    base = dict(arch="convnet", width=4, epochs=1, train_limit=8, test_limit=8, threads=1)
    with pytest.raises(EvsimError, match="LIF"):
        train(TrainConfig(**base, neuron="ctsn", qat_bits=2), progress=False)
    with pytest.raises(EvsimError, match="TMPR"):
        train(TrainConfig(**base, tmpr=0.05, qat_bits=2), progress=False)
    with pytest.raises(EvsimError, match="qat_bits"):
        train(TrainConfig(**base, qat_bits=1), progress=False)


def test_tiny_qat_run_through_the_cli_exports_and_quantises(tmp_path, restore_threads):
    runner = CliRunner()
    base, ckpt = tmp_path / "base.pt", tmp_path / "qat.pt"
    common = ["--arch", "convnet", "--width", "4", "-T", "2", "--epochs", "1", "--batch-size", "32",
              "--train-limit", "64", "--test-limit", "32", "--threads", "1"]
    r = runner.invoke(main, ["train", *common, "-o", str(base)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", *common, "--init", str(base), "--qat-bits", "2", "--lr", "0.01", "-o", str(ckpt)])
    assert r.exit_code == 0, r.output
    model, raw = load_checkpoint(ckpt)
    assert raw["record"]["train_config"]["qat_bits"] == 2
    h = raw["record"]["history"][-1]
    assert 0 <= h["test_acc_torch"] <= 1 and 0 <= h["test_acc_float"] <= 1
    h5, q2 = tmp_path / "folded.h5", tmp_path / "q2.h5"
    r = runner.invoke(main, ["export", "-c", str(ckpt), "-o", str(h5)])
    assert r.exit_code == 0, r.output
    assert read_network(h5).provenance["training"]["train_config"]["qat_bits"] == 2
    r = runner.invoke(main, ["quantize", "-w", str(h5), "--weight-bits", "2", "-o", str(q2)])
    assert r.exit_code == 0, r.output
    # the checkpoint's QAT accuracy is the quantised file's: same predictions on the test images it used
    from evsim.datasets import load_dataset
    x, _ = load_dataset("fashion-mnist", "test")
    x = x[:32].astype(np.float64)
    qn = read_network(q2)
    with torch.no_grad():
        pred = QATNet(model.double(), 2, input_range=(0.0, 1.0))(torch.from_numpy(x)).argmax(1).numpy()
    assert np.array_equal(pred, DenseRunner(qn)(torch.from_numpy(x)).numpy().argmax(1))
