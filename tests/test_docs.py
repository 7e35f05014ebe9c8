"""The documentation is tested: every ```python block of README.md and docs/ runs, every name it
uses is exported by `eatai.all`, every documented Learner method exists, and the site builds.

How the blocks run (docs/contributing.md says the same for writers): the blocks of one page run
in order, in one namespace, in a temporary working folder. Before the first block the namespace
holds only the page settings below, the names the pages leave to the reader:

- `data_path`: a CIFAR-10 folder. Readers pass theirs (or None to download); here it is a folder
  with 96 training and 32 test images of the bundled sample, in the npz layout `cifar10_dls` reads.
- `epochs`: the length of a training from scratch (the paper: 80); here 1.
- `n_eval`: the points a robust evaluation uses (the paper: 1000); here 16.
- `budget`: the attack budget of an evaluation (the paper: 'standard'); here 2 APGD iterations
  and 1 target class per norm, an `EvalBudget` whose tables say it is not AutoAttack's.

Nothing else changes: the library runs as it does for users. Blocks that must not run (shell
commands, output) are fenced as ```bash or ```text.
"""
import ast
import builtins
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / 'docs'
PAGES = [REPO / 'README.md'] + sorted(p for p in DOCS.rglob('*.md') if 'notebooks' not in p.parts)

SETTINGS_DOC = ('data_path', 'epochs', 'n_eval', 'budget')
N_TRAIN, N_VALID = 96, 32

_PYTHON_BLOCK = re.compile(r'^```python[^\n]*\n(.*?)^```', re.S | re.M)
_FENCE = re.compile(r'^```.*?^```', re.S | re.M)
_INLINE = re.compile(r'`([^`\n]+)`')


def python_blocks(page: Path) -> list[str]:
    return _PYTHON_BLOCK.findall(page.read_text())


def inline_code(page: Path) -> list[str]:
    """The `code spans` of a page's prose (fenced blocks left out)."""
    return _INLINE.findall(_FENCE.sub('', page.read_text()))


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


RUNNABLE = [p for p in PAGES if python_blocks(p)]


def write_cifar10_folder(folder: Path) -> Path:
    """The first images of the bundled sample, written as cifar10_train.npz / cifar10_test.npz."""
    from eatai.data.cifar import _sample_arrays
    x_train, y_train, x_valid, y_valid, _ = _sample_arrays()   # uint8 (N, 3, 32, 32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / 'cifar10_train.npz', x=x_train[:N_TRAIN].transpose(0, 2, 3, 1), y=y_train[:N_TRAIN])
    np.savez(folder / 'cifar10_test.npz', x=x_valid[:N_VALID].transpose(0, 2, 3, 1), y=y_valid[:N_VALID])
    return folder


@pytest.fixture
def page_settings(tmp_path, monkeypatch):
    """The names a documentation page leaves to its reader, set for a short run (see the module docstring)."""
    monkeypatch.chdir(tmp_path)                    # files a page writes land in a temporary folder
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    from eatai.evaluation import APGDSettings, EvalBudget
    tiny = APGDSettings(n_iter=2, n_target_classes=1)
    settings = {'data_path': str(write_cifar10_folder(tmp_path / 'cifar10')), 'epochs': 1, 'n_eval': 16,
                'budget': EvalBudget('docs-test', linf=tiny, l2=tiny, l1=tiny)}
    assert set(settings) == set(SETTINGS_DOC)
    return settings


@pytest.mark.parametrize('page', RUNNABLE, ids=_rel)
def test_page_code_runs(page, page_settings):
    namespace = {'__name__': '__main__', **page_settings}
    for i, source in enumerate(python_blocks(page), 1):
        try:
            exec(compile(source, f'{_rel(page)} (python block {i})', 'exec'), namespace)
        except Exception as e:
            raise AssertionError(f"{_rel(page)}, python block {i} failed: {type(e).__name__}: {e}\n{source}") from e
        finally:
            import matplotlib.pyplot as plt
            plt.close('all')


def test_readme_tour_is_tested():
    assert any('learn.fit_adversarial' in b and 'learn.robust_eval' in b for b in python_blocks(REPO / 'README.md'))


def test_docs_exist_and_run_code():
    """The site has its pages, and most of them show code that runs (so this file tests something)."""
    for name in ('index.md', 'getting-started.md', 'concepts.md', 'scale.md', 'benchmarks.md', 'contributing.md'):
        assert (DOCS / name).exists(), name
    assert len(RUNNABLE) >= 8
    assert sum(len(python_blocks(p)) for p in RUNNABLE) >= 20


# ---- names: everything the docs use comes from `from eatai.all import *` ----

_PUBLIC_API = r"""
import importlib, json, pkgutil
from eatai.all import *
import eatai, eatai.all as api
from eatai.learner import RobustLearner
learner = sorted(dir(RobustLearner))   # before importing any other eatai module (some patch Learner)
everything = set()
for m in pkgutil.walk_packages(eatai.__path__, 'eatai.'):
    if m.name.startswith(('eatai.cli', 'eatai.data.build_sample')):
        continue
    everything |= set(getattr(importlib.import_module(m.name), '__all__', []))
import timm
everything -= set(timm.list_models())   # architecture names are strings for robust_learner, not imports
print(json.dumps({'all': sorted(api.__all__), 'learner': learner, 'everything': sorted(everything)}))
"""


@pytest.fixture(scope='module')
def public_api():
    """`eatai.all`'s names and the Learner's attributes right after `from eatai.all import *`, in a fresh
    interpreter (this process may already have imported modules that patch Learner)."""
    out = subprocess.run([sys.executable, '-c', _PUBLIC_API], capture_output=True, text=True, cwd=REPO, check=True)
    return {k: set(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _page_code(page: Path) -> ast.Module:
    return ast.parse('\n'.join(python_blocks(page)))


@pytest.mark.parametrize('page', RUNNABLE, ids=_rel)
def test_page_imports_only_eatai_all(page):
    """Pages import eatai's API one way, `from eatai.all import *`, as a reader would."""
    for node in ast.walk(_page_code(page)):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('eatai'):
            assert node.module == 'eatai.all', f"{_rel(page)}: `from {node.module} import ...`; use eatai.all"
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith('eatai') for a in node.names), _rel(page)


@pytest.mark.parametrize('page', RUNNABLE, ids=_rel)
def test_page_names_come_from_eatai_all(page, public_api):
    tree = _page_code(page)
    bound = set(SETTINGS_DOC) | set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split('.')[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = used - bound - public_api['all']
    assert not missing, f"{_rel(page)} uses names that `from eatai.all import *` does not bring: {sorted(missing)}"


_LEARN_ATTR = re.compile(r'\blearn\.([A-Za-z_]\w*)')
_CALL = re.compile(r'^([A-Za-z_][\w.]*)\(')


def test_documented_learner_methods_exist(public_api):
    """Every `learn.name` of the docs (code and prose) is an attribute of the Learner after `from eatai.all import *`."""
    instance_attrs = {'dls', 'model', 'opt', 'cbs', 'path', 'recorder', 'adversarial_training', 'threat_dataset',
                      'loss_func', 'opt_func', 'model_dir', 'metrics', 'xb', 'yb', 'pred', 'loss'}
    seen, missing = set(), []
    for page in PAGES:
        text = page.read_text()
        for name in _LEARN_ATTR.findall(text):
            seen.add(name)
            if name not in public_api['learner'] and name not in instance_attrs:
                missing.append(f"{_rel(page)}: learn.{name}")
    assert {'eat_finetune', 'robust_eval', 'robust_distrib_ctx'} <= seen
    assert not missing, missing


def test_names_in_prose_are_exported(public_api):
    """A public eatai name written in the prose (`Checkpointing(...)`, `plot_training_stats`) is in eatai.all;
    a dotted `eatai.module.name` resolves."""
    missing = []
    for page in PAGES:
        for span in inline_code(page):
            m = _CALL.match(span)
            name = m.group(1) if m else span.strip()
            if not re.fullmatch(r'[A-Za-z_][\w.]*', name):
                continue
            if name.startswith('eatai.') and name.count('.') >= 2:
                module, _, attr = name.rpartition('.')
                try:
                    ok = hasattr(__import__(module, fromlist=[attr]), attr)
                except ImportError:
                    ok = False
                if not ok and not _is_module(name):
                    missing.append(f"{_rel(page)}: {name}")
            elif '.' not in name and name in public_api['everything'] and name not in public_api['all']:
                missing.append(f"{_rel(page)}: {name} (not exported by eatai.all)")
    assert not missing, missing


def _is_module(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def test_eatai_all_brings_what_the_readme_shows(public_api):
    assert {'Checkpointing', 'plot_training_stats', 'DEMO_CHECKPOINT'} <= public_api['all']
    assert 'robust_distrib_ctx' in public_api['learner']


# ---- the site ----

def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page or an unresolved API reference fails."""
    pytest.importorskip('mkdocs')
    pytest.importorskip('material')
    pytest.importorskip('mkdocstrings')
    pytest.importorskip('mkdocs_jupyter')
    site = tmp_path / 'site'
    start = time.perf_counter()
    out = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(site)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    pages = list(site.rglob('index.html'))
    assert (site / 'api' / 'learner' / 'index.html').exists() and (site / 'notebooks' / '01_multinorm_finetune' / 'index.html').exists()
    assert 'eat_finetune' in (site / 'api' / 'learner' / 'index.html').read_text()   # mkdocstrings rendered it
    print(f"site: {len(pages)} pages in {time.perf_counter() - start:.1f} s")
    shutil.rmtree(site)
