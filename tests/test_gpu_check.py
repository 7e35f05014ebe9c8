"""bench/gpu_check.py, the prepared GPU measurement, in its tiny CPU form: one command, a JSON whose figures
are positive and agree with each other, eager and compiled; compiled sections that do not fit the budget
are skipped and said so."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'bench' / 'gpu_check.py'
SECTIONS = ('epoch', 'apgd', 'eval', 'memory')
pytestmark = pytest.mark.usefixtures('one_thread')   # the in-process run sets one thread too; this puts it back


def _check_section(name, r, settings):
    if name == 'epoch':
        assert set(r['seconds']) == {'linf', 'eat'} and all(s > 0 for s in r['seconds'].values())
        assert r['eat_over_linf'] == pytest.approx(r['seconds']['eat'] / r['seconds']['linf'])
        assert r['images'] == r['batches'] * settings['batch'] <= settings['train_images']
    elif name == 'apgd':
        assert r['fwd_bwd_s'] > 0 and r['n_iter'] == settings['n_iter']
        for norm in ('linf', 'l1'):
            assert r[norm]['seconds'] > 0
            assert r[norm]['step_s'] == pytest.approx(r[norm]['seconds'] / r['n_iter'])
            assert r[norm]['ratio'] == pytest.approx(r[norm]['seconds'] / (r['n_iter'] * r['fwd_bwd_s']))
    elif name == 'eval':
        assert r['n'] > 0 and r['seconds'] > 0
        assert r['points_per_s'] == pytest.approx(r['n'] / r['seconds'])
        assert 0 <= r['union'] <= min(r['robust'].values()) <= max(r['robust'].values()) <= r['clean'] <= 1
    else:
        assert r['arch'] == settings['memory_arch'] and r['batch'] == settings['batch']
        assert r['bytes'] > 0 and r['gib'] == pytest.approx(r['bytes'] / 2 ** 30)


def test_the_tiny_cpu_run_writes_consistent_figures(tmp_path):
    out = tmp_path / 'gpu.json'
    command = [sys.executable, str(SCRIPT), '--device', 'cpu', '--tiny', '--out', str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=300)
    d = json.loads(out.read_text())
    assert d['device'].startswith('CPU') and d['torch'] and d['date'][:2] == '20'
    assert d['command'].endswith(f'--device cpu --tiny --out {out}') and d['provenance']['command'] == d['command']
    assert d['complete'] and d['skipped'] == [] and 0 < d['elapsed_s']
    settings = d['settings']
    assert settings['tiny'] and settings['memory_format'] == 'channels_last' and settings['compile']['backend']
    for variant in ('eager', 'compiled'):
        assert set(d['results'][variant]) == set(SECTIONS), variant
        for name in SECTIONS:
            _check_section(name, d['results'][variant][name], settings)
    speedup, e, c = d['results']['compiled_speedup'], d['results']['eager'], d['results']['compiled']
    assert speedup['epoch']['eat'] == pytest.approx(e['epoch']['seconds']['eat'] / c['epoch']['seconds']['eat'])
    assert speedup['eval'] == pytest.approx(c['eval']['points_per_s'] / e['eval']['points_per_s'])


def test_compiled_sections_that_do_not_fit_the_budget_are_skipped(tmp_path):
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    d = gpu_check.main(['--device', 'cpu', '--tiny', '--out', str(tmp_path / 'g.json'), '--compile-allowance', '1e6'])
    assert set(d['results']['eager']) == set(SECTIONS) and d['results']['compiled'] == {}
    assert not d['complete'] and len(d['skipped']) == 2   # the ResNet's sections, the memory section
    assert all('left of the budget' in s for s in d['skipped'])
    assert json.loads((tmp_path / 'g.json').read_text())['skipped'] == d['skipped']
