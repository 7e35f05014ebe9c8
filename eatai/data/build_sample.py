"""Build the bundled CIFAR-10 sample: `python -m eatai.data.build_sample [--src FOLDER] [--out FILE]`.

Takes a class-balanced, fixed-seed selection (200 per class from the training file, 50 per
class from the test file), stores it losslessly with `codec`, and records the source indices.
The output is byte-identical for the same sources.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from .cifar import SAMPLE_PATH
from .codec import encode_images, write_arrays
from .loaders import CIFAR10_CLASSES

__all__ = ['balanced_indices', 'build_sample', 'main']

DEFAULT_SRC = Path(__file__).resolve().parents[3] / 'shared' / 'data'   # <repo>/../shared/data
TRAIN_FILE, TEST_FILE = 'cifar10_train_20k.npz', 'cifar10_test.npz'
N_TRAIN_PER_CLASS, N_VALID_PER_CLASS, SEED = 200, 50, 0


def balanced_indices(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` items of each class of y, drawn without replacement with a fixed seed."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(CIFAR10_CLASSES)):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} items, fewer than the {per_class} asked for")
        picks.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(picks))


def build_sample(src=DEFAULT_SRC, out=SAMPLE_PATH) -> Path:
    """Write the sample file `out` from the npz files in `src`; returns `out`."""
    src, out = Path(src), Path(out)
    with np.load(src / TRAIN_FILE) as f:
        x_train, y_train = f['x'], f['y']
    with np.load(src / TEST_FILE) as f:
        x_test, y_test = f['x'], f['y']
    train_index = balanced_indices(y_train, N_TRAIN_PER_CLASS, SEED)
    valid_index = balanced_indices(y_test, N_VALID_PER_CLASS, SEED + 1)
    x = np.concatenate([x_train[train_index], x_test[valid_index]])          # (N, 32, 32, 3) uint8
    y = np.concatenate([y_train[train_index], y_test[valid_index]]).astype(np.uint8)
    info = {'train_source': TRAIN_FILE, 'valid_source': TEST_FILE, 'seed': SEED,
            'per_class': {'train': N_TRAIN_PER_CLASS, 'valid': N_VALID_PER_CLASS},
            'classes': list(CIFAR10_CLASSES),
            'codec': 'eatai.data.codec: (G, R-G, B-G) and 2-D gradient residuals modulo 256, plane-major, xz',
            # of the (N, 32, 32, 3) RGB bytes, train then valid: lets anyone check the decoding is exact
            'sha256_hwc': hashlib.sha256(x.tobytes()).hexdigest(),
            'note': 'a public CIFAR-10 copy re-encoded as JPEG: pixels differ slightly from the original release'}
    data = write_arrays({'codes': encode_images(x), 'y': y, 'n_train': np.int64(len(train_index)),
                         'train_index': train_index.astype(np.int64), 'valid_index': valid_index.astype(np.int64),
                         'info': np.array(json.dumps(info, sort_keys=True))})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--src', default=DEFAULT_SRC, help=f'folder with {TRAIN_FILE} and {TEST_FILE}')
    parser.add_argument('--out', default=SAMPLE_PATH, help='the sample file to write')
    args = parser.parse_args(argv)
    out = build_sample(args.src, args.out)
    print(f'{out}: {out.stat().st_size / 2**20:.2f} MiB')   # a command's report, not library output
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
