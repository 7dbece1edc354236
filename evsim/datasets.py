"""Real datasets available offline, read with NumPy only.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(IDX files, gzip); see docs/REFERENCES.md section 4.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .errors import EvsimError

FASHION_MNIST_DIR = Path(os.environ.get("EVSIM_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATASETS = ("fashion-mnist",)
EVENT_DATASETS = ("nfashion-mnist",)      # synthetic event streams, binned into frames for training
# what a network trained on each dataset expects; recorded in the exported file
DATASET_INFO = {"fashion-mnist": {"class_names": FASHION_MNIST_CLASSES, "input_range": (0.0, 1.0)},
                "nfashion-mnist": {"class_names": FASHION_MNIST_CLASSES}}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise EvsimError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise EvsimError(f"{path}: truncated IDX file ({len(data) - offset} of {expected} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(split: str = "test", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1], shape (N, 1, 28, 28), and int64 labels."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise EvsimError(f"unknown split {split!r} (use 'train' or 'test')")
    files = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
    for f in files:
        if not f.exists():
            raise EvsimError(f"Fashion-MNIST not found at {f}: install it with "
                             "'apt-get install -y dataset-fashion-mnist' or set EVSIM_FASHION_MNIST")
    images = read_idx(files[0]).astype(np.float32)[:, None] / np.float32(255.0)
    labels = read_idx(files[1]).astype(np.int64)
    if len(images) != len(labels):
        raise EvsimError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_dataset(name: str, split: str = "test"):
    if name == "fashion-mnist":
        return load_fashion_mnist(split)
    raise EvsimError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


# ------------------------------------------------- synthetic event data (evsim/eventcam.py)
def nfashion_frames(split: str, timesteps: int, channels: int = 2, seed: int = 0, limit: int | None = None,
                    cfg=None, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic N-Fashion-MNIST binned into frames for training: ``(N, T, C, H, W)`` int8 and labels.

    The same events as ``evsim datasets nfashion-mnist`` writes with this ``seed`` and camera (each
    image's stream depends only on its index and the seed), binned as ``evsim run --events`` bins them
    (:func:`evsim.events.bin_events`: T equal windows over each sample's span), so a network trained on
    these frames is evaluated on exactly the input the engine sees from the written files. Made chunk by
    chunk: the events of all 60 000 training images (about 4 GB) never exist at once.
    """
    from .eventcam import CameraConfig, record_images
    from .events import bin_events, streams_of

    cfg = cfg or CameraConfig()
    images, labels = load_fashion_mnist(split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    H, W = cfg.sensor
    frames = np.empty((len(images), int(timesteps), int(channels), H, W), dtype=np.int8)
    for a in range(0, len(images), chunk):
        ev = record_images(images[a:a + chunk, 0], seed=seed, cfg=cfg, first_index=a)
        n = min(chunk, len(images) - a)
        frames[a:a + n] = bin_events(streams_of(ev, f"nfashion-mnist {split}"), timesteps, channels, H, W)[0]
    return frames, labels


NFASHION_FILES = ("{split}_events.npy", "{split}_labels.npy", "{split}_meta.json")


def write_nfashion_mnist(out_dir, split: str = "test", limit: int | None = None, force: bool = False,
                         seed: int = 0, cfg=None, progress=None) -> dict:
    """Write a **synthetic** neuromorphic Fashion-MNIST: the real images seen by a simulated event camera.

    Each image is moved along the three saccades of the N-MNIST protocol in front of the camera model
    of :mod:`evsim.eventcam` (no sensor recorded these events). Writes, atomically (no file replaced
    without ``force``), in ``out_dir``: ``{split}_events.npy`` (one structured array, fields sample, t
    (us), x, y, p in {1, -1}, sorted by sample then time; ``evsim run --events`` reads it),
    ``{split}_labels.npy`` (int64) and ``{split}_meta.json`` (the camera's parameters, the seed, counts).
    Returns the metadata.
    """
    import json
    import time

    from .eventcam import CameraConfig, record_images
    from .events import write_events
    from .files import FileError, atomic_write, check_writable_target

    cfg = cfg or CameraConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileError(f"output directory {out}: is not a directory")
    if not out.exists():
        if not out.parent.is_dir():
            raise FileError(f"output directory {out}: directory {out.parent} does not exist")
        out.mkdir()
    paths = [out / name.format(split=split) for name in NFASHION_FILES]
    for p in paths:
        check_writable_target(p, force, "output")        # before the work, not after it
    images, labels = load_fashion_mnist(split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    t0 = time.perf_counter()
    events = record_images(images[:, 0], seed=seed, cfg=cfg, progress=progress)
    seconds = time.perf_counter() - t0
    counts = np.bincount(events["sample"], minlength=len(images))
    meta = {"dataset": "nfashion-mnist", "synthetic": True,
            "description": "SYNTHETIC event data: real Fashion-MNIST images moved along three saccades (N-MNIST "
                           "protocol, Orchard et al. 2015) in front of a simulated event camera (evsim/eventcam.py); "
                           "no event sensor recorded it",
            "split": split, "samples": int(len(images)), "seed": seed, "camera": cfg.to_dict(),
            "events": int(len(events)), "events_per_sample_mean": float(counts.mean()) if len(counts) else 0.0,
            "events_per_sample_min": int(counts.min()) if len(counts) else 0,
            "events_per_sample_max": int(counts.max()) if len(counts) else 0,
            "on_fraction": float((events["p"] == 1).mean()) if len(events) else 0.0,
            "generation_s": seconds, "class_names": FASHION_MNIST_CLASSES,
            "files": {"events": paths[0].name, "labels": paths[1].name}}
    with atomic_write(paths[0], force, "output") as f:
        write_events(f, events)
    with atomic_write(paths[1], force, "output") as f:
        np.lib.format.write_array(f, labels.astype(np.int64), allow_pickle=False)
    with atomic_write(paths[2], force, "output") as f:
        f.write((json.dumps(meta, indent=2) + "\n").encode())
    meta["paths"] = [str(p) for p in paths]
    return meta
