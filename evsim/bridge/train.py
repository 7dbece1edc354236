"""Training recipe: SGD with momentum, cosine schedule, optional TMPR.

Settings follow the CTSN authors' code (docs/REFERENCES.md section 2): SGD lr 0.1,
momentum 0.9, weight decay 1e-4, cosine annealing; the loss is the cross
entropy of the logits averaged over T, plus the TMPR regulariser when asked.
Checkpoints (:mod:`evsim.bridge.checkpoint`) hold the model config, the state
dict and the training record, so ``load_checkpoint`` rebuilds the exact network.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, read_weights_only, save_checkpoint
from .models import SpikingNet, build_model


@dataclass
class TrainConfig:
    arch: str = "resnet8"
    neuron: str = "ternary"
    width: int | None = 16
    timesteps: int = 4
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    tmpr: float = 0.0          # lambda of TMPR; 0 turns it off (0.05 static, 0.01 event data)
    rate_reg: float = 0.0      # weight of the mean firing rate in the loss (sparser spikes); 0 = off
    grad_clip: float | None = None   # clip the global gradient norm (learnable amplitudes feeding a readout
                                     # without BatchNorm can otherwise diverge at lr 0.1)
    seed: int = 0
    init: str | None = None          # start from this checkpoint's weights (fine-tuning); same architecture
    qat_bits: int | None = None      # quantisation-aware: train the folded network as `evsim quantize --weight-bits`
                                     # makes it (evsim.bridge.qat); None = plain float training
    dataset: str = "fashion-mnist"  # or an event dataset (evsim.datasets.EVENT_DATASETS): spike-encoded frames
    event_channels: int = 2          # event data: 2 = OFF and ON spikes in two channels, 1 = sign of ON - OFF
    train_limit: int | None = None   # use only the first N training images (tests, smoke runs)
    test_limit: int | None = None
    augment: bool = True
    threads: int | None = None
    device: str = "auto"


def tmpr_loss(membranes: list[list[torch.Tensor]], lam: float) -> torch.Tensor:
    """TMPR: 1/(T*N) * sum_t sum_n (lam / t) * mean(u~_n[t]^2), t counted from 1.

    ``membranes[n][t-1]`` is layer n's potential at step t (after the input
    is added, before the reset).
    """
    N = len(membranes)
    T = len(membranes[0])
    total = membranes[0][0].new_zeros(())
    for layer in membranes:
        for t, u in enumerate(layer, start=1):
            total = total + (lam / t) * u.pow(2).mean()
    return total / (T * N)


def evaluate(model: SpikingNet, images: np.ndarray, labels: np.ndarray, batch_size=256, device="cpu",
             with_rate: bool = False):
    """Test accuracy; with ``with_rate``, also the firing rate over all spiking neurons.

    The rate is what the engine's event count depends on, so the training
    record keeps it per epoch when sparsity is being trained for.
    """
    model.eval()
    neurons = [m for _, m in model.neurons()]
    saved = [m.track_rate for m in neurons]
    for m in neurons:
        m.track_rate = with_rate
    correct = 0
    nonzero = total = 0.0
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(images[i:i + batch_size]).float().to(device)
                y = torch.from_numpy(labels[i:i + batch_size]).to(device)
                correct += (model(x).argmax(1) == y).sum().item()
                if with_rate:
                    for m in neurons:
                        n = m.spikes_numel
                        nonzero += m.rate.item() * n
                        total += n
    finally:
        for m, s in zip(neurons, saved):
            m.track_rate = s
    acc = correct / len(images)
    return (acc, nonzero / total if total else 0.0) if with_rate else acc


def load_training_data(cfg: TrainConfig):
    """(x_train, y_train, x_test, y_test) as the config asks: images, or event frames (N, T, C, H, W) int8."""
    from ..datasets import EVENT_DATASETS, load_dataset, nfashion_frames

    if cfg.dataset in EVENT_DATASETS:
        x_train, y_train = nfashion_frames("train", cfg.timesteps, cfg.event_channels, limit=cfg.train_limit)
        x_test, y_test = nfashion_frames("test", cfg.timesteps, cfg.event_channels, limit=cfg.test_limit)
        return x_train, y_train, x_test, y_test
    x_train, y_train = load_dataset(cfg.dataset, "train")
    x_test, y_test = load_dataset(cfg.dataset, "test")
    if cfg.train_limit:
        x_train, y_train = x_train[:cfg.train_limit], y_train[:cfg.train_limit]
    if cfg.test_limit:
        x_test, y_test = x_test[:cfg.test_limit], y_test[:cfg.test_limit]
    return x_train, y_train, x_test, y_test


def _save_resume(path: Path, epoch: int, model, opt, sched, rng, history, cfg) -> None:
    """The whole training state after ``epoch`` epochs, so that an interrupted run goes on from there."""
    state = {"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "numpy_rng": json.dumps(rng.bit_generator.state), "history": json.dumps(history),
             "config": json.dumps(asdict(cfg))}
    from ..files import atomic_write

    with atomic_write(path, True, "resume state") as f:     # this run's own state, replaced each epoch
        torch.save(state, f)


def _load_resume(path: Path, cfg, model, opt, sched, rng):
    """Restore a state written by :func:`_save_resume` for this very config: (epochs done, history)."""
    from ..errors import EvsimError

    # a regular file within the checkpoint size limit, read weights-only (no pickle code runs): one line if not
    try:
        state = read_weights_only(path, EvsimError, "a resume state holds tensors and plain data only")
    except EvsimError as e:
        raise EvsimError(f"{path}: not a readable resume state ({str(e).removeprefix(f'{path}: ')}); remove it "
                         f"to start again") from None
    try:
        same = json.loads(state["config"]) == json.loads(json.dumps(asdict(cfg)))
    except Exception as e:          # a foreign file: one line
        raise EvsimError(f"{path}: not a readable resume state ({type(e).__name__}); remove it to start "
                         f"again") from None
    if not same:
        raise EvsimError(f"{path}: a resume state of another training config; remove it to start again")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        return int(state["epoch"]), json.loads(state["history"])
    except Exception as e:
        raise EvsimError(f"{path}: a damaged resume state ({type(e).__name__}: {e}); remove it to start "
                         f"again") from None


def train(cfg: TrainConfig, out: str | Path | None = None, progress: bool = True,
          force: bool = False, data=None, resume: str | Path | None = None) -> tuple[SpikingNet, dict]:
    """Train; after each epoch the checkpoint so far is written to ``out`` (replacing an existing
    file only with ``force``; the later epochs replace this run's own checkpoint).

    ``data``: (x_train, y_train, x_test, y_test) already loaded (several runs on the same data);
    default: :func:`load_training_data`. ``resume``: a file holding the full training state after
    each epoch (weights, optimiser, schedule, random generators); when it exists, training goes on
    from it, and the result is the same as an uninterrupted run's.
    """

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    if cfg.qat_bits is not None:      # before loading anything: a bad setting is one line
        from ..errors import EvsimError
        from ..fixedpoint import WEIGHT_BITS
        from .qat import QAT_NEURONS
        if isinstance(cfg.qat_bits, bool) or not isinstance(cfg.qat_bits, int) or \
                not WEIGHT_BITS[0] <= cfg.qat_bits <= WEIGHT_BITS[1]:
            raise EvsimError(f"qat_bits must be an integer in [{WEIGHT_BITS[0]}, {WEIGHT_BITS[1]}], "
                             f"got {cfg.qat_bits!r}")
        if cfg.neuron not in QAT_NEURONS:
            raise EvsimError(f"--qat-bits models the LIF neurons ({', '.join(QAT_NEURONS)}), not {cfg.neuron!r}")
        if cfg.tmpr > 0:
            raise EvsimError("--qat-bits does not model TMPR (it records the float membranes); use --tmpr 0")
    x_train, y_train, x_test, y_test = data if data is not None else load_training_data(cfg)
    events = x_train.ndim == 5            # (N, T, C, H, W) spike frames
    model = build_model(cfg.arch, neuron=cfg.neuron, timesteps=cfg.timesteps, in_channels=x_train.shape[-3],
                        num_classes=int(y_train.max()) + 1, image_size=x_train.shape[-1], width=cfg.width,
                        encoding="spikes" if events else "direct")
    if cfg.init:
        start, _ = load_checkpoint(cfg.init)
        if start.config != model.config:
            from ..errors import EvsimError
            raise EvsimError(f"{cfg.init}: its architecture {start.config} differs from the one asked for {model.config}")
        model.load_state_dict(start.state_dict())
    model.to(device)
    net = model            # what the loss sees: the model, or its folded, fake-quantised view (same parameters)
    if cfg.qat_bits is not None:
        from ..datasets import DATASET_INFO
        from .qat import QATNet
        net = QATNet(model, cfg.qat_bits, input_range=DATASET_INFO.get(cfg.dataset, {}).get("input_range"))
    neurons = [m for _, m in model.neurons()]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # amplitudes and CTSN coefficients are per-layer scalars: no weight decay
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, momentum=cfg.momentum)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    for m in neurons:
        m.record_membrane = cfg.tmpr > 0
        m.track_rate = cfg.rate_reg > 0

    history = []
    first = 0
    if resume is not None and Path(resume).exists():
        first, history = _load_resume(Path(resume), cfg, model, opt, sched, rng)
        model.to(device)
    t0 = time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    for epoch in range(first, cfg.epochs):
        net.train()
        order = rng.permutation(len(x_train))
        seen = correct = 0
        loss_sum = 0.0
        batches = range(steps_per_epoch)
        bar = click.progressbar(batches, label=f"epoch {epoch + 1}/{cfg.epochs}", file=None if progress else open(os.devnull, "w"),
                                item_show_func=lambda _: f"loss {loss_sum / max(seen, 1):.4f} acc {correct / max(seen, 1):.4f}")
        with bar:
            for b in bar:
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                xb = torch.from_numpy(x_train[idx]).float()
                if cfg.augment:
                    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
                    xb[flip] = xb[flip].flip(-1)
                xb = xb.to(device)
                yb = torch.from_numpy(y_train[idx]).to(device)
                logits = net(xb)
                loss = F.cross_entropy(logits, yb)
                if cfg.tmpr > 0:
                    loss = loss + tmpr_loss([m.membranes for m in neurons], cfg.tmpr)
                if cfg.rate_reg > 0:
                    loss = loss + cfg.rate_reg * torch.stack([m.rate for m in neurons]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                seen += len(idx)
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == yb).sum().item()
        acc, rate = evaluate(net, x_test, y_test, device=device, with_rate=True)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                        "test_acc_torch": acc, "test_firing_rate": rate, "elapsed_s": round(time.time() - t0, 1)})
        if net is not model:    # test_acc_torch is then the fixed-point network's; also the float model's
            history[-1]["test_acc_float"] = evaluate(model, x_test, y_test, device=device)
            history[-1]["elapsed_s"] = round(time.time() - t0, 1)
        click.echo(json.dumps(history[-1]), err=True)
        if resume is not None:
            _save_resume(Path(resume), epoch + 1, model, opt, sched, rng, history, cfg)
        if out is not None:
            record = {"train_config": asdict(cfg), "history": history, "torch_version": str(torch.__version__)}
            save_checkpoint(out, model.cpu(), record, force=force or epoch > 0)
            model.to(device)
    for m in neurons:
        m.record_membrane = False
        m.track_rate = False
    model.cpu().eval()
    record = {"train_config": asdict(cfg), "history": history, "torch_version": str(torch.__version__)}
    return model, record
