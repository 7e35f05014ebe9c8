"""File helpers shared by the layers: atomic writes, so a crash never leaves a truncated file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ['atomic_torch_save', 'atomic_write_text', 'atomic_write_bytes', 'cache_dir']


def _atomic(path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes it 0600; give it a plain file's permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj, path) -> Path:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path) -> Path:
    """Write `text` (utf-8) to `path` atomically."""
    return _atomic(path, lambda f: f.write(text.encode('utf-8')))


def atomic_write_bytes(data: bytes, path) -> Path:
    """Write `data` to `path` atomically."""
    return _atomic(path, lambda f: f.write(data))


def cache_dir() -> Path:
    """eatai's cache folder (zoo checkpoints, corruptions): $EATAI_HOME, else `<torch hub dir>/eatai`."""
    home = os.environ.get('EATAI_HOME')
    return Path(home).expanduser() if home else Path(torch.hub.get_dir()) / 'eatai'
