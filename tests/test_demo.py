"""The user's path: the bundled checkpoint, `eatai` commands, the quickstart recipe."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from eatai.cli import main
from eatai.data import load_sample
from eatai.evaluation import evaluate_robustness
from eatai.demo import DEMO_CHECKPOINT, DemoConfig, run_demo
from eatai.models import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_bundled_checkpoint_says_how_it_was_made():
    model = load_checkpoint(DEMO_CHECKPOINT)
    assert model.meta['trained_with'] == 'fit_adversarial' and model.meta['scheme'] == 'linf'
    assert 'train_demo_checkpoint.py' in model.meta['command']
    assert DEMO_CHECKPOINT.stat().st_size < 5e6
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_run_demo_small():
    result = run_demo(DemoConfig(epochs=1, n_eval=20, n_train=128), progress=False)
    assert result.before.n == result.after.n == 20
    assert set(result.seconds) == {'eval_before', 'finetune', 'eval_after'}
    for r in (result.before, result.after):
        assert 'NOT AutoAttack standard' in r.budget          # the cheaper budget is labelled
    # before: the bundled checkpoint's numbers, as evaluate_robustness gives them on the same points
    _, _, x, y = load_sample()
    direct = evaluate_robustness(load_checkpoint(DEMO_CHECKPOINT), x[:20], y[:20], budget='quick', seed=0)
    assert result.before.flags == direct.flags
    assert result.after.flags != result.before.flags        # after: the fine-tuned model's, not the same one's


def test_cli_demo_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / 'demo.json'
    assert main(['demo', '--epochs', '1', '--n', '20', '--n-train', '128', '--quiet', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'E-AT fine-tuning' in printed and 'union' in printed and 'quick budget' in printed
    data = json.loads(out.read_text())
    assert data['before']['n'] == 20 and 'union' in data['after']


def test_cli_eval_and_radius(tmp_path, capsys):
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', str(DEMO_CHECKPOINT), '--n', '20', '--budget', 'quick', '--out', str(out)]) == 0
    assert json.loads(out.read_text())['n'] == 20
    assert main(['radius', '--eps-p', '0.5']) == 0
    printed = capsys.readouterr().out
    assert '0.2182' in printed and '0.6138' in printed and 'covers' in printed and 'NOT cover' not in printed


def test_cli_bad_input_is_one_clear_line(capsys):
    assert main(['eval', '--model', 'missing_model.pt', '--n', '5']) == 2
    err = capsys.readouterr().err
    assert 'missing_model.pt' in err and 'Traceback' not in err
    assert main(['radius', '--eps1', '0.01']) == 2
    assert 'eps_inf < eps1' in capsys.readouterr().err


def test_quickstart_recipe_smoke_logs_lines_into_a_pipe(tmp_path):
    """quickstart --smoke in a real process whose stdout is a pipe: the epoch table's rows and one line per
    threat model and attack, no carriage-return bar updates; the fine-tuned weights and results land in --out-dir."""
    proc = subprocess.run([sys.executable, str(REPO / 'recipes' / 'quickstart.py'), '--smoke', '--out-dir', str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'quickstart' in proc.stdout and 'union' in proc.stdout
    assert '\r' not in proc.stdout and len(proc.stdout.splitlines()) < 30, proc.stdout
    lines = proc.stdout.splitlines()
    ce = [t + ' apgd-ce: 1 batch' for t in ('linf:8/255', 'l2:0.5', 'l1:12')]
    assert sum(line.startswith(tuple(ce)) for line in lines) == 6          # two evaluations, three threat models
    assert sum(' apgd-t: 1 batch' in line for line in lines) <= 6
    assert any(line.split()[:2] == ['epoch', 'train_loss'] for line in lines)          # fastai's table header
    assert any(line.split()[0] == '0' for line in lines if line.strip())                # and its one row
    saved = json.loads((tmp_path / 'quickstart.json').read_text())
    assert saved['args']['smoke'] and saved['after']['n'] == 24 and (tmp_path / 'quickstart.pth').exists()
