"""Make models/nir/snntorch_convnet.nir with snnTorch's own NIR export (and the inputs and spikes to check it).

    pip install snntorch==1.0.0 nir==1.0.8 nirtorch==2.6 && python models/nir/make_example.py

A small random network, conv -> Leaky -> avgpool -> conv -> Leaky (+ a residual sum of its input spikes)
-> flatten -> linear -> Leaky, float64, reset to zero. Two workarounds make snnTorch 1.0.0's
``export_to_nir`` pass NIR 1.0.8's type inference (docs/NIR.md): ``ignore_dims=[0]`` (the batch
dimension) and ``beta``/``threshold`` given per neuron, as tensors of the layer's shape (a scalar beta
becomes a NIR LIF of shape (), which the type check refuses).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import snntorch as snn
from snntorch.export_nir import export_to_nir
import nir


def leaky(shape, beta, threshold=1.0, reset="zero", output=False):
    return snn.Leaky(beta=torch.full(shape, beta, dtype=torch.float64),
                     threshold=torch.full(shape, threshold, dtype=torch.float64),
                     reset_mechanism=reset, init_hidden=True, output=output)


class Residual(torch.nn.Module):
    """conv -> Leaky -> avgpool(2) -> conv -> (+ its input, the pooled spikes) -> Leaky -> flatten -> linear -> Leaky."""

    def __init__(self, c=4, hw=8, n_out=5, beta=0.8, reset="zero", residual=True):
        super().__init__()
        self.residual = residual
        self.conv1 = torch.nn.Conv2d(2, c, 3, padding=1)
        self.lif1 = leaky((c, hw, hw), beta, reset=reset)
        self.pool = torch.nn.AvgPool2d(2)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.lif2 = leaky((c, hw // 2, hw // 2), beta * 0.9, threshold=0.75, reset=reset)
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(c * (hw // 2) ** 2, n_out)
        self.lif3 = leaky((n_out,), 0.9, reset=reset)

    def forward(self, x):
        s1 = self.pool(self.lif1(self.conv1(x)))
        y = self.conv2(s1)
        if self.residual:
            y = y + s1                 # float32 spikes + float64: promoted to float64
        s2 = self.lif2(y)
        return self.lif3(self.fc(self.flat(s2)))


def build(seed=0, **kw):
    torch.manual_seed(seed)
    net = Residual(**kw).double()
    with torch.no_grad():
        for m in (net.conv1, net.conv2, net.fc):
            m.weight.mul_(2.0)
            # snnTorch's spikes are float32 whatever the network's dtype ((mem > thr).float()): cast them
            # back to float64 on the way into each weight layer, so that the whole forward pass is float64
            m.register_forward_pre_hook(lambda mod, args: tuple(a.to(mod.weight.dtype) for a in args))
    return net


def forward_spikes(net, x, timesteps):
    """snnTorch's own forward pass, T steps of the same input: {layer: (T, N, ...)} spikes."""
    from snntorch import utils
    utils.reset(net)
    layers = {"lif1": net.lif1, "lif2": net.lif2, "lif3": net.lif3}
    out = {k: [] for k in layers}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: out[k].append(o.detach().numpy().copy()))
             for k, m in layers.items()]
    with torch.no_grad():
        for _ in range(timesteps):
            net(torch.as_tensor(x))
    for h in hooks:
        h.remove()
    return {k: np.stack(v) for k, v in out.items()}


def export(net, sample_shape, path):
    """snnTorch's NIR export: ``export_to_nir``, or, for a network with a residual sum, snnTorch's own per-module
    converter through nirtorch's torch.fx tracer.

    snnTorch 1.0.0's ``export_to_nir`` traces with nirtorch's legacy module-call tracer, which does not see a
    ``+`` between modules: the sum's second operand becomes a dangling extra Input node and the graph is wrong
    (NIR's type check then refuses it on reading). ``nirtorch.torch_to_nir`` (the fx tracer) keeps the sum as two
    edges into the same node, but leaves some input types unset; they are filled in from one forward pass.
    """
    sample = torch.zeros((1,) + tuple(sample_shape), dtype=torch.float64)
    if not getattr(net, "residual", False):
        graph = export_to_nir(net, sample, ignore_dims=[0])
    else:
        import nirtorch
        from snntorch.export_nir import _extract_snntorch_module as convert
        kinds = (snn.Leaky, torch.nn.Conv2d, torch.nn.AvgPool2d, torch.nn.Flatten, torch.nn.Linear)
        shapes, hooks = {}, []
        for name, m in net.named_modules():
            if name:
                hooks.append(m.register_forward_hook(   # (a hook that returns something replaces the output)
                    lambda mod, i, o, name=name: shapes.setdefault(name, (i[0].shape[1:], o.shape[1:])) and None))
        from snntorch import utils
        utils.reset(net)
        with torch.no_grad():
            out = net(sample)
        utils.reset(net)
        for h in hooks:
            h.remove()
        graph = nirtorch.torch_to_nir(net, {k: convert for k in kinds}, default_dict=None, type_check=False)
        for name, node in graph.nodes.items():
            if isinstance(node, nir.Input):
                node.input_type = node.output_type = {"input": np.array(sample_shape)}
            elif isinstance(node, nir.Output):
                node.input_type = node.output_type = {"output": np.array(out.shape[1:])}
            elif name in shapes:
                i, o = shapes[name]
                node.input_type = {"input": np.array(i)}
                node.output_type = {"output": np.array(o)}
                if isinstance(node, nir.Conv2d):
                    node.input_shape = tuple(i[1:])
    nir.write(path, graph)
    return graph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("snntorch_convnet.nir")))
    ap.add_argument("--timesteps", type=int, default=8)
    a = ap.parse_args()
    net = build()
    export(net, (2, 8, 8), a.out)
    x = np.random.default_rng(0).normal(0.5, 1.0, size=(4, 2, 8, 8))
    np.save(Path(a.out).with_name("inputs.npy"), x)
    spikes = forward_spikes(net, x, a.timesteps)
    np.savez(Path(a.out).with_name("snntorch_spikes.npz"), **spikes)
    print(f"wrote {a.out}; snnTorch firing rates:", {k: round(float(v.mean()), 3) for k, v in spikes.items()})


if __name__ == "__main__":
    main()
