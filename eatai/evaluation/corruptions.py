"""Common corruptions (Hendrycks & Dietterich, ICLR 2019) as threats, generated, cached, and their accuracy (mCA).

The 15 CIFAR-10-C / ImageNet-C types and the 4 extra ones, at severities 1-5, generated from the test images and
cached on disk; accuracy per type and severity, and their mean.

The pixels come from `imagecorruptions-imaug` (pinned in pyproject), the maintained fork of bethgelab's
`imagecorruptions`: the PyPI release of the original (1.1.2, 2020) calls scikit-image's `gaussian(...,
multichannel=True)`, removed in scikit-image 0.19, and fails on gaussian and glass blur (bethgelab/imagecorruptions
issue #30; the fix was merged upstream but never released). The fork also takes a seed for glass blur and impulse
noise, whose randomness does not come from numpy's global state.

The library's parameters are ImageNet-C's (made for 224x224 images), applied as they are to any image of at least
32x32 pixels: on CIFAR-10 they are much harsher than CIFAR-10-C's own (hendrycks/robustness make_cifar_c.py; e.g.
gaussian noise sigma 0.08-0.38 against 0.04-0.10, JPEG quality 25-7 against 80-40), so accuracies here are not
comparable with published CIFAR-10-C numbers; they compare models with each other.

Each image is corrupted with its own seed, `corruption_seed(image, name, severity, seed)`, derived from its bytes:
the same image gets the same corruption in every batch, and `CorruptionThreat.contains` can regenerate it.
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._utils.io import atomic_write_bytes, atomic_write_text, cache_dir
from ..attacks import check_batch, eval_mode
from ..attacks.guards import check_labels
from .checks import check_logits, model_device
from .registry import Threat, register_threat

__all__ = ['CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'SEVERITIES', 'LIBRARY', 'MCA_DEFINITION', 'CorruptionCacheWarning',
           'CorruptionThreat', 'check_corruption', 'check_severity', 'corruption_seed', 'corrupt', 'cached_corruption',
           'default_cache_dir', 'library_versions', 'evaluate_corruptions']

LIBRARY = 'imagecorruptions-imaug'
# the library's `get_corruption_names('common')` and ('validation'), in its order (a test checks they agree)
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur',
               'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate',
               'jpeg_compression')
EXTRA_CORRUPTIONS = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
SEVERITIES = (1, 2, 3, 4, 5)
MCA_DEFINITION = ("mCA: the unweighted mean of the accuracies of every (corruption, severity) pair evaluated, "
                  "as RobustBench's corruption leaderboard (Croce et al., 2021; robustbench/eval.py "
                  "corruptions_evaluation: 15 corruptions x 5 severities)")
_MIN_SIDE = 32                                        # the library refuses smaller images
_OWN_SEED = frozenset({'glass_blur', 'impulse_noise'})  # they draw from numba's / a fresh Generator, not np.random


class CorruptionCacheWarning(UserWarning):
    """A cached corruption file failed its checks (checksum, contents) and is being regenerated."""


def check_corruption(name) -> str:
    """The corruption `name` names (case and spaces ignored); ValueError listing the choices if none."""
    key = str(name).strip().lower().replace(' ', '_').replace('-', '_')
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ''
        raise ValueError(f"unknown corruption {name!r}{hint}: the choices are {', '.join(known)}")
    return key


def check_severity(severity) -> int:
    """`severity` as an int; ValueError naming the range unless it is a whole number in 1..5."""
    ok = (isinstance(severity, (int, float, np.integer, np.floating)) and not isinstance(severity, bool)
          and math.isfinite(severity) and severity == int(severity) and SEVERITIES[0] <= severity <= SEVERITIES[-1])
    if not ok:
        raise ValueError(f"severity {severity!r} is out of range: it must be an integer in "
                         f"{SEVERITIES[0]}..{SEVERITIES[-1]}")
    return int(severity)


@lru_cache(maxsize=None)
def _library():
    """The `imagecorruptions` module of imagecorruptions-imaug, or ImportError saying what to install."""
    install = f"pip install '{LIBRARY}==1.1.5'"
    try:
        metadata.version(LIBRARY)
    except metadata.PackageNotFoundError as e:
        raise ImportError(f"common corruptions need the {LIBRARY} package: {install}. (The PyPI package "
                          "'imagecorruptions' 1.1.2 does not run on scikit-image >= 0.19.)") from e
    try:
        import imagecorruptions
    except ImportError as e:   # e.g. opencv-python without the system's libGL.so.1 (apt-get install libgl1)
        raise ImportError(f"{LIBRARY} is installed but does not import: {e}") from e
    if 'seed' not in inspect.signature(imagecorruptions.corruptions.glass_blur).parameters:
        raise ImportError(f"the imported 'imagecorruptions' module is bethgelab's PyPI release 1.1.2, installed over "
                          f"{LIBRARY} (both install that module name): pip uninstall -y imagecorruptions {LIBRARY}, "
                          f"then {install}")
    return imagecorruptions


@lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    """The versions that decide the corrupted pixels: the library and what it computes with."""
    _library()
    import cv2
    versions = {LIBRARY: metadata.version(LIBRARY), 'opencv': cv2.__version__}
    for dist in ('numpy', 'scikit-image', 'scipy', 'pillow', 'numba'):
        versions[dist] = metadata.version(dist)
    return versions


# ---- images: torch (N, C, H, W) or numpy (N, H, W, C), uint8 or float in [0,1] <-> the library's uint8 HWC

def _check_shape(n_channels: int, height: int, width: int) -> None:
    if n_channels != 3:
        raise ValueError(
            f"corruptions need RGB images with 3 channels, got {n_channels}: the library turns a grayscale image into "
            "3 channels and frost, snow and spatter then add colour, so no 1-channel result exists. Repeat the "
            "channel (x.expand(-1, 3, -1, -1)) for a model that takes RGB inputs.")
    if min(height, width) < _MIN_SIDE:
        raise ValueError(f"corruptions need images of at least {_MIN_SIDE}x{_MIN_SIDE} pixels, got {height}x{width}: "
                         "imagecorruptions refuses smaller ones (its parameters were made for ImageNet's 224x224, "
                         "CIFAR's 32x32 is its minimum)")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"images must be uint8 in [0, 255] or float in [0,1], got dtype {x.dtype}")
    if not np.isfinite(x).all() or x.min(initial=0) < 0 or x.max(initial=0) > 1:
        raise ValueError("float images must lie in [0,1] (and be finite): divide uint8 images by 255")
    return np.rint(x.astype(np.float32, copy=False) * 255).astype(np.uint8)   # k/255 comes back as exactly k


def _as_images(x) -> tuple[np.ndarray, object]:
    """(N, H, W, 3) uint8 images of x, and the function that turns such images back into x's kind: a torch
    tensor (N, C, H, W) or (C, H, W), or a numpy array (N, H, W, C) or (H, W, C); uint8 or float in [0,1]."""
    is_torch = isinstance(x, torch.Tensor)
    if not is_torch and not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a torch tensor (N, C, H, W) or a numpy array (N, H, W, C), got {type(x).__name__}")
    single = x.ndim == 3
    if x.ndim not in (3, 4):
        layout = '(N, C, H, W) or (C, H, W)' if is_torch else '(N, H, W, C) or (H, W, C)'
        raise ValueError(f"x must be images {layout}, got shape {tuple(x.shape)}")
    if is_torch:   # float32 holds k/255 closely enough to round back to k (bfloat16 has no numpy twin)
        arr = (x.detach().cpu().float() if x.is_floating_point() else x.detach().cpu()).numpy()
    else:
        arr = x
    arr = arr[None] if single else arr
    if is_torch:
        arr = arr.transpose(0, 2, 3, 1)                          # (N, C, H, W) -> (N, H, W, C)
    _check_shape(arr.shape[3], arr.shape[1], arr.shape[2])
    images = np.ascontiguousarray(_to_uint8(arr))

    def back(out: np.ndarray):
        res = out[0] if single else out
        if not is_torch:
            return res if x.dtype == np.uint8 else (res / 255).astype(x.dtype)
        t = torch.from_numpy(np.ascontiguousarray(res)).movedim(-1, -3)
        t = t if x.dtype == torch.uint8 else t.to(x.dtype) / 255
        return t.to(x.device)
    return images, back


# ---- generation

def corruption_seed(image: np.ndarray, name: str, severity: int, seed: int = 0) -> int:
    """The numpy seed (0 <= s < 2**32) one image (H, W, 3) uint8 is corrupted with: a hash of its bytes,
    the corruption, the severity and `seed`, so it does not depend on the image's batch or position."""
    h = hashlib.sha256(f"{seed}|{name}|{severity}|{tuple(image.shape)}|".encode())
    h.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return int.from_bytes(h.digest()[:4], 'little')


def _generate(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8: the library's `corrupt` on each image after `np.random.seed(corruption_seed(...))`
    (and seed= for glass blur and impulse noise); numpy's global random state is restored afterwards."""
    lib = _library()
    out = np.empty_like(images)
    state = np.random.get_state()
    try:
        for i, image in enumerate(images):
            s = corruption_seed(image, name, severity, seed)
            np.random.seed(s)
            kwargs = {'seed': s} if name in _OWN_SEED else {}
            out[i] = lib.corrupt(image, severity=severity, corruption_name=name, **kwargs)
    finally:
        np.random.set_state(state)
    return out


def corrupt(x, name: str, severity: int, seed: int = 0):
    """x corrupted by `name` at `severity` (1..5), image by image, deterministic for a `seed`: the same kind,
    shape, dtype and device as x (torch (N, C, H, W) / numpy (N, H, W, C), uint8 or float in [0,1]; float
    images are rounded to uint8 first, exact for k/255 values). No cache: see `cached_corruption`."""
    name, severity = check_corruption(name), check_severity(severity)
    images, back = _as_images(x)
    return back(_generate(images, name, severity, seed))


# ---- the disk cache: one .npz per (images, corruption, severity, seed, versions), a .sha256 file beside it

def default_cache_dir() -> Path:
    """Where corruptions are cached: the `corruptions` folder of eatai's cache ($EATAI_HOME, else the torch hub folder's)."""
    return cache_dir() / 'corruptions'


def _cache_path(images: np.ndarray, name: str, severity: int, seed: int, cache_dir) -> Path:
    h = hashlib.sha256(json.dumps({'corruption': name, 'severity': severity, 'seed': seed, 'shape': images.shape,
                                   'versions': library_versions()}, sort_keys=True).encode())
    h.update(images.tobytes())
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"{name}-{severity}-{h.hexdigest()[:32]}.npz"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + '.sha256')


def _load(path: Path, shape: tuple) -> np.ndarray | None:
    """The cached images at `path`, or None (with a warning if a file is there but fails a check)."""
    if not path.exists():
        return None
    data, sidecar = path.read_bytes(), _sidecar(path)
    recorded = sidecar.read_text().split()[:1] if sidecar.exists() else []
    if recorded != [hashlib.sha256(data).hexdigest()]:
        why = 'its checksum file is missing' if not sidecar.exists() else 'it does not match its SHA-256 checksum'
        warnings.warn(f"corruption cache file {path}: {why}; regenerating it", CorruptionCacheWarning, stacklevel=3)
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            images = npz['x']
    except Exception as e:   # a file that passed its checksum but is not ours: regenerate, never use
        warnings.warn(f"corruption cache file {path} cannot be read ({e}); regenerating it", CorruptionCacheWarning,
                      stacklevel=3)
        return None
    if images.shape != shape or images.dtype != np.uint8:
        warnings.warn(f"corruption cache file {path} holds {images.dtype} {images.shape}, expected uint8 {shape}; "
                      "regenerating it", CorruptionCacheWarning, stacklevel=3)
        return None
    return images


def _store(path: Path, images: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=images)
    data = buf.getvalue()
    atomic_write_bytes(data, path)                       # the data first: a crash leaves no checksum, so a rerun
    atomic_write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n", _sidecar(path))   # regenerates


def cached_corruption(x, name: str, severity: int, seed: int = 0, cache_dir=None):
    """`corrupt(x, name, severity, seed)`, loaded from the disk cache when there, else generated and stored
    (atomically, with a SHA-256 file beside it). The key hashes x's uint8 bytes, the corruption, the severity,
    the seed and `library_versions()`. A file failing its checksum is regenerated with a CorruptionCacheWarning.
    cache_dir: None for `default_cache_dir()`."""
    name, severity = check_corruption(name), check_severity(severity)
    images, back = _as_images(x)
    path = _cache_path(images, name, severity, seed, cache_dir)
    out = _load(path, images.shape)
    if out is None:
        out = _generate(images, name, severity, seed)
        _store(path, out)
    return back(out)


# ---- evaluation

@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, device, y_max) -> float:
    correct = 0
    for i in range(0, len(y), bs):
        yb, logits = y[i:i + bs].to(device), model(x[i:i + bs].to(device))
        check_labels(yb, logits, y_max)
        check_logits(logits)
        correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y)


def _names(corruptions) -> list[str]:
    names = [check_corruption(c) for c in ([corruptions] if isinstance(corruptions, str) else corruptions)]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"corruptions must be a non-empty list without repeats, got {names}")
    return names


def _severities(severities) -> list[int]:
    sevs = [check_severity(s) for s in ([severities] if np.isscalar(severities) else severities)]
    if not sevs or len(set(sevs)) != len(sevs):
        raise ValueError(f"severities must be a non-empty list without repeats, got {sevs}")
    return sevs


def evaluate_corruptions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, corruptions=CORRUPTIONS,
                         severities=SEVERITIES, bs: int = 256, cache_dir=None, progress: bool = True, seed: int = 0,
                         device=None) -> dict:
    """Accuracy of `model` on x (N, 3, H, W) in [0,1], y (N,) under each corruption and severity.

    Returns a dict: 'clean'; 'per_type_severity' {name: {severity: acc}}; 'per_type' {name: mean over
    severities}; 'per_severity' {severity: mean over types}; 'mCA' (`MCA_DEFINITION`); and 'n', 'corruptions',
    'severities', 'seed', 'library' (`library_versions()`), 'definition'. Corrupted images are cached on disk
    (`cached_corruption`); the model runs in eval mode, its train/eval flags restored afterwards."""
    y_max = check_batch(x, y)
    names, sevs = _names(corruptions), _severities(severities)
    device = model_device(model, device)
    pairs = [(name, severity) for name in names for severity in sevs]
    if progress:
        from .._utils.progress import progress_bar   # bars in a terminal, one line in a log
        pairs = progress_bar(pairs, comment='corruptions')
    with eval_mode(model):
        clean = _accuracy(model, x, y, bs, device, y_max)
        cells = {}
        for name, severity in pairs:
            x_c = cached_corruption(x, name, severity, seed, cache_dir)
            cells[name, severity] = _accuracy(model, x_c, y, bs, device, y_max)
    per_type_severity = {name: {s: cells[name, s] for s in sevs} for name in names}
    return {'clean': clean, 'per_type_severity': per_type_severity,
            'per_type': {name: sum(accs.values()) / len(sevs) for name, accs in per_type_severity.items()},
            'per_severity': {s: sum(cells[name, s] for name in names) / len(names) for s in sevs},
            'mCA': sum(cells.values()) / len(cells), 'n': len(y), 'corruptions': names, 'severities': sevs,
            'seed': seed, 'library': library_versions(), 'definition': MCA_DEFINITION}


# ---- the threat: 'corruption:<name>:<severity>'

@dataclass(frozen=True)
class CorruptionThreat(Threat):
    """A common corruption at a severity (1..5) as a threat: its one member for x is the corruption of x.

    Not an attack: `in_union` is False (the runner keeps it out of the union). The randomness comes from
    `seed` and each image's bytes (`corruption_seed`), not from the runner's seed, so `contains` can
    regenerate the corruption and a point's image does not depend on its batch."""
    corruption: str
    severity: int
    seed: int = 0
    cache_dir: str | None = field(default=None, compare=False)
    name = 'corruption'
    family = 'corruption'
    strength_label = 'severity'
    strength_range = (SEVERITIES[0], SEVERITIES[-1])
    quick_attack_name = 'corruption'
    in_union = False
    nested = False     # severity 3 does not contain severity 2's image: no curve over severity

    def __post_init__(self):
        object.__setattr__(self, 'corruption', check_corruption(self.corruption))
        object.__setattr__(self, 'severity', check_severity(self.severity))

    @property
    def strength(self) -> int:
        return self.severity

    def __str__(self) -> str:
        return f"corruption:{self.corruption}:{self.severity}"

    @property
    def header(self) -> str:
        return f"{self.corruption} ({self.severity})"

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in [0,1] corrupted (through the disk cache)."""
        return cached_corruption(x, self.corruption, self.severity, self.seed, self.cache_dir)

    def contains(self, x, x_adv):
        """(N,) bool: x_adv is the corruption of x, pixel for pixel (equal in uint8: within a quarter step)."""
        if x_adv.shape != x.shape:
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        ref = self.images(x)
        return (x_adv.to(ref) - ref).abs().flatten(1).amax(1) <= 0.25 / 255

    def random_start(self, x, generator=None):
        return self.images(x)

    def attack(self, name, model, x, y, context):
        return self.images(x)

    def quick_attack(self, model, x, y, n_iter, seed):
        return self.images(x)


def _parse(text: str) -> tuple[str, int]:
    """'fog:3' (or 'fog 3') -> ('fog', 3)."""
    name, *rest = re.split(r'\s*[:=\s]\s*', str(text).strip(), maxsplit=1)
    name, rest = check_corruption(name), (rest[0] if rest else '')
    if not rest:
        raise ValueError(f"write a corruption with its severity: 'corruption:{name}:<severity>', severity in "
                         f"{SEVERITIES[0]}..{SEVERITIES[-1]}")
    try:
        value = float(rest)
        value = int(value) if value.is_integer() else value
    except ValueError:
        value = rest
    return name, check_severity(value)


_NO_CURVE = ("corruptions have no robustness curve: a curve needs a threat that grows with its strength, so that "
             "each point has a smallest strength that breaks it, and a corruption's severities are not nested (an "
             "image may be misclassified at severity 2 and not at 3). For accuracy per severity use "
             "learn.corruption_eval(...) / evaluate_corruptions(...) and corruption_table(result)")


def _make(spec) -> CorruptionThreat:
    if isinstance(spec, tuple):
        return CorruptionThreat(*spec)
    if isinstance(spec, (int, float)):   # a bare 'corruption' at a strength: what a curve over strength asks for
        raise ValueError(_NO_CURVE)
    raise ValueError(f"a corruption threat needs its type and severity: write 'corruption:<name>:<severity>' with "
                     f"a name from {', '.join(CORRUPTIONS + EXTRA_CORRUPTIONS)}")


register_threat('corruption', _make, parse=_parse, aliases=('corruptions',), overwrite=True,
                usage=f"'corruption:<name>:<severity>', severity in {SEVERITIES[0]}..{SEVERITIES[-1]} and a name from "
                      f"{', '.join(CORRUPTIONS + EXTRA_CORRUPTIONS)}")
