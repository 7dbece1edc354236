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
# what a network trained on each dataset expects; recorded in the exported file
DATASET_INFO = {"fashion-mnist": {"class_names": FASHION_MNIST_CLASSES, "input_range": (0.0, 1.0)}}


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
