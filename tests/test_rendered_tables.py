"""One home per number: every table of measured figures in README.md and docs/ is what
bench/render_tables.py renders from the JSON files under bench/results/ (docs/contributing.md)."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_render_tables():
    spec = importlib.util.spec_from_file_location('render_tables', REPO / 'bench' / 'render_tables.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rt = _load_render_tables()
MARKED = [(page, name) for page in rt.pages(REPO) for name in rt.marked(page.read_text())]


def _rel(item) -> str:
    page, name = item
    return f'{page.relative_to(REPO)}:{name}'


def _block(text: str, name: str) -> str:
    blocks = [m.group('body') for m in rt.BLOCK.finditer(text) if m.group('name') == name]
    assert len(blocks) == 1, f'table {name}: {len(blocks)} closed blocks'
    return blocks[0]


@pytest.mark.parametrize('item', MARKED, ids=_rel)
def test_page_table_is_its_json(item):
    page, name = item
    assert _block(page.read_text(), name) == rt.render(name), (
        f'{page.relative_to(REPO)}: table {name} differs from bench/results; run python bench/render_tables.py')


def test_every_table_has_one_home():
    """Each table of render_tables is shown on exactly one page, once; each marked name is a known table;
    each JSON it reads exists."""
    names = [name for _, name in MARKED]
    assert sorted(names) == sorted(rt.TABLES), (sorted(set(rt.TABLES) - set(names)), sorted(n for n in set(names) if names.count(n) > 1))
    for spec in rt.TABLES.values():
        for f in spec.files:
            assert (REPO / 'bench' / 'results' / f).is_file(), f


def test_the_readme_and_the_benchmarks_page_are_covered():
    assert len(MARKED) >= 15
    assert {'mutation', 'finetune_mini', 'eval_cost', 'curves'} <= {name for _, name in MARKED}
    assert rt.stale(root=REPO) == []
    assert rt.main(['--check', '--root', str(REPO)]) == 0


def _copy_repo(tmp_path: Path) -> Path:
    """README.md, docs/ and bench/results/ in a temporary folder, for changing one of them."""
    root = tmp_path / 'repo'
    root.mkdir()
    shutil.copy(REPO / 'README.md', root / 'README.md')
    shutil.copytree(REPO / 'docs', root / 'docs', ignore=shutil.ignore_patterns('notebooks', 'img'))
    shutil.copytree(REPO / 'bench' / 'results', root / 'results')
    return root


def test_a_changed_json_value_fails_the_check(tmp_path, capsys):
    root = _copy_repo(tmp_path)
    results = root / 'results'
    assert rt.main(['--check', '--root', str(root), '--results', str(results)]) == 0
    path = results / 'mutation.json'
    data = json.loads(path.read_text())
    data['modules'][0]['killed'] -= 1                      # one geometry mutant fewer killed
    path.write_text(json.dumps(data))
    assert rt.main(['--check', '--root', str(root), '--results', str(results)]) == 1
    assert 'docs/mutation.md' in capsys.readouterr().out
    assert rt.stale(results, root) == [root / 'docs' / 'mutation.md']
    rt.main(['--root', str(root), '--results', str(results)])    # rendering makes page and JSON agree again
    assert rt.stale(results, root) == []
    assert '| geometry | 103 | 102 |' in (root / 'docs' / 'mutation.md').read_text()


def test_a_number_edited_on_a_page_fails_the_check(tmp_path):
    root = _copy_repo(tmp_path)
    page = root / 'docs' / 'benchmarks.md'
    text = page.read_text()
    assert '| 9.03 |' in text
    page.write_text(text.replace('| 9.03 |', '| 9.00 |', 1))
    assert rt.stale(root / 'results', root) == [page]


def test_an_unknown_or_unclosed_marker_is_an_error():
    with pytest.raises(KeyError, match='unknown table'):
        rt.render_page('<!-- table:no_such_table -->\n<!-- /table:no_such_table -->\n')
    with pytest.raises(ValueError, match='unclosed'):
        rt.render_page('<!-- table:mutation -->\n| a |\n')
