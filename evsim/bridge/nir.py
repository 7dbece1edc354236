"""NIR (Neuromorphic Intermediate Representation) graphs in and out of evsim, without PyTorch or the nir package.

A ``.nir`` file is HDF5 (nir.write's layout: ``/version``, ``/node`` a NIRGraph group with ``type``,
``nodes/<name>/...`` and ``edges`` (E, 2) strings). It is read here as hostile, with the checks of
:mod:`evsim.format` (a regular file, hard links only, no external or virtual storage, known filters, real
numbers, every size against :class:`evsim.limits.Limits` before it is read), then lowered to an
:class:`evsim.graph.Network`. docs/NIR.md states the mapping, the discretisation rules and what is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import FormatError, NetworkError
from ..files import atomic_write
from ..graph import INPUT, READOUT, RESERVED, Network, Population, Projection, conv_output_hw
from ..limits import Limits

DISCRETISATIONS = {
    # name: (rule, default dt)
    "snntorch": ("euler", 1e-4),     # beta = 1 - dt/tau, input gain r*dt/tau; dt of snnTorch's export
    "norse": ("euler", 1e-3),        # the same forward-Euler rule at Norse's default dt
    "exp": ("exp", 1e-3),            # beta = exp(-dt/tau), input gain r*(1 - beta) (exact for a held input)
}
RESETS = ("nir", "subtract")
NEURONS = ("LIF", "IF", "CubaLIF", "Threshold")
LINEAR = ("Affine", "Linear", "Conv2d", "Scale", "Flatten", "SumPool2d", "AvgPool2d")
READOUTS = ("LI", "CubaLI")
KNOWN = ("Input", "Output") + NEURONS + LINEAR + READOUTS
MAX_TEXT = 4096                      # characters in one name or type string
EVSIM_META = "evsim_model"           # metadata key of evsim's extension (docs/NIR.md, "Export")


class NirError(NetworkError):
    """A NIR graph evsim cannot run exactly: the message names the node."""


@dataclass
class Node:
    name: str
    type: str
    p: dict = field(default_factory=dict)       # parameter name -> float64 array
    meta: dict = field(default_factory=dict)    # metadata name -> float or str


# ------------------------------------------------------------------------------------------------ reading
def read_nir(path: str | os.PathLike, limits: Limits | None = None) -> tuple[dict[str, Node], list[tuple[str, str]]]:
    """Nodes and edges of the top-level NIRGraph in ``path``; any problem is one :class:`EvsimError` line."""
    from ..format import open_hdf5

    limits = limits or Limits.from_env()
    with open_hdf5(path, "NIR file", malformed="malformed NIR file",
                   not_hdf5_hint=" (a .nir file is HDF5, as nir.write makes it)") as f:
        return _read_graph(f, str(path), limits)


def _text_ds(group, name, where, path, limits, max_items=1):
    from ..format import _dataset
    ds = _dataset(group, name, where, path, text=True)
    if ds is None:
        return None
    if ds.size > max_items:
        raise FormatError(f"{where}: {path} holds {ds.size} strings, more than the {max_items} expected")
    v = ds[()]
    items = np.asarray(v, dtype=object).reshape(-1) if isinstance(v, np.ndarray) else [v]
    out = []
    for s in items:
        s = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
        if len(s) > MAX_TEXT or not s.isprintable():
            raise FormatError(f"{where}: {path} is not a short printable name")
        out.append(s)
    return (np.array(out, dtype=object).reshape(ds.shape) if isinstance(v, np.ndarray) and ds.shape else out[0])


def _num_ds(ds, where, path, limits, budget):
    from ..format import _dataset, _load
    ds = _dataset(ds.parent, ds.name.rsplit("/", 1)[-1], where, path)
    n = int(np.prod(ds.shape, dtype=object))
    budget[0] += 8 * n
    limits.check_bytes(f"{where}: NIR parameters (at {path})", budget[0])
    return _load(ds)


def _read_graph(f, where, limits):
    from ..format import _member
    node = _member(f, "node", where, "/node")
    if not isinstance(node, h5py.Group):
        raise FormatError(f"{where}: no /node group: not a NIR file")
    kind = _text_ds(node, "type", where, "/node/type", limits)
    if kind != "NIRGraph":
        raise FormatError(f"{where}: /node is a {kind!r}, not a NIRGraph")
    nodes_g = _member(node, "nodes", where, "/node/nodes")
    if not isinstance(nodes_g, h5py.Group):
        raise FormatError(f"{where}: /node/nodes is missing")
    if len(nodes_g) > limits.max_objects:
        raise FormatError(f"{where}: {len(nodes_g)} NIR nodes, more than the {limits.max_objects} allowed "
                          f"(EVSIM_MAX_OBJECTS)")
    budget = [0]
    nodes: dict[str, Node] = {}
    for name in nodes_g:
        if len(name) > MAX_TEXT or not name.isprintable() or not name:
            raise FormatError(f"{where}: NIR node name {name[:40]!r} is not a short printable name")
        g = _member(nodes_g, name, where, f"/node/nodes/{name}")
        if not isinstance(g, h5py.Group):
            raise FormatError(f"{where}: NIR node {name!r} is not a group")
        t = _text_ds(g, "type", where, f"/node/nodes/{name}/type", limits)
        if t is None:
            raise FormatError(f"{where}: NIR node {name!r} has no type")
        if t == "NIRGraph":
            raise NirError(f"NIR node {name!r}: a nested NIRGraph (a recurrent or composite layer) is not supported")
        nd = Node(name, t)
        if len(g) > 64:
            raise FormatError(f"{where}: NIR node {name!r} has {len(g)} members")
        for k in g:
            if k == "type":
                continue
            obj = _member(g, k, where, f"/node/nodes/{name}/{k}")
            if isinstance(obj, h5py.Group):
                if k != "metadata":
                    raise FormatError(f"{where}: NIR node {name!r} has an unexpected group {k!r}")
                for mk in list(obj)[:64]:
                    mo = _member(obj, mk, where, f"/node/nodes/{name}/metadata/{mk}")
                    if isinstance(mo, h5py.Dataset) and mo.dtype.kind in "OSU":
                        nd.meta[mk] = _text_ds(obj, mk, where, f"/node/nodes/{name}/metadata/{mk}", limits)
                    elif isinstance(mo, h5py.Dataset) and mo.size == 1:
                        nd.meta[mk] = float(_num_ds(mo, where, mk, limits, budget).reshape(-1)[0])
                continue
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "OSU":
                continue                     # text members are not parameters (none that evsim needs)
            nd.p[k] = _num_ds(obj, where, f"/node/nodes/{name}/{k}", limits, budget)
        nodes[name] = nd
    edges_raw = _text_ds(node, "edges", where, "/node/edges", limits, max_items=2 * 4 * limits.max_objects)
    edges: list[tuple[str, str]] = []
    if edges_raw is not None:
        arr = np.asarray(edges_raw, dtype=object)
        if arr.size and (arr.ndim != 2 or arr.shape[1] != 2):
            raise FormatError(f"{where}: /node/edges must be (E, 2) node names, got shape {arr.shape}")
        edges = [(str(a), str(b)) for a, b in arr.reshape(-1, 2)]
    return nodes, edges


# ------------------------------------------------------------------------------------------------ lowering
def _uniform(node: Node, key: str, default=None) -> float:
    if key not in node.p:
        if default is None:
            raise NirError(f"NIR node {node.name!r} ({node.type}): parameter {key!r} is missing")
        return default
    a = node.p[key]
    if a.size == 0:
        raise NirError(f"NIR node {node.name!r} ({node.type}): parameter {key!r} is empty")
    v = float(a.reshape(-1)[0])
    if not np.all(a == v):
        raise NirError(f"NIR node {node.name!r} ({node.type}): parameter {key!r} differs between neurons; evsim "
                       f"holds one value per population")
    if not math.isfinite(v):
        raise NirError(f"NIR node {node.name!r} ({node.type}): parameter {key!r} is not finite")
    return v


def _ints(node: Node, key: str, n=2, default=None) -> tuple[int, ...]:
    if key not in node.p:
        if default is None:
            raise NirError(f"NIR node {node.name!r} ({node.type}): parameter {key!r} is missing")
        return default
    a = node.p[key].reshape(-1)
    if a.size == 1:
        a = np.repeat(a, n)
    if a.size != n or not np.all(a == np.round(a)) or np.any(np.abs(a) > 1 << 20):
        raise NirError(f"NIR node {node.name!r} ({node.type}): {key!r} must be {n} integers, got {a.tolist()[:4]}")
    return tuple(int(x) for x in a)


def _snap1(g: float) -> float:
    """A gain within 4 ulp of 1 is 1: snnTorch writes r = tau/dt, so r*dt/tau is 1 up to rounding."""
    return 1.0 if abs(g - 1.0) <= 4 * np.finfo(np.float64).eps else g


def _decay_gain(node: Node, tau: float, r: float, rule: str, dt: float) -> tuple[float, float]:
    if not tau > 0:
        raise NirError(f"NIR node {node.name!r} ({node.type}): tau must be > 0, got {tau}")
    if rule == "euler":
        if dt > tau:
            raise NirError(f"NIR node {node.name!r} ({node.type}): dt {dt} > tau {tau}: forward Euler would give a "
                           f"negative decay (pick --dt or --discretisation exp)")
        return 1.0 - dt / tau, _snap1(r * dt / tau)
    beta = math.exp(-dt / tau)
    return beta, r * (1.0 - beta)


def neuron_params(node: Node, rule: str, dt: float, reset: str, discretisation: str):
    """(model, params, input gain) of one NIR neuron node; refuses what format v1 cannot run exactly."""
    t = node.type
    if EVSIM_META in node.meta:                  # evsim's own extension: the exact model, as exported
        model = str(node.meta[EVSIM_META])
        params = {k[len("evsim_"):]: float(v) for k, v in node.meta.items()
                  if k.startswith("evsim_") and k != EVSIM_META}
        return model, params, 1.0
    if t == "Threshold":
        th = _uniform(node, "threshold")
        return "binary_lif", {"tau": 0.0, "v_threshold": th}, 1.0
    v_th = _uniform(node, "v_threshold")
    if reset == "nir" and _uniform(node, "v_reset", 0.0) != 0.0:
        raise NirError(f"NIR node {node.name!r} ({t}): v_reset {_uniform(node, 'v_reset', 0.0)} != 0; evsim resets "
                       f"to zero (or by subtraction with --reset subtract)")
    if t != "IF" and _uniform(node, "v_leak", 0.0) != 0.0:
        raise NirError(f"NIR node {node.name!r} ({t}): v_leak != 0 is not supported")
    sub = reset == "subtract"
    if t == "IF":
        return ("binary_lif_sub" if sub else "binary_lif"), {"tau": 1.0, "v_threshold": v_th}, _uniform(node, "r", 1.0)
    if t == "LIF":
        beta, gain = _decay_gain(node, _uniform(node, "tau"), _uniform(node, "r", 1.0), rule, dt)
        return ("binary_lif_sub" if sub else "binary_lif"), {"tau": beta, "v_threshold": v_th}, gain
    if t == "CubaLIF":
        # every rule (Norse 1.1.0's from_nir included: a LIBoxCell synapse into a LIFBoxCell) feeds the membrane the
        # current of the same step, as evsim's cuba_lif does (docs/NIR.md, "Measured against Norse")
        alpha, g_syn = _decay_gain(node, _uniform(node, "tau_syn"), _uniform(node, "w_in", 1.0), rule, dt)
        beta, g_mem = _decay_gain(node, _uniform(node, "tau_mem"), _uniform(node, "r", 1.0), rule, dt)
        return ("cuba_lif_sub" if sub else "cuba_lif"), {"tau": beta, "v_threshold": v_th, "k_syn": alpha}, \
            _snap1(g_syn * g_mem)
    raise NirError(f"NIR node {node.name!r}: {t} is not a spiking neuron evsim runs")


class _Lowering:
    """NIR nodes in topological order -> populations and projections. A path is (source, ops): the spikes (or the
    input) of ``source`` through a chain of linear NIR nodes; at a neuron the paths into it become projections."""

    def __init__(self, nodes, edges, limits, input_shape=None):
        self.nodes, self.edges, self.limits = nodes, edges, limits
        for a, b in edges:
            for x in (a, b):
                if x not in nodes:
                    raise NirError(f"NIR edge {a!r} -> {b!r}: no node named {x!r}")
        for n in nodes.values():
            if n.type not in KNOWN:
                raise NirError(f"NIR node {n.name!r}: {n.type} is not supported by evsim "
                               f"(supported: {', '.join(KNOWN)})")
        self.pred = {n: [] for n in nodes}
        self.succ = {n: [] for n in nodes}
        for a, b in dict.fromkeys(edges):
            self.pred[b].append(a)
            self.succ[a].append(b)
        ins = [n for n in nodes.values() if n.type == "Input" and self.succ[n.name]]
        outs = [n for n in nodes.values() if n.type == "Output" and self.pred[n.name]]
        if len(ins) != 1 or len(outs) != 1:
            raise NirError(f"NIR graph: evsim runs graphs with one Input and one Output node; this one has "
                           f"{len(ins)} connected Input and {len(outs)} connected Output nodes "
                           f"({', '.join(n.name for n in ins + outs)})")
        self.input, self.output = ins[0], outs[0]
        if input_shape is None:
            shp = self.input.p.get("shape")
            if shp is None or shp.ndim != 1 or not np.all(shp == np.round(shp)) or shp.size == 0:
                raise NirError(f"NIR node {self.input.name!r} (Input): no shape; give --input-shape")
            input_shape = tuple(int(s) for s in shp)
            if len(input_shape) in (2, 4) and input_shape[0] == 1:
                input_shape = input_shape[1:]        # a batch dimension left in by an export without ignore_dims
        if len(input_shape) not in (1, 3) or min(input_shape) < 1:
            raise NirError(f"NIR node {self.input.name!r} (Input): shape {input_shape} is not (C, H, W) or (n,)")
        self.input_shape = tuple(input_shape)
        self.order = self._toposort()

    def _toposort(self):
        waiting = {n: len(set(p)) for n, p in self.pred.items()}
        ready = [n for n in self.nodes if waiting[n] == 0]
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for s in dict.fromkeys(self.succ[n]):
                waiting[s] -= 1
                if waiting[s] == 0:
                    ready.append(s)
        if len(order) < len(self.nodes):
            left = sorted(set(self.nodes) - set(order))[:5]
            raise NirError(f"NIR graph: a recurrent connection through {', '.join(left)}; format v1 holds "
                           f"feed-forward networks only")
        return order

    # every path: (source population or INPUT, source shape, [(Node, with_bias)], output shape)
    def lower(self, rule, dt, reset, discretisation, li_readout):
        self.pops, self.projs = [], []
        paths: dict[str, list] = {}
        names = {}
        for n in self.order:
            node = self.nodes[n]
            if node.type == "Input":
                paths[n] = [(INPUT, self.input_shape, [], self.input_shape)] if n == self.input.name else []
                continue
            incoming = [p for a in self.pred[n] for p in paths[a]]
            if not incoming and node.type != "Input":
                paths[n] = []
                continue
            shapes = {p[3] for p in incoming}
            if len(shapes) > 1:
                raise NirError(f"NIR node {n!r} ({node.type}): its inputs have different shapes {sorted(shapes)}")
            shape = incoming[0][3]
            if node.type in LINEAR:
                out = self._shape_after(node, shape)
                paths[n] = [(s, ss, ops + [(node, i == 0)], out) for i, (s, ss, ops, _) in enumerate(incoming)]
            elif node.type in NEURONS or EVSIM_META in node.meta:
                model, params, gain = neuron_params(node, rule, dt, reset, discretisation)
                pname = n if n not in RESERVED and "/" not in n else f"nir.{n}".replace("/", ".")
                names[n] = pname
                self._check_neuron_shape(node, shape)
                self.pops.append(Population(pname, shape, model, params))
                for i, path in enumerate(incoming):
                    self.projs.append(self._project(f"{pname}.in{i}", path, pname, shape, gain))
                paths[n] = [(pname, shape, [], shape)]
            elif node.type in READOUTS:
                if self.succ[n] != [self.output.name]:
                    raise NirError(f"NIR node {n!r} ({node.type}): a leaky integrator is supported only as the "
                                   f"readout (feeding the Output)")
                if not li_readout:
                    raise NirError(f"NIR node {n!r} ({node.type}): evsim's readout is the mean of its input over T, "
                                   f"not a leaky membrane; pass --li-readout mean to accept that")
                paths[n] = incoming
            elif node.type == "Output":
                for i, path in enumerate(incoming):
                    self.projs.append(self._project(f"readout.in{i}", path, READOUT, None, 1.0))
                paths[n] = []
            else:
                raise NirError(f"NIR node {n!r}: {node.type} is not supported")
        return self.pops, self.projs

    def _check_neuron_shape(self, node, shape):
        for k, a in node.p.items():
            if a.ndim and a.size > 1 and math.prod(a.shape) != math.prod(shape):
                raise NirError(f"NIR node {node.name!r} ({node.type}): parameter {k!r} has shape {a.shape}, its "
                               f"input has shape {shape}")

    def _shape_after(self, node, shape):
        t = node.type
        if t == "Flatten":
            s0 = int(_ints(node, "start_dim", 1, (0,))[0])
            e0 = int(_ints(node, "end_dim", 1, (-1,))[0])
            nd = len(shape)
            if s0 < 0:
                s0 += nd
            if e0 < 0:
                e0 += nd
            if not (0 <= s0 <= e0 < nd) or (s0, e0) not in ((0, nd - 1),):
                raise NirError(f"NIR node {node.name!r} (Flatten): only a flatten of the whole sample "
                               f"(start_dim 0, end_dim -1) is supported, got {s0}..{e0} of {shape}")
            return (math.prod(shape),)
        if t in ("Affine", "Linear"):
            w = node.p.get("weight")
            if w is None or w.ndim != 2:
                raise NirError(f"NIR node {node.name!r} ({t}): weight must be 2-D")
            if w.shape[1] != math.prod(shape) or (len(shape) != 1):
                raise NirError(f"NIR node {node.name!r} ({t}): weight {w.shape} does not fit its input {shape}"
                               + (" (flatten it first)" if len(shape) != 1 else ""))
            if t == "Affine" and node.p.get("bias", np.zeros(w.shape[0])).shape != (w.shape[0],):
                raise NirError(f"NIR node {node.name!r} (Affine): bias shape does not fit weight {w.shape}")
            return (w.shape[0],)
        if t == "Scale":
            s = node.p.get("scale")
            if s is None or not (s.size == 1 or math.prod(s.shape) == math.prod(shape) or
                                 (len(shape) == 3 and s.size == shape[0])):
                raise NirError(f"NIR node {node.name!r} (Scale): scale does not fit its input {shape}")
            return shape
        if len(shape) != 3:
            raise NirError(f"NIR node {node.name!r} ({t}): needs a (C, H, W) input, got {shape}")
        if t == "Conv2d":
            w = node.p.get("weight")
            if w is None or w.ndim != 4 or w.shape[1] != shape[0]:
                raise NirError(f"NIR node {node.name!r} (Conv2d): weight does not fit its input {shape}")
            if _ints(node, "dilation", 2, (1, 1)) != (1, 1) or _ints(node, "groups", 1, (1,)) != (1,):
                raise NirError(f"NIR node {node.name!r} (Conv2d): dilated or grouped convolutions are not supported")
            st, pd = _ints(node, "stride", 2, (1, 1)), _ints(node, "padding", 2, (0, 0))
            if min(st) < 1 or min(pd) < 0:
                raise NirError(f"NIR node {node.name!r} (Conv2d): invalid stride {st} or padding {pd}")
            ho, wo = conv_output_hw(shape[1], shape[2], w.shape[2:], st, pd)
            if ho < 1 or wo < 1:
                raise NirError(f"NIR node {node.name!r} (Conv2d): output would be empty")
            return (w.shape[0], ho, wo)
        # pools
        k = _ints(node, "kernel_size")
        st = _ints(node, "stride", 2, k)
        pd = _ints(node, "padding", 2, (0, 0))
        if min(k) < 1 or min(st) < 1 or min(pd) < 0:
            raise NirError(f"NIR node {node.name!r} ({t}): invalid kernel {k}, stride {st} or padding {pd}")
        ho, wo = conv_output_hw(shape[1], shape[2], k, st, pd)
        if ho < 1 or wo < 1:
            raise NirError(f"NIR node {node.name!r} ({t}): output would be empty")
        return (shape[0], ho, wo)

    def _project(self, name, path, target, tshape, gain):
        """One projection for one path: [pool | scale | flatten]* [conv | affine | linear] [scale | flatten]*."""
        source, sshape, ops, oshape = path
        where = " -> ".join([source] + [nd.name for nd, _ in ops] + [target])
        weights = [i for i, (nd, _) in enumerate(ops) if nd.type in ("Conv2d", "Affine", "Linear")]
        if len(weights) > 1:
            a, b = ops[weights[0]][0], ops[weights[1]][0]
            raise NirError(f"NIR node {b.name!r} ({b.type}): follows {a.name!r} ({a.type}) with no neuron between; "
                           f"evsim does not compose two weight layers")
        w = ops[weights[0]][0] if weights else None
        pre = ops[:weights[0]] if weights else ops
        post = ops[weights[0] + 1:] if weights else []
        # the chain before the weight: pools (folded by kernel expansion), flattens, scalar or per-channel scales
        pools, in_scale, shape = [], None, sshape
        for nd, _ in pre:
            if nd.type in ("AvgPool2d", "SumPool2d"):
                pools.append((nd, shape))
            elif nd.type == "Scale":
                in_scale = (nd, shape)
                if pools:
                    raise NirError(f"NIR node {nd.name!r} (Scale): a scale after a pool and before a weight is "
                                   f"not supported")
            shape = self._shape_after(nd, shape)
        pre_shape = shape
        if w is None:
            return self._pool_or_identity(name, source, sshape, pre, target, tshape, gain, where)
        W = w.p["weight"].astype(np.float64, copy=True)
        b = (w.p["bias"].astype(np.float64, copy=True) if "bias" in w.p and ops[weights[0]][1] else
             np.zeros(W.shape[0]))
        has_bias = "bias" in w.p and ops[weights[0]][1] and np.any(b != 0)
        if in_scale is not None:
            nd, sh = in_scale
            s = nd.p["scale"].reshape(-1)
            if w.type == "Conv2d":
                if s.size not in (1, sh[0]) and not np.all(s.reshape(sh[0], -1) == s.reshape(sh[0], -1)[:, :1]):
                    raise NirError(f"NIR node {nd.name!r} (Scale): a conv's input scale must be one per channel")
                sc = s if s.size == 1 else s.reshape(sh[0], -1)[:, 0]
                W = W * (sc[None, :, None, None] if sc.size > 1 else sc)
            else:
                W = W * s[None, :] if s.size > 1 else W * s
        kind = "conv2d" if w.type == "Conv2d" else "linear"
        stride, padding = (_ints(w, "stride", 2, (1, 1)), _ints(w, "padding", 2, (0, 0))) if kind == "conv2d" \
            else ((1, 1), (0, 0))
        for nd, sh in reversed(pools):                    # innermost first: expand the weight over the pool
            k, st, pd = _ints(nd, "kernel_size"), _ints(nd, "stride", 2, _ints(nd, "kernel_size")), \
                _ints(nd, "padding", 2, (0, 0))
            if k[0] != k[1] or st != k or pd != (0, 0) or sh[1] % k[0] or sh[2] % k[1]:
                raise NirError(f"NIR node {nd.name!r} ({nd.type}): only a pool that tiles its {sh[1]}x{sh[2]} map "
                               f"(stride = kernel, no padding) folds into the following {w.type} {w.name!r}")
            f_ = k[0]
            div = f_ * f_ if nd.type == "AvgPool2d" else 1
            if kind == "conv2d":
                W = np.repeat(np.repeat(W, f_, axis=2), f_, axis=3) / div
                stride, padding = (stride[0] * f_, stride[1] * f_), (padding[0] * f_, padding[1] * f_)
            else:
                c, hp, wp = sh[0], sh[1] // f_, sh[2] // f_
                W = np.repeat(np.repeat(W.reshape(W.shape[0], c, hp, wp), f_, axis=2), f_, axis=3) / div
                W = W.reshape(W.shape[0], -1)
        # after the weight: scales (per output channel for a conv) and flattens
        for nd, _ in post:
            if nd.type == "Scale":
                s = nd.p["scale"]
                if kind == "conv2d":
                    co = W.shape[0]
                    sr = s.reshape(-1)
                    if sr.size != 1:
                        sr = sr.reshape(co, -1) if sr.size % co == 0 else None
                        if sr is None or not np.all(sr == sr[:, :1]):
                            raise NirError(f"NIR node {nd.name!r} (Scale): after a conv a scale must be one per "
                                           f"channel")
                        sr = sr[:, 0]
                    W = W * (sr[:, None, None, None] if sr.size > 1 else sr)
                    b = b * sr
                else:
                    sr = s.reshape(-1)
                    W = W * (sr[:, None] if sr.size > 1 else sr)
                    b = b * sr
            elif nd.type != "Flatten":
                raise NirError(f"NIR node {nd.name!r} ({nd.type}): after {w.name!r} ({w.type}) with no neuron "
                               f"between; evsim folds pools only into the weight layer that follows them")
        if kind == "conv2d" and (target == READOUT or len(tshape) != 3):
            raise NirError(f"NIR node {w.name!r} (Conv2d): feeds {'the readout' if target == READOUT else target!r} "
                           f"through a flatten; format v1 needs a conv to feed a (C, H, W) population")
        W, b = W * gain, b * gain
        del pre_shape
        return Projection(name, source, target, kind, W, b if has_bias else None, stride, padding)

    def _pool_or_identity(self, name, source, sshape, pre, target, tshape, gain, where):
        """No weight layer: an identity (times a scalar scale and gain), or pools as a diagonal conv."""
        pools = [nd for nd, _ in pre if nd.type in ("AvgPool2d", "SumPool2d")]
        scale = 1.0
        for nd, _ in pre:
            if nd.type == "Scale":
                s = nd.p["scale"].reshape(-1)
                if not np.all(s == s[0]):
                    raise NirError(f"NIR node {nd.name!r} (Scale): a per-neuron scale needs a weight layer to fold "
                                   f"into")
                scale *= float(s[0])
        if target == READOUT:
            if pools or len(sshape) != 1 and False:
                raise NirError(f"{where}: pooling straight into the Output is not supported")
            n = math.prod(sshape)
            return Projection(name, source, READOUT, "linear", np.eye(n) * scale * gain)
        if len(pools) > 1:
            raise NirError(f"NIR node {pools[1].name!r}: two pools with no weight layer or neuron between")
        if pools:
            nd = pools[0]
            k = _ints(nd, "kernel_size")
            st, pd = _ints(nd, "stride", 2, k), _ints(nd, "padding", 2, (0, 0))
            c = sshape[0]
            W = np.zeros((c, c) + k)
            W[np.arange(c), np.arange(c)] = (1.0 / (k[0] * k[1]) if nd.type == "AvgPool2d" else 1.0)
            return Projection(name, source, target, "conv2d", W * scale * gain, None, st, pd)
        if source == INPUT:          # a direct-encoded input feeds a neuron one to one: a diagonal weight
            if len(sshape) == 3:
                c = sshape[0]
                W = np.zeros((c, c, 1, 1))
                W[np.arange(c), np.arange(c)] = scale * gain
                return Projection(name, source, target, "conv2d", W)
            return Projection(name, source, target, "linear", np.eye(sshape[0]) * scale * gain)
        if tuple(sshape) != tuple(tshape):
            return Projection(name, source, target, "linear", np.eye(math.prod(sshape)) * scale * gain)
        return Projection(name, source, target, "identity", scale=scale * gain)


def nir_to_network(path, timesteps: int = 10, dt: float | None = None, discretisation: str = "snntorch",
                   reset: str = "nir", input_shape=None, encoding: str = "direct", li_readout: bool = False,
                   limits: Limits | None = None) -> Network:
    """Read a NIR file and lower it to a validated :class:`Network` (docs/NIR.md)."""
    if discretisation not in DISCRETISATIONS:
        raise NirError(f"unknown discretisation {discretisation!r} (known: {', '.join(DISCRETISATIONS)})")
    if reset not in RESETS:
        raise NirError(f"unknown reset {reset!r} (known: {', '.join(RESETS)})")
    rule, dt0 = DISCRETISATIONS[discretisation]
    dt = dt0 if dt is None else float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise NirError(f"dt must be a positive number, got {dt}")
    nodes, edges = read_nir(path, limits)
    low = _Lowering(nodes, edges, limits or Limits.from_env(), input_shape)
    pops, projs = low.lower(rule, dt, reset, discretisation, li_readout)
    if not pops:
        raise NirError("NIR graph: no spiking neuron between the Input and the Output")
    net = Network(pops, projs, timesteps, low.input_shape, encoding=encoding,
                  provenance={"source": "nir", "file": os.path.basename(str(path)), "discretisation": discretisation,
                              "dt": dt, "reset": reset})
    return net.validate()


# ------------------------------------------------------------------------------------------------ export
def _lif_nodes(pop: Population, dt: float) -> tuple[str, dict, dict]:
    """(NIR type, parameters, metadata) of one population, in snnTorch's convention at ``dt``."""
    shape = pop.shape
    full = lambda v: np.full(shape, float(v))        # noqa: E731
    m, prm = pop.model, pop.params
    # evsim's extension: the exact model and constants ride in the metadata (read back bit for bit); the node
    # itself is the nearest NIR neuron, exact for binary_lif and cuba_lif up to the rounding of tau = dt/(1-beta)
    meta = {EVSIM_META: m, **{f"evsim_{k}": float(v) for k, v in prm.items()}}
    tau_of = lambda beta: dt / (1.0 - beta) if beta < 1 else np.inf  # noqa: E731
    if m.startswith("cuba"):
        tm, ts = tau_of(prm["tau"]), tau_of(prm["k_syn"])
        return "CubaLIF", dict(tau_mem=full(tm), tau_syn=full(ts), r=full(tm / dt), w_in=full(ts / dt),
                               v_leak=full(0), v_reset=full(0), v_threshold=full(prm["v_threshold"])), meta
    beta = min(max(prm["tau"], 0.0), 1.0 - 1e-12)
    t = tau_of(beta)
    return "LIF", dict(tau=full(t), r=full(t / dt), v_leak=full(0), v_reset=full(0),
                       v_threshold=full(prm["v_threshold"])), meta


def network_to_nir(net: Network, path, dt: float = 1e-4, force: bool = False, nir_version: str = "1.0.8") -> None:
    """Write ``net`` as a NIR graph (nir.write's HDF5 layout). Neurons in snnTorch's convention at ``dt``; models
    NIR has no node for carry ``evsim_model`` metadata that :func:`nir_to_network` reads back exactly. The
    readout (mean over T) becomes Affine nodes into the Output: a NIR runtime reports them per step."""
    net.validate()
    pooled = [pr.name for pr in net.projections if pr.pool is not None]
    if pooled:
        raise NetworkError(f"projection {pooled[0]!r} is a pooled conv (format v3): NIR export of average pooling "
                           f"before a conv is not supported (NIR's AvgPool2d does not state ceil_mode or how "
                           f"padding counts)")
    nodes: dict[str, tuple[str, dict, dict]] = {"input": ("Input", {"shape": np.array(net.input_shape)}, {})}
    edges = []
    for pop in net.populations:
        nodes[pop.name] = _lif_nodes(pop, dt)
    n_out = net.n_classes
    nodes["output"] = ("Output", {"shape": np.array([n_out])}, {})
    for pr in net.projections:
        src = "input" if pr.source == INPUT else pr.source
        dst = "output" if pr.target == READOUT else pr.target
        key = f"proj.{pr.name}"
        shape = net.shape_of(pr.source)
        if pr.kind == "identity":
            nodes[key] = ("Scale", {"scale": np.full(shape, pr.scale)}, {})
        elif pr.kind == "linear":
            flat = f"{key}.flatten"
            b = pr.bias if pr.bias is not None else None
            nodes[key] = (("Affine", {"weight": pr.weight, "bias": b}, {}) if b is not None
                          else ("Linear", {"weight": pr.weight}, {}))
            if len(shape) == 3:
                nodes[flat] = ("Flatten", {"start_dim": np.int64(0), "end_dim": np.int64(-1),
                                           "input_type": np.array(shape)}, {})
                edges += [(src, flat)]
                src = flat
        else:
            b = pr.bias if pr.bias is not None else np.zeros(pr.weight.shape[0])
            nodes[key] = ("Conv2d", {"weight": pr.weight, "bias": b, "stride": np.array(pr.stride),
                                     "padding": np.array(pr.padding), "dilation": np.array([1, 1]),
                                     "groups": np.int64(1), "input_shape": np.array(shape[1:])}, {})
        edges += [(src, key), (key, dst)]
    with atomic_write(path, force=force, what="NIR file") as fobj, h5py.File(fobj, "w") as f:
        f.create_dataset("version", data=nir_version, dtype=h5py.string_dtype())
        g = f.create_group("node")
        g.create_dataset("type", data="NIRGraph", dtype=h5py.string_dtype())
        ng = g.create_group("nodes")
        for name, (t, params, meta) in nodes.items():
            ndg = ng.create_group(name)
            ndg.create_dataset("type", data=t, dtype=h5py.string_dtype())
            for k, v in params.items():
                ndg.create_dataset(k, data=np.asarray(v))
            if meta:
                mg = ndg.create_group("metadata")
                for k, v in meta.items():
                    mg.create_dataset(k, data=v, dtype=h5py.string_dtype() if isinstance(v, str) else None)
        g.create_dataset("edges", data=np.array(edges, dtype=object), dtype=h5py.string_dtype())
