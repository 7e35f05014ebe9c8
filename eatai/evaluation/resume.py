"""The resume file of an evaluation: its finished chunks, and a fingerprint of what it is the evaluation of.

The fingerprint holds hashes of the inputs and of the model's weights (its state dict:
parameters and buffers), the threats, the budget, the seed and the batch size; a file whose
fingerprint differs in any of them is refused, never used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .._utils.io import atomic_write_text

__all__ = ['Progress', 'fingerprint', 'model_digest', 'chunk_key']

_WHAT = {'data': 'inputs', 'model_state': 'model weights', 'model': 'model name', 'threats': 'threats',
         'budget': 'budget', 'seed': 'seed', 'bs': 'batch size', 'union_only': 'union_only'}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # as raw bytes: works for every dtype (bfloat16 has no numpy twin)
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_digest(model) -> str:
    """sha256 of the model's state dict (names, dtypes, shapes and values of parameters and buffers)."""
    state = model.state_dict() if hasattr(model, 'state_dict') else {}
    digest = hashlib.sha256()
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(_tensor_bytes(value))
        else:
            digest.update(f"{name}|{value!r}|".encode())
    return digest.hexdigest()


def fingerprint(model, x, y, threats, budget, seed, bs, union_only, name) -> dict:
    """What an evaluation is of; a resume file is only reused for an equal fingerprint."""
    data = hashlib.sha256(_tensor_bytes(x.float()))
    data.update(_tensor_bytes(y.long()))
    return {'data': data.hexdigest(), 'model_state': model_digest(model), 'threats': [str(t) for t in threats],
            'budget': repr(budget), 'seed': seed, 'bs': bs, 'union_only': union_only, 'model': name}


def chunk_key(threat, attack: str, chunk: torch.Tensor) -> str:
    """'linf:8/255|apgd-t|0-249|250|<hash of the indices>': one attack on one chunk of points."""
    ids = hashlib.blake2b(chunk.cpu().numpy().tobytes(), digest_size=6).hexdigest()
    return f"{threat}|{attack}|{chunk[0].item()}-{chunk[-1].item()}|{len(chunk)}|{ids}"


class Progress:
    """Finished chunks of an evaluation, kept in a JSON file so that a long evaluation resumes."""

    def __init__(self, path, print_: dict):
        self.path, self.fingerprint, self.done = (Path(path) if path else None), print_, {}
        if self.path is not None and self.path.exists():
            saved = json.loads(self.path.read_text())
            theirs = saved.get('fingerprint') or {}
            if theirs != print_:
                differ = [_WHAT.get(k, k) for k in print_ if theirs.get(k) != print_[k]] or ['format']
                raise ValueError(f"{self.path} holds the progress of another evaluation (other "
                                 f"{', '.join(differ)}): it is not used; delete it or give another resume_file")
            self.done = saved['done']

    def get(self, key: str):
        return self.done.get(key)

    def put(self, key: str, flags: list) -> None:
        if self.path is None:
            return
        self.done[key] = flags
        atomic_write_text(json.dumps({'fingerprint': self.fingerprint, 'done': self.done}), self.path)
