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
RECIPES = [p for p in ALL_RECIPES if p.stem not in ('quickstart', 'train_demo_checkpoint')]   # before/after ones
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
