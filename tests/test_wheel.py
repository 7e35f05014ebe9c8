"""The wheel: `python -m build` makes it, `twine check` accepts it, and it works installed in a fresh venv.

Installing torch, fastai and the rest again into the fresh venv would take minutes and need the
network, so the wheel is installed there with --no-deps and the venv sees this environment's
site-packages through a .pth file, appended after its own: `eatai` itself can only come from the
wheel (the editable install of this environment is a .pth hook, and hooks inside a directory named
by a .pth line are not run). Commands run from an empty folder without PYTHONPATH, so the source
tree cannot be imported by accident.
"""
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip('build')
pytest.importorskip('twine')


def run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope='module')
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    # --no-isolation: build with this environment's setuptools, no download of build dependencies
    run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', out, REPO], cwd=REPO)
    return out


def test_build_gives_an_sdist_and_a_wheel_twine_accepts(dist):
    files = sorted(p.name for p in dist.iterdir())
    assert any(f.endswith('.tar.gz') for f in files) and any(f.endswith('-py3-none-any.whl') for f in files), files
    checked = run([sys.executable, '-m', 'twine', 'check', '--strict', *sorted(dist.iterdir())], cwd=dist)
    assert checked.stdout.count('PASSED') == 2, checked.stdout


def test_wheel_holds_the_package_data_and_nothing_else(dist):
    wheel = next(dist.glob('*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'eatai/data/sample/cifar10_sample.npz.xz' in names and 'eatai/checkpoints/cifar_cnn_linf.pt' in names
    assert 'eatai/cli.py' in names and 'eatai/attacks/apgd.py' in names
    top = {n.split('/')[0] for n in names}
    assert top == {'eatai', next(t for t in top if t.endswith('.dist-info'))}, top   # no tests, bench, nbs, recipes
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB, {len(names)} files")


def test_wheel_installed_in_a_fresh_venv_runs_radius_and_a_smoke_finetune(dist, tmp_path):
    venv, cwd = tmp_path / 'venv', tmp_path / 'elsewhere'
    cwd.mkdir()
    # without PYTHONPATH (which points at the source tree while testing) pip and eatai see only the venv
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    run([sys.executable, '-m', 'venv', '--without-pip', venv], cwd=cwd, env=env)
    python = venv / 'bin' / 'python'
    run([sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', '--no-index', '--quiet',
         next(dist.glob('*.whl'))], cwd=cwd, env=env)
    site = Path(run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], cwd=cwd,
                    env=env).stdout.strip())
    ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
    (site / '_eatai_test_dependencies.pth').write_text('\n'.join(sorted(ours)) + '\n')

    where = run([python, '-c', 'import eatai; print(eatai.__file__)'], cwd=cwd, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where              # the wheel's copy, not the source tree
    radius = run([venv / 'bin' / 'eatai', 'radius', '--eps-p', '0.5'], cwd=cwd, env=env).stdout
    assert '0.2182' in radius and '0.6138' in radius
    demo = run([venv / 'bin' / 'eatai', 'demo', '--epochs', '1', '--n', '4', '--n-train', '32', '--out', 'demo.json'],
               cwd=cwd, env=env).stdout
    assert 'E-AT fine-tuning' in demo and 'union' in demo and (cwd / 'demo.json').exists()
    assert '\r' not in demo   # stdout is a pipe here: no progress-bar updates
