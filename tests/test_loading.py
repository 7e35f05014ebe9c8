"""Loading weights from local files in the forms people have, RobustBench ids (absent, broken
and working robustbench packages), and `load_model`'s dispatch between paths, names and ids."""
import argparse
import sys

import pytest
import torch
from torch import nn

from eatai.models import (
    Normalized,
    build_model,
    load_model,
    load_robustbench,
    load_state_dict_file,
    load_weights,
    save_checkpoint,
)


def cnn(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return build_model('cifar_cnn', num_classes)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def source():
    return cnn(seed=1)


@pytest.fixture
def no_robustbench(monkeypatch):
    """Whatever robustbench this process has is forgotten; imports see the sys.path the test sets up."""
    for name in [n for n in sys.modules if n == 'robustbench' or n.startswith('robustbench.')]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n == 'robustbench' or n.startswith('robustbench.')]:
        del sys.modules[name]


def fake_package(root, init: str, utils: str = ''):
    pkg = root / 'robustbench'
    pkg.mkdir()
    (pkg / '__init__.py').write_text(init)
    (pkg / 'utils.py').write_text(utils)
    return root


# --- load_state_dict_file ------------------------------------------------------------------------

@pytest.mark.parametrize('form', ['bare', 'state_dict', 'model', 'model_state_dict', 'nested', 'module', 'compiled',
                                  'ddp_compiled', 'eatai'])
def test_every_file_form_gives_the_inner_state_dict(tmp_path, source, form):
    inner = source.model.state_dict()
    path = tmp_path / 'w.pt'
    if form == 'eatai':
        save_checkpoint(source, path, 'cifar_cnn')
    else:
        prefix = {'module': 'module.', 'compiled': '_orig_mod.', 'ddp_compiled': 'module._orig_mod.'}.get(form, '')
        state = {prefix + k: v for k, v in inner.items()}
        wrapped = {'bare': state, 'nested': {'model': {'state_dict': state}, 'epoch': 3}}.get(
            form, {form: state, 'epoch': 3, 'best_acc': 0.5} if form in ('state_dict', 'model', 'model_state_dict')
            else state)
        torch.save(wrapped, path)
    loaded = load_state_dict_file(path)
    assert loaded.keys() == inner.keys()
    assert all(torch.equal(loaded[k], inner[k]) for k in inner)


def test_compile_prefix_inside_the_keys_is_dropped(tmp_path, source):
    state = {k.replace('features.', 'features._orig_mod.', 1): v for k, v in source.model.state_dict().items()}
    torch.save(state, tmp_path / 'w.pt')
    assert load_state_dict_file(tmp_path / 'w.pt').keys() == source.model.state_dict().keys()


def test_a_module_named_module_is_kept_when_not_every_key_has_it(tmp_path):
    torch.save({'module.weight': torch.zeros(1), 'head.weight': torch.zeros(1)}, tmp_path / 'w.pt')
    assert set(load_state_dict_file(tmp_path / 'w.pt')) == {'module.weight', 'head.weight'}


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.pt'):
        load_state_dict_file(tmp_path / 'nothere.pt')
    with pytest.raises(IsADirectoryError, match='folder'):
        load_state_dict_file(tmp_path)


def test_a_file_without_a_state_dict_says_what_is_accepted(tmp_path):
    torch.save({'epoch': 3, 'acc': torch.tensor(0.5), 'opt': {'lr': 0.1}}, tmp_path / 'w.pt')
    with pytest.raises(ValueError, match=r"no state dict .*'acc', 'epoch', 'opt'.*'state_dict'"):
        load_state_dict_file(tmp_path / 'w.pt')


def test_pickled_objects_are_refused_unless_trusted(tmp_path, source):
    path = tmp_path / 'w.pt'
    torch.save({'state_dict': source.model.state_dict(), 'args': argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match=r'argparse\.Namespace.*trusted=True'):
        load_state_dict_file(path)
    assert load_state_dict_file(path, trusted=True).keys() == source.model.state_dict().keys()


# --- load_weights --------------------------------------------------------------------------------

def test_inner_keys_go_into_the_inner_model_and_wrapper_keys_into_the_wrapper(tmp_path, source):
    torch.save(source.model.state_dict(), tmp_path / 'inner.pt')
    target = cnn(seed=2)
    load_weights(target, tmp_path / 'inner.pt')
    assert same_weights(target, source)

    other = Normalized(cnn(seed=3).model, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    torch.save({'model': other.state_dict()}, tmp_path / 'learner.pth')   # a Learner.save of a Normalized model
    load_weights(target, tmp_path / 'learner.pth')
    assert same_weights(target, other)                                      # mean and std come along


def test_model_prefix_is_dropped_for_a_plain_model(source):
    plain = cnn(seed=4).model
    load_weights(plain, {'model.' + k: v for k, v in source.model.state_dict().items()})
    assert same_weights(plain, source.model)


def test_wrapped_models_and_state_dicts_in_memory(source):
    target = nn.DataParallel(cnn(seed=5))
    load_weights(target, {'state_dict': {'module.' + k: v for k, v in source.model.state_dict().items()}})
    assert same_weights(target.module, source)


def test_shape_mismatches_are_named_one_by_one(tmp_path):
    torch.save(cnn(num_classes=100).model.state_dict(), tmp_path / 'c100.pt')
    with pytest.raises(ValueError) as info:
        load_weights(cnn(num_classes=10), tmp_path / 'c100.pt')
    msg = str(info.value)
    assert 'c100.pt' in msg and 'shape mismatches (2;' in msg
    assert 'head.weight: expected (10, 128), found (100, 128)' in msg
    assert 'head.bias: expected (10,), found (100,)' in msg
    with pytest.raises(ValueError, match='never shape mismatches|head.weight'):
        load_weights(cnn(), tmp_path / 'c100.pt', strict=False)


def test_missing_and_unexpected_keys_are_listed_and_truncated(source):
    state = {('renamed.' + k if k.startswith('features') else k): v for k, v in source.model.state_dict().items()}
    state['extra'] = torch.zeros(1)
    target = cnn()
    with pytest.raises(ValueError) as info:
        load_weights(target, state)
    msg = str(info.value)
    n_features = sum(k.startswith('features') for k in target.model.state_dict())
    n_missing = n_features - 5                                  # BatchNorm supplies num_batches_tracked itself
    assert f'missing from the weights ({n_missing}): features.' in msg
    assert f'... and {n_missing - 10} more' in msg
    assert f'unexpected in the weights ({n_features + 1}): extra, renamed.' in msg
    assert 'strict=False' in msg
    result = load_weights(target, state, strict=False)
    assert len(result.missing_keys) == n_missing and 'extra' in result.unexpected_keys
    assert torch.equal(target.model.head.weight, source.model.head.weight)


def test_old_checkpoints_without_num_batches_tracked_load_strictly(source):
    state = {k: v for k, v in source.model.state_dict().items() if not k.endswith('num_batches_tracked')}
    target = cnn(seed=6)
    load_weights(target, state)
    assert torch.equal(target.model.head.weight, source.model.head.weight)


# --- RobustBench ---------------------------------------------------------------------------------

def test_absent_robustbench_gives_the_manual_route(monkeypatch, no_robustbench):
    monkeypatch.setitem(sys.modules, 'robustbench', None)   # how Python marks a module as not importable
    with pytest.raises(ImportError) as info:
        load_robustbench('Gowal2020Uncovering_70_16_extra')
    msg = str(info.value)
    assert 'robustbench could not be imported' in msg
    assert "load_model('wrn_70_16_dm', weights='path.pt')" in msg and "robust_learner(dls, 'wrn_70_16_dm'" in msg
    assert 'model-zoo' in msg or 'model zoo' in msg


def test_broken_robustbench_names_the_reason(tmp_path, monkeypatch, no_robustbench):
    fake_package(tmp_path, "raise ModuleNotFoundError(\"No module named 'pkg_resources'\", name='pkg_resources')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        load_model('Sehwag2020Hydra')   # not in eatai's zoo: only robustbench knows it
    msg = str(info.value)
    assert "robustbench could not be imported (ModuleNotFoundError: No module named 'pkg_resources')" in msg
    assert "load_model('<architecture>', weights='path.pt')" in msg
    assert 'pip install' not in msg           # installing it is not the fix for a broken release


def test_robustbench_failing_otherwise_at_import(tmp_path, monkeypatch, no_robustbench):
    fake_package(tmp_path, "import autoattack_that_pypi_does_not_have\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"could not be imported \(ModuleNotFoundError: .*autoattack_that_pypi"
                                          r".*load_model\('wrn_34_20', weights='path.pt'\)"):
        load_robustbench('Sehwag2021Proxy_34_20')


def test_working_robustbench_model_is_returned_as_it_is(tmp_path, monkeypatch, no_robustbench):
    fake_package(tmp_path, '', "import torch\nCALLS = []\n"
                 "def load_model(**kwargs):\n    CALLS.append(kwargs)\n"
                 "    if kwargs['model_name'] == 'Nobody2020Unknown':\n        raise KeyError('Nobody2020Unknown')\n"
                 "    return torch.nn.Identity().eval()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # an id outside eatai's zoo goes to robustbench (zoo ids never do: tests/test_zoo.py)
    model = load_model('Rebuffi2021Fixing_70_16_cutmix_extra', threat_model='linf', model_dir=tmp_path / 'zoo')
    assert type(model) is nn.Identity                          # no Normalized: it takes [0,1] itself
    from robustbench.utils import CALLS
    assert CALLS == [dict(model_name='Rebuffi2021Fixing_70_16_cutmix_extra', model_dir=str(tmp_path / 'zoo'),
                          dataset='cifar10', threat_model='Linf')]
    with pytest.raises(RuntimeError, match=r"could not load 'Nobody2020Unknown' for cifar10/Linf \(KeyError.*by hand"):
        load_robustbench('Nobody2020Unknown')


# --- load_model dispatch --------------------------------------------------------------------------

def test_timm_names_build_normalized_models_and_load_weights(tmp_path, source):
    torch.save({'state_dict': source.model.state_dict()}, tmp_path / 'w.pth')
    model = load_model('cifar_cnn', weights=tmp_path / 'w.pth')
    assert isinstance(model, Normalized) and same_weights(model, source)
    timm_model = load_model('resnet18', num_classes=3)        # timm's own, config mean/std
    assert isinstance(timm_model, Normalized) and timm_model.model.num_classes == 3
    assert torch.allclose(timm_model.mean.flatten(), torch.tensor((0.485, 0.456, 0.406)))


def test_checkpoint_paths_rebuild_the_model(tmp_path, source):
    save_checkpoint(source, tmp_path / 'ck.pt', 'cifar_cnn')
    for arch in (tmp_path / 'ck.pt', str(tmp_path / 'ck.pt')):
        assert same_weights(load_model(arch), source)
    with pytest.raises(ValueError, match='own weights'):
        load_model(tmp_path / 'ck.pt', weights=tmp_path / 'ck.pt')


def test_a_weights_file_as_arch_says_to_name_the_architecture(tmp_path, source):
    torch.save(source.model.state_dict(), tmp_path / 'bare.pt')
    with pytest.raises(ValueError, match=r"not an eatai checkpoint.*load_model\('<arch>', weights="):
        load_model(tmp_path / 'bare.pt')


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='gone.pt'):
        load_model(str(tmp_path / 'gone.pt'))


def test_robustbench_ids_refuse_weights_and_normalisation():
    with pytest.raises(ValueError, match='RobustBench id'):
        load_model('Rebuffi2021Fixing_70_16_cutmix_extra', weights='w.pt')
    with pytest.raises(ValueError, match='zoo id'):
        load_model('Gowal2020Uncovering_70_16_extra', weights='w.pt')


def test_unknown_names_list_what_is_accepted():
    with pytest.raises(ValueError) as info:
        load_model('resnet_18')
    msg = str(info.value)
    assert 'checkpoint file' in msg and 'timm model name' in msg and 'RobustBench' in msg
    assert "Did you mean 'resnet18'" in msg
    with pytest.raises(ValueError, match='unknown model'):
        load_model('gowal2020uncovering')                       # not CamelCase author+year: not an id
