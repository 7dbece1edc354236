"""The ``evsim`` command line.

Commands: ``run`` (simulate a folded network on samples or a dataset),
``info`` (describe a file), and, with the ``torch`` extra installed,
``train``, ``export``, ``verify`` and ``convert-checkpoint``. Any :class:`~evsim.errors.EvsimError`
becomes one line on stderr and exit code 1; ``--json`` prints one JSON
document on stdout.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
import tokenize
import warnings

import click
import numpy as np

from .errors import EvsimError, InputError

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def user_errors(fn):
    """Turn the project's one-line errors into click's (stderr, exit code 1)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EvsimError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError as e:            # NumPy names the allocation: "Unable to allocate 3.2 GiB for ..."
            detail = str(e).strip().splitlines()
            raise click.ClickException("out of memory" + (f": {detail[0]}" if detail else "")) from None
    return wrapper


def need_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EvsimError("this command needs PyTorch: pip install torch==2.13.0 'evsim[torch]'") from None


def load_array(path: str, what: str = "input") -> np.ndarray:
    """Read a .npy array from an untrusted file: a regular file whose header is checked before its data.

    Special files (a FIFO would block), object, complex, structured and text dtypes, and arrays
    over the memory budget (EVSIM_MAX_BYTES) are refused in one line before anything is allocated.
    """
    from .files import open_regular
    from .limits import Limits

    with open_regular(path, f"{what} file") as f:
        try:
            magic = f.read(6)
            f.seek(0)
            version = np.lib.format.read_magic(f) if magic == b"\x93NUMPY" else None
            if version not in ((1, 0), (2, 0), None):
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            if version is not None:
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                with warnings.catch_warnings():        # the header is untrusted text: "\e" in it is no news
                    warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
                    shape, _, dtype = read_header(f)
                data_at = f.tell()
        except (ValueError, SyntaxError, tokenize.TokenError) as e:     # NumPy's header parser raises all three
            detail = (str(e).splitlines() or [type(e).__name__])[0]
            raise InputError(f"{what} file {path}: cannot read as a .npy array ({detail})") from None
        except (OSError, EOFError):
            raise InputError(f"{what} file {path}: not a .npy file") from None
        if version is None:
            hint = " (a .npz archive: save the array itself with numpy.save)" if magic[:2] == b"PK" else ""
            raise InputError(f"{what} file {path}: not a .npy file{hint}")
        if dtype.hasobject:
            raise InputError(f"{what} file {path}: cannot read as a .npy array (Object arrays cannot be loaded: "
                             f"they hold Python objects, not numbers)")
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise InputError(f"{what} file {path}: {what} dtype {dtype.str} is not numeric (real numbers only)")
        nbytes = math.prod(shape) * dtype.itemsize
        Limits.from_env().check_bytes(f"{what} file {path}: an array of shape {shape} ({dtype})", nbytes)
        held = os.fstat(f.fileno()).st_size - data_at
        if held < nbytes:
            raise InputError(f"{what} file {path}: cannot read as a .npy array (truncated: the header declares "
                             f"{nbytes} bytes of data, the file holds {held})")
        try:
            f.seek(0)
            a = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            detail = (str(e).splitlines() or [type(e).__name__])[0]
            raise InputError(f"{what} file {path}: cannot read as a .npy array ({detail})") from None
    if a.ndim == 0 and what == "input":
        raise InputError(f"{what} file {path}: holds a single value, not an array of samples")
    return a


def _progress_runner(net, x, batch_size, record=False, show=True, threads=None):
    """Run in batches with a progress bar on stderr when the run is long enough to want one."""
    from .engine import run
    n = len(x)
    if not show or n <= batch_size:
        return run(net, x, batch_size=batch_size, record=record, threads=threads)
    with click.progressbar(length=n, label="simulating", file=sys.stderr, show_pos=True) as bar:
        return run(net, x, batch_size=batch_size, record=record, progress=bar.update, threads=threads)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="evsim")
def main():
    """evsim: event-driven emulation of ternary spiking neural networks on the CPU."""
    # The engine's process: Numba's OpenMP threads wait passively between parallel regions (libgomp
    # reads this when Numba first starts its thread pool, after this point), so that they do not spin on
    # the cores the serial parts of a run need. Only the command sets it, never `import evsim`, and
    # a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


# ----------------------------------------------------------------------- run
@main.command()
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False), help="Folded network (HDF5).")
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="Samples as .npy: one sample or a batch (N, ...).")
@click.option("--dataset", type=click.Choice(["fashion-mnist"]), help="Run a dataset's test split instead of --input.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels (.npy, N integers) to report accuracy.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="float64 for verification, float32 for speed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--energy-model", default="45nm-fp32", show_default=True, help="Energy per operation (see README).")
@click.option("--conv-mode", type=click.Choice(["kernel", "explicit"]), default="kernel", show_default=True,
              help="Weight-shared conv kernels (whole kernel rows, or taps for mostly empty kernels), "
                   "or an explicit per-neuron CSR (memory-guarded).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for the engine (default: all cores).")
@click.option("--first-layer-macs", "mac_basis", type=click.Choice(["nonzero", "all"]), default="nonzero",
              show_default=True,
              help="MACs of a direct-encoded input: each non-zero input value once (an event processor), "
                   "or every input position (a dense first layer). Both are in --json.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document instead of tables (with every sample's raw outputs).")
@click.option("--per-sample", is_flag=True, help="With --json: every counter of every sample, not only means.")
@user_errors
def run(weights, input_path, dataset, labels, limit, dtype, batch_size, top_k, energy_model, conv_mode, threads,
        mac_basis, as_json, per_sample):
    """Simulate a folded network event by event and report what the hardware did."""
    from .compiler import compile_network
    from .format import read_network
    from .reports import build_report, energy_model as get_energy_model, format_report, per_sample as sample_rows

    get_energy_model(energy_model)
    if per_sample and not as_json:
        raise click.UsageError("--per-sample goes with --json")
    if (input_path is None) == (dataset is None):
        raise EvsimError("give exactly one of --input or --dataset")
    network = read_network(weights)
    y = None
    if dataset:
        from .datasets import load_dataset
        x, y = load_dataset(dataset, "test")
        if labels:
            raise EvsimError("--labels goes with --input; a dataset brings its own")
    else:
        x = load_array(input_path)
        if labels:
            y = load_array(labels, "labels")
    t0 = time.perf_counter()
    net = compile_network(network, dtype=dtype, conv_mode=conv_mode)
    t_compile = time.perf_counter() - t0
    g = network
    lead = (g.timesteps,) if g.encoding == "spikes" else ()
    if x.shape == lead + tuple(g.input_shape):
        x = x[None]
    if limit:
        x = x[:limit]
        y = None if y is None else y[:limit]
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"labels must be {len(x)} integers, one per sample; got shape {y.shape}, dtype {y.dtype}")
    t0 = time.perf_counter()
    result = _progress_runner(net, x, batch_size, show=not as_json or sys.stderr.isatty(), threads=threads)
    t_run = time.perf_counter() - t0
    report = build_report(net, result, energy_model, mac_basis)

    names = g.class_names or [str(i) for i in range(net.n_outputs)]
    k = min(top_k, net.n_outputs)
    order = np.argsort(-result.outputs, axis=1, kind="stable")[:, :k]
    preds = [[{"class": int(c), "name": names[c], "score": float(result.outputs[i, c])} for c in order[i]]
             for i in range(len(x))]
    doc = {"weights": str(weights), "samples": len(x), "dtype": dtype, "class_names": names,
           "predictions": [p[0]["class"] for p in preds], "top_k": preds,
           "outputs": [[float(v) for v in row] for row in result.outputs]}
    if y is not None:
        doc["accuracy"] = float((result.predictions == y).mean())
        doc["correct"] = int((result.predictions == y).sum())
    doc.update(report.to_dict())
    doc["timing"] = {"compile_s": t_compile, "simulate_s": t_run, "samples_per_s": len(x) / t_run if t_run else None,
                     "compiled_bytes": net.nbytes}
    if as_json:
        if per_sample:
            doc["per_sample"] = sample_rows(net, result, mac_basis)
        click.echo(json.dumps(doc, indent=2))
        return
    if len(x) == 1:
        click.echo("prediction: " + ", ".join(f"{p['name']} ({p['score']:.3f})" for p in preds[0]))
    else:
        shown = min(len(x), 10)
        click.echo(f"predictions ({len(x)} samples" + (f", first {shown}" if shown < len(x) else "") + "): "
                   + ", ".join(preds[i][0]["name"] for i in range(shown)))
    if y is not None:
        click.echo(f"accuracy: {doc['accuracy'] * 100:.2f}% ({doc['correct']}/{len(x)})")
    click.echo("")
    click.echo(format_report(report))
    click.echo(f"  time: {t_run:.3f} s for {len(x)} samples ({len(x) / t_run:.1f} samples/s), compiled network "
               f"{net.nbytes / 2**20:.2f} MiB")


# ---------------------------------------------------------------------- info
@main.command()
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@user_errors
def info(weights, as_json):
    """Describe a folded network file: graph, shapes, parameters, provenance."""
    from .format import FORMAT_VERSION, read_network

    g = read_network(weights)
    pops = [{"name": p.name, "shape": list(p.shape), "neurons": p.size, "model": p.model, "params": p.params}
            for p in g.populations]
    projs = []
    for pr in g.projections:
        d = {"name": pr.name, "source": pr.source, "target": pr.target, "kind": pr.kind, "params": pr.n_params}
        if pr.weight is not None:
            d["weight_shape"] = list(pr.weight.shape)
            d["nonzero"] = int(np.count_nonzero(pr.weight))
        if pr.kind == "conv2d":
            d["stride"], d["padding"] = list(pr.stride), list(pr.padding)
        if pr.kind == "identity":
            d["scale"] = pr.scale
        d["bias"] = pr.bias is not None
        projs.append(d)
    doc = {"file": str(weights), "format_version": FORMAT_VERSION, "timesteps": g.timesteps,
           "input_shape": list(g.input_shape), "encoding": g.encoding, "readout": g.readout,
           "input_range": list(g.input_range) if g.input_range else None, "outputs": g.n_classes,
           "class_names": g.class_names, "neurons": sum(p.size for p in g.populations),
           "parameters": g.n_params, "populations": pops, "projections": projs, "provenance": g.provenance,
           "order": g.topological_order()}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from .reports import table
    click.echo(f"{weights}: evsim network, format v{FORMAT_VERSION}")
    click.echo(f"  T={g.timesteps}, input {tuple(g.input_shape)} ({g.encoding} encoding"
               + (f", values in [{g.input_range[0]:g}, {g.input_range[1]:g}]" if g.input_range else "") + "), "
               f"readout {g.readout} over T, {g.n_classes} outputs")
    if g.class_names:
        click.echo(f"  classes: {', '.join(g.class_names)}")
    click.echo(f"  {len(g.populations)} populations, {doc['neurons']} neurons; {len(g.projections)} projections, "
               f"{g.n_params} parameters")
    click.echo("")
    click.echo(table([[p["name"], "x".join(map(str, p["shape"])), p["neurons"], p["model"],
                       ", ".join(f"{k}={v:g}" for k, v in p["params"].items())] for p in pops],
                     ["population", "shape", "neurons", "model", "constants"]))
    click.echo("")
    rows = []
    for d in projs:
        detail = ""
        if d["kind"] == "conv2d":
            detail = f"k={d['weight_shape'][2]}x{d['weight_shape'][3]} s={d['stride'][0]} p={d['padding'][0]}"
        elif d["kind"] == "identity":
            detail = f"scale={d['scale']:g}"
        rows.append([d["name"], d["kind"], f"{d['source']} -> {d['target']}",
                     "x".join(map(str, d.get("weight_shape", []))) or "-", detail, d["params"], d.get("nonzero", "-")])
    click.echo(table(rows, ["projection", "kind", "source -> target", "weight", "geometry", "params", "nonzero"]))
    if g.provenance:
        click.echo("")
        click.echo("provenance:")
        for k, v in g.provenance.items():
            click.echo(f"  {k}: {v if not isinstance(v, (dict, list)) else json.dumps(v)}")


# ---------------------------------------------------------------- torch side
@main.command()
@click.option("--arch", default="resnet8", show_default=True,
              type=click.Choice(["convnet", "vgg", "resnet8", "resnet19", "resnet20"]))
@click.option("--neuron", default="ternary", show_default=True,
              type=click.Choice(["ternary", "ternary-fixed", "binary", "ctsn", "ctsn-event"]))
@click.option("--width", type=click.IntRange(min=1), default=16, show_default=True, help="Channels of the first stage.")
@click.option("--timesteps", "-T", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--tmpr", type=float, default=0.0, show_default=True, help="TMPR lambda (0 = off; paper: 0.05 static).")
@click.option("--rate-reg", type=float, default=0.0, show_default=True,
              help="Weight of the mean firing rate in the loss: sparser spikes, fewer operations (0 = off).")
@click.option("--grad-clip", type=float, default=None, help="Clip the global gradient norm to this value.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this checkpoint's weights (fine-tuning, e.g. with --rate-reg); same architecture.")
@click.option("--train-limit", type=click.IntRange(min=1), help="Use only the first N training images.")
@click.option("--test-limit", type=click.IntRange(min=1), help="Evaluate on the first N test images only.")
@click.option("--threads", type=click.IntRange(min=1), help="PyTorch CPU threads.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@user_errors
def train(out, force, **kw):
    """Train a spiking network on Fashion-MNIST (needs the torch extra)."""
    need_torch()
    from .files import check_writable_target
    check_writable_target(out, force, "checkpoint")     # before training, not after it
    from .bridge.train import TrainConfig, save_checkpoint, train as train_fn
    cfg = TrainConfig(**kw)
    model, record = train_fn(cfg, out=out, force=force)
    record["command"] = " ".join(["evsim"] + sys.argv[1:])
    save_checkpoint(out, model, record, force=True)      # this run's own checkpoint, written after each epoch
    click.echo(f"wrote {out}: test accuracy (PyTorch) {record['history'][-1]['test_acc_torch'] * 100:.2f}%")


@main.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Folded network to write (.h5).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@user_errors
def export(checkpoint, out, force):
    """Fold BatchNorm, amplitudes and pooling into the weights and write HDF5 (needs torch)."""
    need_torch()
    from .bridge.checkpoint import load_checkpoint
    from .bridge.fold import fold_model
    from .datasets import DATASET_INFO
    from .files import check_writable_target
    from .format import write_network
    check_writable_target(out, force)
    model, ckpt = load_checkpoint(checkpoint)
    record = ckpt.get("record", {})
    meta = DATASET_INFO.get(record.get("train_config", {}).get("dataset"), {})
    network = fold_model(model, class_names=meta.get("class_names"), input_range=meta.get("input_range"),
                         provenance={"checkpoint": os.path.basename(checkpoint), "training": record})
    write_network(network, out, overwrite=force)
    click.echo(f"wrote {out}: {len(network.populations)} populations, {len(network.projections)} projections, "
               f"{network.n_params} parameters")


@main.command()
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False))
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="Samples (.npy). Required for evsim checkpoints; with --from, defaults to --samples random images.")
@click.option("--from", "source", type=click.Choice(["ternary-spike", "ctsn"]),
              help="CHECKPOINT is a state_dict of the papers' training code (see evsim import).")
@click.option("--arch", help="With --from: the architecture (as given to evsim import).")
@click.option("--samples", type=click.IntRange(min=1, max=10_000), default=8, show_default=True,
              help="With --from and no --input: this many seeded standard-normal images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def verify(weights, checkpoint, input_path, source, arch, samples, batch_size, as_json):
    """Check that the engine reproduces the PyTorch model spike for spike (needs torch)."""
    need_torch()
    from .bridge.checkpoint import load_checkpoint
    from .bridge.verify import format_verification, verify as verify_fn
    from .format import read_network
    if source is None and (arch is not None or input_path is None):
        raise click.UsageError("--arch goes with --from" if arch is not None else "give --input (samples as .npy)")
    if source is not None and arch is None:
        raise click.UsageError("--from needs --arch")
    network = read_network(weights)
    if source is None:
        model, _ = load_checkpoint(checkpoint)
    else:
        from .bridge.papers import model_for_network, sample_inputs
        model = model_for_network(checkpoint, source, arch, network)
    x = load_array(input_path) if input_path else sample_inputs(network.input_shape, samples)
    result = verify_fn(model, network, x, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_verification(result))
    if not result["passed"]:
        sys.exit(1)


@main.command("convert-checkpoint")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Converted checkpoint to write (.pt).")
@click.option("--trust", is_flag=True,
              help="Required: converting unpickles CHECKPOINT, which runs any code it holds. Give it only for a "
                   "file you made or trust.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@user_errors
def convert_checkpoint(checkpoint, out, trust, force):
    """Rewrite a checkpoint of an older evsim as plain data, loadable without unpickling code (one time).

    Every other command loads checkpoints with PyTorch's weights-only loader, which runs no pickle code and
    refuses these older files.
    """
    need_torch()
    if not trust:
        raise click.UsageError("converting unpickles the checkpoint, which can run code it holds: pass --trust "
                               "only for a file you made or trust")
    from .bridge.checkpoint import convert_checkpoint as convert
    convert(checkpoint, out, trust=True, force=force)
    click.echo(f"wrote {out}: loads with weights_only=True")


# ------------------------------------------------ the papers' own checkpoints
@main.command("import")
@click.option("--from", "source", required=True, type=click.Choice(["ternary-spike", "ctsn"]),
              help="The training code: yfguo91/Ternary-Spike or ZBX05/Enhanced-TernarySNN (CTSN).")
@click.option("--arch", required=True,
              help="ternary-spike: resnet19, resnet20, resnet20m, vgg16; ctsn: vgg11, vgg16 "
                   "(others are refused with the reason).")
@click.option("--timesteps", "-T", required=True, type=click.IntRange(min=1, max=10_000),
              help="T the model runs for (their --step).")
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="state_dict saved by their training script (.pth).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Folded network to write (.h5).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Outputs (default: read off the classifier).")
@click.option("--input-shape", help="C,H,W of one image (default: C of the first conv, 32x32).")
@click.option("--ctsn-form", type=click.Choice(["static", "event"]), default="static", show_default=True,
              help="ctsn: the complemental term's form (their 'static', or 'dvs' = event).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@user_errors
def import_(source, arch, timesteps, checkpoint, out, num_classes, input_shape, ctsn_form, force):
    """Import a checkpoint trained with the papers' own code and fold it into an evsim network (needs torch)."""
    need_torch()
    from .bridge.papers import import_checkpoint, parse_input_shape
    from .files import check_writable_target
    from .format import write_network
    check_writable_target(out, force)
    _, network = import_checkpoint(checkpoint, source, arch, timesteps, num_classes, parse_input_shape(input_shape),
                                   ctsn_form)
    write_network(network, out, overwrite=force)
    click.echo(f"wrote {out}: {source} {arch}, T={timesteps}, input {tuple(network.input_shape)}, "
               f"{network.n_classes} outputs; {len(network.populations)} populations, "
               f"{len(network.projections)} projections, {network.n_params} parameters")


if __name__ == "__main__":  # pragma: no cover
    main()
