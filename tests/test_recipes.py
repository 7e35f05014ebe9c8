"""Every recipe takes --smoke, --out-dir, --seed and --help with one meaning, runs end to end with
--smoke and leaves its checkpoint and results JSON."""
import argparse
import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import evaluate_robustness
from eatai.models import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
ALL_RECIPES = sorted((REPO / 'recipes').glob('*.py'))
EVAL_ONLY = ('cifar_unforeseen_eval',)   # evaluates checkpoints, trains nothing: its own test below
RECIPES = [p for p in ALL_RECIPES if p.stem not in ('quickstart', 'train_demo_checkpoint', *EVAL_ONLY)]   # before/after ones
SHARED_DATA = REPO.parent / 'shared' / 'data'


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat(text: str) -> str:
    return ' '.join(text.split())


@pytest.mark.parametrize('path', ALL_RECIPES, ids=lambda p: p.stem)
def test_recipe_help_names_the_common_flags_with_one_meaning(path):
    from eatai.recipes import common_args
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        load(path).main(['--help'])
    assert exit_.value.code == 0
    text = flat(out.getvalue())
    common = [a for a in common_args(argparse.ArgumentParser())._actions if a.dest != 'help']
    assert [a.option_strings[0] for a in common] == ['--smoke', '--out-dir', '--seed']
    for action in common:   # the flag with the very help text of eatai.recipes.common_args
        assert f'{action.option_strings[0]} ' in text and flat(action.help) in text, action.option_strings
    assert '-h, --help' in text


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: p.stem)
def test_recipe_smoke(path, tmp_path, capsys):
    load(path).main(['--smoke', '--out-dir', str(tmp_path)])
    printed = capsys.readouterr().out
    assert 'union' in printed and 'quick budget' in printed
    assert '\r' not in printed and 'epoch' in printed   # not a terminal: fastai's table rows, no bar updates
    results = json.loads((tmp_path / f'{path.stem}.json').read_text())
    assert results['recipe'] == path.stem and results['args']['smoke']
    runs = [name for name in results['results'] if name != 'original']
    assert runs and len(list(tmp_path.glob(f'{path.stem}_*.pt'))) == len(runs)
    assert all(r['n'] == 24 for r in results['results'].values())
    # what `eatai compare` reads: each trained run's cost (epochs, seconds), none for the original
    from eatai.evaluation import compare_results
    assert set(results['training']) == set(runs) and results['results_format'] == 2
    costs = {row.name: row.training for row in compare_results(tmp_path / f'{path.stem}.json').rows}
    assert all(costs[name].epochs >= 1 and costs[name].seconds > 0 for name in runs) and costs.get('original') is None
    saved = {name: torch.load(p, weights_only=False) for p in sorted(tmp_path.glob(f'{path.stem}_*.pt'))
             for name in [p.stem]}
    first = next(iter(saved.values()))
    assert first['recipe'] == path.stem and first['history']
    # what was trained: every run moved the weights, each its own way
    states = [s['state_dict'] for s in saved.values()]
    if 'original' in results['results']:   # fine-tuning recipes start from the bundled checkpoint
        states.append(load_checkpoint(DEMO_CHECKPOINT).state_dict())
    for i, a in enumerate(states):
        for b in states[i + 1:]:
            assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    if 'original' in results['results']:   # and the reported numbers are those of the saved model
        run = first['run']
        model = load_checkpoint(DEMO_CHECKPOINT)
        model.load_state_dict(first['state_dict'])
        reported = results['results'][run]
        _, _, x, y = load_sample()
        again = evaluate_robustness(model, x[:24], y[:24], threats=reported['threats'], budget='quick', seed=0)
        assert again.flags == reported['flags']


def test_recipes_need_a_model_outside_smoke(tmp_path):
    with pytest.raises(ValueError, match='--model'):
        load(REPO / 'recipes' / 'cifar_multinorm_finetune.py').main(['--data', str(SHARED_DATA), '--out-dir', str(tmp_path)])


def test_train_demo_checkpoint_smoke(tmp_path, capsys):
    load(REPO / 'recipes' / 'train_demo_checkpoint.py').main(['--smoke', '--out-dir', str(tmp_path), '--width', '4'])
    from eatai.models import load_checkpoint
    model = load_checkpoint(tmp_path / 'cifar_cnn_linf.pt')
    assert model.meta['epochs'] == 1 and model.meta['n_train'] == 128 and model.meta['scheme'] == 'linf'
    assert '--smoke' in model.meta['command']
    assert '\r' not in capsys.readouterr().out


@pytest.mark.skipif(not SHARED_DATA.exists(), reason='needs ../shared/data')
def test_train_demo_checkpoint_recipe(tmp_path):
    load(REPO / 'recipes' / 'train_demo_checkpoint.py').main(['--n-train', '64', '--epochs', '1', '--width', '4',
                                                              '--out-dir', str(tmp_path)])
    from eatai.models import load_checkpoint
    model = load_checkpoint(tmp_path / 'cifar_cnn_linf.pt')
    assert model.meta['epochs'] == 1 and model.meta['n_train'] == 64 and model.meta['scheme'] == 'linf'


def test_recipe_checkpoints_and_resumes(tmp_path, capsys):
    """--checkpoint-every writes a resume checkpoint; running the same command again resumes from it."""
    recipe = load(REPO / 'recipes' / 'cifar_linf_to_l1.py')
    recipe.main(['--smoke', '--out-dir', str(tmp_path), '--checkpoint-every', '1'])
    ckpt = tmp_path / 'cifar_linf_to_l1_ft_wrt_l1.resume.pth'
    state = torch.load(ckpt, weights_only=False)
    assert state['epoch'] == 1 and state['n_done'] == 0          # the finished epoch
    first = json.loads((tmp_path / 'cifar_linf_to_l1.json').read_text())
    recipe.main(['--smoke', '--out-dir', str(tmp_path), '--checkpoint-every', '1'])   # nothing left to train
    again = json.loads((tmp_path / 'cifar_linf_to_l1.json').read_text())
    assert again['results']['+ FT wrt l1']['flags'] == first['results']['+ FT wrt l1']['flags']


def test_unforeseen_eval_smoke_compares_models_and_writes_jsons_and_the_heat_map(tmp_path, capsys, monkeypatch):
    """Two checkpoints side by side: a results JSON each with the unforeseen summary and mCA, the heat map
    PNG, and the table naming the threats."""
    from eatai.evaluation import UNFORESEEN, RobustResult
    from eatai.models import build_model, save_checkpoint
    monkeypatch.setenv('EATAI_HOME', str(tmp_path / 'home'))     # the corruption cache
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    other = tmp_path / 'tiny.pt'
    save_checkpoint(build_model('cifar_cnn', 10, width=4), other, 'cifar_cnn', {'width': 4})   # untrained
    out = tmp_path / 'out'
    load(REPO / 'recipes' / 'cifar_unforeseen_eval.py').main(
        ['--smoke', '--out-dir', str(out), '--models', str(DEMO_CHECKPOINT), str(other), '--corruptions', 'fog'])
    printed = capsys.readouterr().out
    unforeseen = list(UNFORESEEN['cifar10'])
    for header in ('stadv (0.05)', 'recolor (0.06)', 'jpeg (0.25)', 'l_inf (8/255)', 'fog (3)', 'union',
                   'unforeseen avg', 'unforeseen worst', 'mCA', 'cifar_cnn_linf', 'tiny', 'quick budget'):
        assert header in printed, header
    assert '\r' not in printed
    for name in ('cifar_cnn_linf', 'tiny'):
        data = json.loads((out / f'cifar_unforeseen_eval_{name}.json').read_text())
        assert data['model'] == name and data['n'] == 8 and data['groups'] == {'unforeseen': unforeseen}
        assert data['threats'] == ['linf:8/255', 'l2:0.5', 'l1:12', 'corruption:fog:3'] + unforeseen
        assert set(data['summary']['unforeseen']) == {'threats', 'average', 'worst', 'exact'}
        result = RobustResult.from_json(out / f'cifar_unforeseen_eval_{name}.json')
        assert data['summary'] == result.summary() and data['mCA'] == result.mca == result.robust['corruption:fog:3']
        assert result.outside_union == ['corruption:fog:3'] + unforeseen
    png = (out / 'cifar_unforeseen_eval_summary.png').read_bytes()
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    import matplotlib.image
    assert matplotlib.image.imread(out / 'cifar_unforeseen_eval_summary.png').ndim == 3
