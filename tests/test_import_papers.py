"""evsim import --from ternary-spike / ctsn: the papers' state-dict layout in, a spike-exact network out.

Each supported architecture is built at its real widths (they are fixed in the
papers' code) with random weights and random BatchNorm statistics, calibrated
on the network's own activity so that every layer fires at 5-60 %; saved as
their training scripts save it (``torch.save(model.state_dict())`` of the
``SpikeModel`` wrapper); imported and verified through the command line, every
spike of every layer compared in float64. Small inputs and T = 2 keep it quick.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from evsim.bridge import papers
from evsim.cli import main


calibrate = papers.calibrate_random      # random weights firing at realistic rates


def make_checkpoint(path, source, arch, shape, T=2, num_classes=10, prefix="", calib=None, **build_kw):
    torch.manual_seed(0)
    net = papers.build(source, arch, T, shape[0], num_classes, shape, **build_kw)
    calibrate(net, torch.randn(4, *shape), **(calib or {}))
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save(state, path)
    return state


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def import_and_verify(tmp_path, ckpt, source, arch, shape, T=2, extra=()):
    out = tmp_path / "folded.h5"
    res = cli("import", "--from", source, "--arch", arch, "-T", T, "-c", ckpt, "--out", out,
              "--input-shape", ",".join(map(str, shape)), *extra)
    assert res.exit_code == 0, res.output
    res = cli("verify", "-w", out, "-c", ckpt, "--from", source, "--arch", arch, "--samples", 2, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["passed"]
    assert all(layer["identical_float64"] == 1.0 for layer in doc["layers"])
    rates = [layer["spikes_reference"] / (layer["neurons"] * T * doc["samples"]) for layer in doc["layers"]]
    assert 0.05 <= min(rates) and max(rates) <= 0.60, rates
    return doc


# their ImageNet ResNets: the identity-shortcut chains would climb past 60 % with random weights
IMAGENET = {"calib": {"residual_gain": 0.5}}
CASES = [   # source, arch, input shape, build options, number of neuron layers
    ("ternary-spike", "resnet19", (3, 8, 8), {}, 17),
    ("ternary-spike", "resnet20", (3, 8, 8), {}, 19),
    ("ternary-spike", "resnet20m", (3, 16, 16), {}, 19),
    ("ternary-spike", "vgg16", (3, 32, 32), {}, 13),
    ("ctsn", "vgg11", (3, 32, 32), {"form": "static"}, 8),
    # stem map 32 (even): the stem pool's pooled conv needs its edge correction
    ("ternary-spike", "resnet18", (3, 64, 64), IMAGENET, 17),
    # stem map 33 (odd): the composite conv alone is exact
    ("ternary-spike", "resnet18", (3, 66, 66), IMAGENET, 17),
    ("ternary-spike", "resnet34", (3, 64, 64), IMAGENET, 33),
    # AvgDown shortcuts, AvgPool2d(2, ceil_mode=True, count_include_pad=False), on a 3x3 map: partial windows
    ("ternary-spike", "resnet20m", (3, 24, 24), {}, 19),
]


@pytest.mark.parametrize("source,arch,shape,kw,layers", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2][1]}" for c in CASES])
def test_import_verifies_spike_exact(tmp_path, source, arch, shape, kw, layers):
    ckpt = tmp_path / "ckpt.pth"
    make_checkpoint(ckpt, source, arch, shape, **kw)
    doc = import_and_verify(tmp_path, ckpt, source, arch, shape)
    assert len(doc["layers"]) == layers
    from evsim import read_network
    pooled = [pr.name for pr in read_network(tmp_path / "folded.h5").projections if pr.pool is not None]
    if arch in ("resnet18", "resnet34"):            # the stem pool before layer1.0's first conv
        assert pooled == ["model.layer1.0.conv1"]
    elif shape == (3, 24, 24):                       # the AvgDown pool of layer4 on the 3x3 map
        assert pooled == ["model.layer4.0.downsample"]
    else:
        assert pooled == []                          # written as format v1


def test_ctsn_event_form_without_complement_and_with_dropout_layout(tmp_path):
    # event form (their 'dvs' complemental term), DataParallel 'module.' prefix
    ckpt = tmp_path / "event.pth"
    make_checkpoint(ckpt, "ctsn", "vgg11", (3, 32, 32), form="event", prefix="module.")
    doc = import_and_verify(tmp_path, ckpt, "ctsn", "vgg11", (3, 32, 32), extra=("--ctsn-form", "event"))
    assert doc["layers"][0]["population"] == "model.features.2"
    # plain ternary LIF (trained without --complementary) and Dropout between layers (shifted indices)
    ckpt2 = tmp_path / "plain.pth"
    state = make_checkpoint(ckpt2, "ctsn", "vgg11", (3, 32, 32), complementary=False, layout={"dropout": True})
    assert "model.features.5.pool.weight" in state and not any(k.endswith("alpha") for k in state)
    (tmp_path / "folded.h5").unlink()
    doc = import_and_verify(tmp_path, ckpt2, "ctsn", "vgg11", (3, 32, 32))
    assert doc["layers"][1]["population"] == "model.features.7"


def test_key_layout_is_theirs():
    net = papers.build("ternary-spike", "resnet19", 2, 3, 10, (3, 32, 32), device="meta")
    keys = list(net.state_dict())
    assert keys[:3] == ["model.scale", "model.conv1.pool.weight", "model.bn1.conv.weight"]
    for k in ("model.layer1.0.bn1.bn.running_mean", "model.layer2.0.downsample.0.pool.weight",
              "model.layer2.0.downsample.1.bn.running_var", "model.fc.conv.weight", "model.fc.conv.bias"):
        assert k in keys
    assert len(keys) == 117
    m = papers.build("ternary-spike", "resnet20m", 2, 3, 10, (3, 32, 32), device="meta").state_dict()
    assert "model.conv1.0.pool.weight" in m and "model.layer2.0.downsample.1.pool.weight" in m
    assert tuple(m["model.scale"].shape) == (1, 1, 512)
    # their ImageNet ResNet in SpikeModel: SpikePool(conv) at .pool, the stem BN as SpikeConv at .conv, the
    # blocks' BNs as myBatchNorm3d at .bn; no scale
    r18 = papers.build("ternary-spike", "resnet18", 2, 3, 1000, (3, 224, 224), device="meta").state_dict()
    keys = list(r18)
    assert keys[:3] == ["model.conv1.pool.weight", "model.bn1.conv.weight", "model.bn1.conv.bias"]
    assert tuple(r18["model.conv1.pool.weight"].shape) == (64, 3, 7, 7)
    for k in ("model.layer1.0.conv1.pool.weight", "model.layer1.1.bn2.bn.running_mean",
              "model.layer2.0.downsample.0.pool.weight", "model.layer4.0.downsample.1.bn.num_batches_tracked"):
        assert k in keys
    assert tuple(r18["model.fc.conv.weight"].shape) == (1000, 512) and "model.scale" not in r18
    assert len(keys) == 6 + 12 * 8 + 6 * 3 + 2      # stem conv + BN (5 tensors), 8 blocks, 3 downsamples, fc
    r34 = papers.build("ternary-spike", "resnet34", 2, 3, 1000, (3, 224, 224), device="meta").state_dict()
    assert "model.layer3.5.conv2.pool.weight" in r34 and "model.layer3.6.conv1.pool.weight" not in r34


@pytest.fixture(scope="module")
def r19(tmp_path_factory):
    d = tmp_path_factory.mktemp("r19")
    state = make_checkpoint(d / "good.pth", "ternary-spike", "resnet19", (3, 8, 8))
    return d, state


def _import(ckpt, out, arch="resnet19", source="ternary-spike", shape="3,8,8", *extra):
    return cli("import", "--from", source, "--arch", arch, "-T", 2, "-c", ckpt, "--out", out,
               "--input-shape", shape, *extra)


def _one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_wrong_checkpoints_get_one_line(r19, tmp_path):
    _, state = r19

    def save(name, obj):
        p = tmp_path / name
        torch.save(obj, p)
        return p

    out = tmp_path / "x.h5"
    missing = dict(state)
    del missing["model.layer2.1.bn2.bn.running_var"]
    _one_line_error(_import(save("missing.pth", missing), out), "missing key 'model.layer2.1.bn2.bn.running_var'")
    extra = dict(state, **{"model.layer9.weight": torch.zeros(3)})
    _one_line_error(_import(save("extra.pth", extra), out), "unexpected key 'model.layer9.weight'")
    shaped = dict(state, **{"model.layer1.0.conv2.pool.weight": torch.zeros(128, 128, 1, 1)})
    _one_line_error(_import(save("shape.pth", shaped), out), "'model.layer1.0.conv2.pool.weight' has shape (128, 128, 1, 1)")
    _one_line_error(_import(save("module.pth", nn.Linear(2, 2)), out), "weights-only")
    _one_line_error(_import(save("list.pth", [torch.zeros(2)]), out), "not a state_dict")
    _one_line_error(_import(save("strs.pth", {"model.a": "text"}), out), "not a tensor")
    _one_line_error(_import(save("nan.pth", dict(state, **{"model.fc.conv.bias": torch.full((10,), float("nan"))})),
                            out), "NaN")
    _one_line_error(_import(save("scale.pth", dict(state, **{"model.scale": torch.full((1, 1, 2048), 2.0)})), out),
                    "model.scale")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    _one_line_error(_import(junk, out), "cannot read PyTorch checkpoint")
    _one_line_error(_import(tmp_path / "absent.pth", out), "no such file")
    # the wrong architecture names the right one
    _one_line_error(_import(save("r19.pth", state), out, "resnet20"), "missing key", "fits --arch resnet19")
    _one_line_error(_import(save("r19b.pth", state), out, "vgg11", "ctsn"), "missing key")
    assert not out.exists()


def test_refused_architectures_and_geometry(r19, tmp_path):
    d, _ = r19
    out = tmp_path / "x.h5"
    _one_line_error(_import(d / "good.pth", out, "resnet19", "ctsn"), "refused", "LIFAct")
    _one_line_error(_import(d / "good.pth", out, "vggsnn", "ctsn"), "refused")
    _one_line_error(_import(d / "good.pth", out, "resnet50"), "unknown")
    # VGG's last pool feeds the classifier; on a 3x3 map it drops a row: refused, not approximated
    ck = tmp_path / "vgg.pth"
    make_checkpoint(ck, "ternary-spike", "vgg16", (3, 32, 32))
    _one_line_error(_import(ck, out, "vgg16", "ternary-spike", "3,48,48"), "model.features.43",
                    "drops the last rows", "not into the classifier")
    assert not out.exists()


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    d = tmp_path_factory.mktemp("r18")
    state = make_checkpoint(d / "good.pth", "ternary-spike", "resnet18", (3, 32, 32), **IMAGENET)
    return d, state


def test_resnet18_checkpoint_errors_and_default_input(r18, tmp_path):
    d, state = r18
    out = tmp_path / "x.h5"
    bad = dict(state)
    bad["model.layer3.1.bn1.bn.running_meen"] = bad.pop("model.layer3.1.bn1.bn.running_mean")
    p = tmp_path / "miskeyed.pth"
    torch.save(bad, p)
    _one_line_error(_import(p, out, "resnet18", "ternary-spike", "3,32,32"),
                    "does not fit ternary-spike resnet18", "missing key 'model.layer3.1.bn1.bn.running_mean'")
    _one_line_error(_import(d / "good.pth", out, "resnet34", "ternary-spike", "3,32,32"),
                    "missing key 'model.layer1.2.conv1.pool.weight'", "fits --arch resnet18")
    stem = dict(state, **{"model.conv1.pool.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(stem, p)
    _one_line_error(_import(p, out, "resnet18", "ternary-spike", "3,32,32"),
                    "'model.conv1.pool.weight' has shape (64, 3, 3, 3), the architecture needs (64, 3, 7, 7)")
    assert not out.exists()
    # without --input-shape: ImageNet's 3x224x224 (checked on the re-expression; folding it is not needed here)
    net = papers.load_paper_checkpoint(d / "good.pth", "ternary-spike", "resnet18", 2)
    assert net.input_shape == (3, 224, 224) and net.config["num_classes"] == 10


def test_output_not_replaced_without_force(r19, tmp_path):
    d, _ = r19
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep")
    _one_line_error(_import(d / "good.pth", out), "already exists")
    assert out.read_bytes() == b"keep"
    assert _import(d / "good.pth", out, "resnet19", "ternary-spike", "3,8,8", "--force").exit_code == 0
    # and verify refuses a checkpoint that is not the one folded
    other = tmp_path / "other.pth"
    state = {k: (v + 0.5 if k.endswith("conv1.pool.weight") else v) for k, v in r19[1].items()}
    torch.save(state, other)
    res = cli("verify", "-w", out, "-c", other, "--from", "ternary-spike", "--arch", "resnet19", "--samples", 2)
    assert res.exit_code == 1 and "FAILED" in res.output
    res = cli("verify", "-w", out, "-c", other, "--from", "ternary-spike")
    assert res.exit_code == 2


def test_fold_matches_reference_outputs():
    shape = (3, 8, 8)
    net = papers.build("ternary-spike", "resnet20", 2, 3, 10, shape)
    calibrate(net, torch.randn(3, *shape))
    from evsim.bridge.dense import run_folded_torch
    from evsim.bridge.papers.fold import fold_paper_model
    network = fold_paper_model(net)
    x = torch.from_numpy(papers.sample_inputs(shape, 2))
    out, _ = run_folded_torch(network, x)
    with torch.no_grad():
        ref = net.double()(x)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-9)


def test_a_float64_checkpoint_keeps_every_bit(r19, tmp_path):
    """A state dict saved in float64 is folded from its own values, not from float32 roundings of them: the
    re-expression holds them bit for bit, and the folded stem differs from a float32 copy's fold."""
    _, state = r19
    rng = torch.Generator().manual_seed(1)
    wide = {k: (v.double() + 1e-12 * torch.randn(v.shape, generator=rng, dtype=torch.float64)
                if v.is_floating_point() and k != "model.scale" else v) for k, v in state.items()}
    torch.save(wide, tmp_path / "wide.pth")
    net = papers.load_paper_checkpoint(tmp_path / "wide.pth", "ternary-spike", "resnet19", 2, 10, (3, 8, 8))
    got = net.state_dict()
    for k, v in wide.items():
        if v.is_floating_point():
            assert got[k].dtype == torch.float64 and torch.equal(got[k], v), k
    assert _import(tmp_path / "wide.pth", tmp_path / "wide.h5").exit_code == 0
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in wide.items()}, tmp_path / "narrow.pth")
    assert _import(tmp_path / "narrow.pth", tmp_path / "narrow.h5").exit_code == 0
    from evsim.format import read_network
    a, b = read_network(tmp_path / "wide.h5"), read_network(tmp_path / "narrow.h5")
    wa = {p.name: p.weight for p in a.projections if p.weight is not None}
    wb = {p.name: p.weight for p in b.projections if p.weight is not None}
    assert any(not np.array_equal(wa[n], wb[n]) for n in wa)
    r = cli("verify", "--weights", tmp_path / "wide.h5", "--checkpoint", tmp_path / "wide.pth", "--from",
            "ternary-spike", "--arch", "resnet19", "--samples", 2)
    assert r.exit_code == 0 and "PASSED" in r.output, r.output
