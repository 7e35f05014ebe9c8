"""Exported folders (issue 24): model.safetensors, config.json in timm's format, a Hugging Face model card.

timm loads them (`local-dir:` and, offline from a cache laid out as huggingface_hub lays it out, `hf-hub:`) with
logits identical to the exported model's for [0,1] inputs, for every architecture eatai registers with timm
and for timm's own (through `eatai_normalized`); eatai's `load_model` loads them too. Bad input: one line,
nothing written or overwritten.
"""
import hashlib
import json
import os

import huggingface_hub
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub.file_download import repo_folder_name
from timm.data import resolve_data_config
from timm.models import model_entrypoint

from eatai.all import (AdversarialTraining, AttackSettings, EvalBudget, APGDSettings, RobustResult, arrays_dls,
                       build_model, export_model, load_model, robust_learner, save_checkpoint)
from eatai.cli import main
from eatai.models.hub import EXPORT_FILES

pytestmark = pytest.mark.usefixtures('one_thread')

# every architecture eatai registers with timm, with the arguments that make it small where it takes any, and
# the input size its test uses. The WideResNets take no size arguments: they are exported at full size
# (36M-267M parameters, up to 1 GB of weights) and run on 8x8 inputs, which they accept (global pooling).
ARCHS = {
    'cifar_cnn': ({'width': 4}, 32),
    'preact_resnet18': ({}, 32),
    'preact_resnet18_softplus': ({}, 32),
    'resnet50_cifar': ({}, 16),
    'vit_small_patch4_32': ({'embed_dim': 16, 'depth': 1, 'num_heads': 2}, 32),
    'xcit_small_12_p4_32': ({'embed_dim': 16, 'depth': 1, 'num_heads': 2}, 16),
    'xcit_medium_12_p4_32': ({'embed_dim': 16, 'depth': 1, 'num_heads': 2}, 16),
    'xcit_large_12_p4_32': ({'embed_dim': 16, 'depth': 1, 'num_heads': 2}, 16),
    'wrn_28_10': ({}, 8), 'wrn_34_20': ({}, 8), 'wrn_70_16': ({}, 8),
    'wrn_28_10_dm': ({}, 8), 'wrn_34_20_dm': ({}, 8), 'wrn_70_16_dm': ({}, 8),
}

BIG = {'wrn_34_20', 'wrn_70_16', 'wrn_34_20_dm', 'wrn_70_16_dm'}   # 185M-267M parameters: 8-18 s each on 2 CPUs


def eatai_archs() -> set:
    return {n for n in timm.list_models() if getattr(model_entrypoint(n), 'hub_loadable', False)} - {'eatai_normalized'}


def test_every_architecture_eatai_registers_is_tested():
    assert eatai_archs() == set(ARCHS)


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _built(arch, kwargs, classes=10):
    torch.manual_seed(0)
    model = build_model(arch, classes, **kwargs)
    for m in model.modules():   # BatchNorm statistics that are not the identity, so they are checked too
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_timm_and_eatai_load_the_export_with_identical_logits(arch, tmp_path):
    kwargs, size = ARCHS[arch]
    model = _built(arch, kwargs)
    export_model(model, tmp_path / 'out')
    x = torch.rand(2, 3, size, size)
    expected = _logits(model, x)
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert torch.equal(_logits(loaded, x), expected)
    if arch not in BIG:   # load_model goes through the same timm.create_model; a third 100M+ model adds time only
        assert torch.equal(_logits(load_model(str(tmp_path / 'out')), x), expected)
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == arch and config['num_classes'] == 10


def test_timm_reads_mean_0_std_1_so_inputs_stay_in_0_1(tmp_path):
    model = _built('cifar_cnn', {'width': 4})
    export_model(model, tmp_path / 'out')
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    data = resolve_data_config({}, model=loaded)
    assert data['mean'] == [0.0] * 3 and data['std'] == [1.0] * 3 and tuple(data['input_size']) == (3, 32, 32)
    assert torch.equal(loaded.mean, model.mean) and torch.equal(loaded.std, model.std)


@pytest.mark.parametrize('arch,size', [('test_resnet', 32), ('test_vit', 160)])
def test_timm_architectures_export_through_the_wrapper(arch, size, tmp_path):
    model = _built(arch, {}, classes=3)
    export_model(model, tmp_path / 'out', dataset='imagenet', input_size=(3, size, size))
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == 'eatai_normalized' and config['model_args']['arch'] == arch
    x = torch.rand(2, 3, size, size)
    expected = _logits(model, x)
    assert torch.equal(_logits(timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True), x), expected)
    assert torch.equal(_logits(load_model(tmp_path / 'out'), x), expected)


def _hub_cache(folder, cache, repo_id, commit='0123456789abcdef0123456789abcdef01234567'):
    """The layout huggingface_hub keeps its downloads in: blobs named by their hash, a snapshot per commit
    linking to them, refs/main naming the commit."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type='model')
    (repo / 'blobs').mkdir(parents=True)
    (repo / 'snapshots' / commit).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    for f in folder.iterdir():
        blob = repo / 'blobs' / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, repo / 'snapshots' / commit), repo / 'snapshots' / commit / f.name)
    return repo


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline Hub whose cache is `tmp_path / 'hub'`: no network is tried."""
    cache = tmp_path / 'hub'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    return cache


def test_hub_ids_load_offline_from_the_cache(tmp_path, offline_hub):
    model = _built('preact_resnet18_softplus', {})
    export_model(model, tmp_path / 'out', name='tiny-eat')
    _hub_cache(tmp_path / 'out', offline_hub, 'someone/tiny-eat')
    report = huggingface_hub.scan_cache_dir(offline_hub)   # huggingface_hub reads the layout as its own
    assert [r.repo_id for r in report.repos] == ['someone/tiny-eat'] and not report.warnings
    assert huggingface_hub.try_to_load_from_cache('someone/tiny-eat', 'config.json') is not None
    x = torch.rand(2, 3, 32, 32)
    expected = _logits(model, x)
    assert torch.equal(_logits(timm.create_model('hf-hub:someone/tiny-eat', pretrained=True), x), expected)
    assert torch.equal(_logits(load_model('hf-hub:someone/tiny-eat'), x), expected)
    with pytest.raises(FileNotFoundError, match='no config.json on the Hub or in the cache'):
        load_model('hf-hub:someone/not-there')


def _tiny_learner(path):
    torch.manual_seed(0)
    x, y = torch.rand(24, 3, 32, 32), torch.randint(0, 4, (24,))
    dls = arrays_dls(x[:16], y[:16], x[16:], y[16:], bs=8, vocab=['cat', 'dog', 'frog', 'ship'])
    adversary = AdversarialTraining('eat', AttackSettings.build(n_iter=1), show_stats=False)
    return robust_learner(dls, 'cifar_cnn', width=4, cbs=[adversary], path=path)


TINY = EvalBudget('tiny', linf=APGDSettings(2, 1, 2), l2=APGDSettings(2, 1, 2),
                  l1=APGDSettings(2, 1, 2, use_largereps=True))


def test_export_robust_writes_a_hub_card_with_the_recipe_and_the_evaluation(tmp_path):
    learn = _tiny_learner(tmp_path)
    with learn.no_bar():
        learn.fit(1, 0.01)   # a constant lr: the peak is 0.01
        result = learn.robust_eval(n=8, budget=TINY, progress=False)
    folder = learn.export_robust(tmp_path / 'exported', results=result, recipe={'note': 'a test'})
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORT_FILES)
    card = ModelCard.load(folder / 'README.md')
    data = card.data
    assert data.library_name == 'timm' and 'adversarial-robustness' in data.tags
    assert {'linf', 'l2', 'l1'} <= set(data.tags) and data.datasets == ['uoft-cs/cifar10']
    evals = {e.metric_config: e for e in data.eval_results}
    assert set(evals) == {'clean', *result.threats, 'union'}
    for threat in result.threats:
        e = evals[threat]
        assert e.metric_args['budget'] == result.budget and result.budget.startswith('tiny budget')
        assert e.metric_args['threat'] == threat and f'budget {result.budget}' in e.metric_name
        assert e.metric_value == pytest.approx(100 * result.robust[threat], abs=0.01)
        assert e.dataset_type == 'uoft-cs/cifar10' and e.task_type == 'image-classification'
    assert evals['union'].metric_value == pytest.approx(100 * result.union, abs=0.01)
    for line in ('| scheme | eat |', '| epochs | 1 |', '| start_model | cifar_cnn |', '| note | a test |',
                 '| training_threats | ["linf:8/255", "l1:12"] |', f'budget {result.budget}'):
        assert line in card.text, line
    assert '| lr | 0.01 |' in card.text
    assert f"| {result.threats[0]} | {100 * result.robust[result.threats[0]]:.2f} | yes |" in card.text
    config = json.loads((folder / 'config.json').read_text())
    assert config['label_names'] == ['cat', 'dog', 'frog', 'ship'] and config['num_classes'] == 4
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(_logits(load_model(folder), x), _logits(learn.model, x))


def test_the_command_exports_a_checkpoint(tmp_path, capsys):
    model = _built('cifar_cnn', {'width': 4})
    save_checkpoint(model, tmp_path / 'ckpt.pt', 'cifar_cnn', {'width': 4})
    assert main(['export', '--model', str(tmp_path / 'ckpt.pt'), '--out', str(tmp_path / 'out'),
                 '--recipe', 'scheme=eat', '--recipe', 'epochs=3', '--name', 'my-model']) == 0
    assert 'exported to' in capsys.readouterr().out
    card = ModelCard.load(tmp_path / 'out' / 'README.md')
    assert card.data.model_name == 'my-model' and '| epochs | 3 |' in card.text and card.data.eval_results is None
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(_logits(timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True), x),
                       _logits(model, x))


def _result(**kw):
    flags = {'clean': [True, True, True, False], 'linf:8/255': [True, False, True, False],
             'l1:12': [True, True, False, False], 'union': [True, False, False, False]}
    return RobustResult(n=4, clean=0.75, robust={'linf:8/255': 0.5, 'l1:12': 0.5}, union=0.25,
                        threats=['linf:8/255', 'l1:12'], budget='standard', exact={'linf:8/255': True, 'l1:12': False},
                        flags=flags, seconds={}, **kw)


def test_the_command_puts_results_files_on_the_card(tmp_path, capsys):
    save_checkpoint(_built('cifar_cnn', {'width': 4}), tmp_path / 'ckpt.pt', 'cifar_cnn', {'width': 4})
    _result().to_json(tmp_path / 'res.json')
    assert main(['export', '--model', str(tmp_path / 'ckpt.pt'), '--out', str(tmp_path / 'out'),
                 '--results', str(tmp_path / 'res.json')]) == 0
    card = ModelCard.load(tmp_path / 'out' / 'README.md')
    values = {e.metric_config: e.metric_value for e in card.data.eval_results}
    assert values == {'clean': 75.0, 'linf:8/255': 50.0, 'l1:12': 50.0, 'union': 25.0}
    assert "budget standard (APGD-CE + APGD-T with AutoAttack's settings)" in card.text
    assert '| l1:12 | ≤ 50.00 | yes |' in card.text and '| union | 25.00 |  |' in card.text
    (tmp_path / 'bad.json').write_text('{"n": 4}')
    err = _one_line_error(capsys, ['export', '--model', str(tmp_path / 'ckpt.pt'), '--out', str(tmp_path / 'new'),
                                   '--results', str(tmp_path / 'bad.json')])
    assert 'bad.json' in err and 'missing fields' in err and not (tmp_path / 'new').exists()


# bad input: one clear line each, nothing written or overwritten

def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'eatai {argv[0]}: error: ') and '\n' not in err
    return err


def test_a_folder_that_is_not_empty_is_refused_unless_overwrite(tmp_path, capsys):
    model = _built('cifar_cnn', {'width': 4})
    save_checkpoint(model, tmp_path / 'ckpt.pt', 'cifar_cnn', {'width': 4})
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    err = _one_line_error(capsys, ['export', '--model', str(tmp_path / 'ckpt.pt'), '--out', str(out)])
    assert 'is not empty' in err and '--overwrite' in err
    assert sorted(p.name for p in out.iterdir()) == ['notes.txt']
    assert main(['export', '--model', str(tmp_path / 'ckpt.pt'), '--out', str(out), '--overwrite']) == 0
    assert (out / 'notes.txt').read_text() == 'mine' and (out / 'model.safetensors').is_file()


def test_a_folder_without_config_is_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError) as e:
        load_model(tmp_path / 'empty')
    assert 'has no config.json' in str(e.value) and '\n' not in str(e.value)


def test_an_architecture_eatai_does_not_know_is_one_line(tmp_path):
    export_model(_built('cifar_cnn', {'width': 4}), tmp_path / 'out')
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    config['architecture'] = config['eatai']['arch'] = 'resnet_from_the_future'
    (tmp_path / 'out' / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError) as e:
        load_model(tmp_path / 'out')
    assert "'resnet_from_the_future', which eatai does not know" in str(e.value) and '\n' not in str(e.value)


def test_a_model_its_architecture_does_not_rebuild_is_refused_before_writing(tmp_path):
    model = _built('cifar_cnn', {'width': 4})
    with pytest.raises(ValueError, match='do not fit cifar_cnn'):
        export_model(model, tmp_path / 'out', arch_kwargs={'num_classes': 10})   # built with width=4, not 32
    with pytest.raises(ValueError, match='unknown architecture'):
        export_model(model, tmp_path / 'out', arch='no_such_net')
    assert not (tmp_path / 'out').exists()
