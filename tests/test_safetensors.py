"""Checkpoints in safetensors: the round trip through save_checkpoint / load_checkpoint / load_model,
the architecture and normalisation in the metadata, no pickle, `.pt` still the default."""
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from eatai.all import build_model, load_checkpoint, load_model, save_checkpoint
from eatai.models import load_state_dict_file


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model('cifar_cnn', 10, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), width=4, **kwargs).eval()


def test_round_trip_keeps_weights_architecture_and_normalisation(tmp_path):
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / 'm.safetensors', 'cifar_cnn', {'width': 4}, meta={'epochs': 3})
    with safe_open(str(path), framework='pt') as f:
        metadata = f.metadata()
    assert json.loads(metadata['arch']) == 'cifar_cnn' and json.loads(metadata['arch_kwargs'])['width'] == 4
    assert json.loads(metadata['mean']) == pytest.approx([0.1, 0.2, 0.3])
    assert json.loads(metadata['std']) == pytest.approx([0.5, 0.6, 0.7])
    x = torch.rand(4, 3, 32, 32)
    for loaded in (load_checkpoint(path), load_model(path), load_model(str(path))):
        assert torch.equal(loaded.eval()(x), model(x))
        assert loaded.meta == {'epochs': 3}


def test_no_pickle_in_the_file(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / 'm.bin', 'cifar_cnn', {'width': 4}, format='safetensors')
    data = path.read_bytes()
    assert data[8:9] == b'{' and b'\x80\x02' not in data[:16]   # a JSON header, not a pickle stream
    with pytest.raises((pickle.UnpicklingError, RuntimeError, ValueError, EOFError)):
        torch.load(path, weights_only=False)
    assert torch.equal(load_checkpoint(path).model.head.weight, tiny_model().model.head.weight)


def test_pt_stays_the_default(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / 'm.pt', 'cifar_cnn', {'width': 4})
    assert torch.load(path, weights_only=True)['arch'] == 'cifar_cnn'
    with pytest.raises(ValueError, match='unknown checkpoint format'):
        save_checkpoint(tiny_model(), tmp_path / 'm2.pt', 'cifar_cnn', {'width': 4}, format='pickle')


def test_meta_must_be_json(tmp_path):
    with pytest.raises(ValueError, match='JSON'):
        save_checkpoint(tiny_model(), tmp_path / 'm.safetensors', 'cifar_cnn', {'width': 4}, meta={'x': object()})
    assert not (tmp_path / 'm.safetensors').exists()


def test_bare_safetensors_weights_load_with_an_architecture(tmp_path):
    model = tiny_model(seed=1)
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(tmp_path / 'w.safetensors'))
    assert set(load_state_dict_file(tmp_path / 'w.safetensors')) == set(model.model.state_dict())
    loaded = load_model('cifar_cnn', weights=tmp_path / 'w.safetensors', width=4)
    assert torch.equal(loaded.model.head.bias, model.model.head.bias)
    with pytest.raises(ValueError, match='not an eatai checkpoint'):
        load_model(tmp_path / 'w.safetensors')
