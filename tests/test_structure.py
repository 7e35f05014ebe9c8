"""The package's shape, read from the source with `ast`: no import cycles, the layers' rules
(attacks and evaluation know no fastai), a top level of public entry modules and packages only."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'eatai'
ENTRY_MODULES = {'__init__', 'all', 'cli', 'learner', 'finetune', 'threats', 'geometry', 'recipes', 'demo'}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, name: str, modules: set) -> tuple[set, set]:
    """(eatai modules, other top-level packages) that module `name` at `path` imports, at module level or
    inside functions."""
    package = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = '.'.join(package[:len(package) - node.level + 1] + [node.module or ''] if node.level
                            else [node.module or '']).strip('.')
            # `from . import lp` imports the module eatai.evaluation.lp; `from .x import f` the module .x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            (ours if target.split('.')[0] == 'eatai' else theirs).add(target if target.split('.')[0] == 'eatai'
                                                                        else target.split('.')[0])
    return {t for t in ours if t in modules and t != name}, theirs


def import_graph(package: Path = PACKAGE) -> tuple[dict, dict]:
    paths = {_module_name(p, package): p for p in package.rglob('*.py')}
    graph, external = {}, {}
    for name, path in paths.items():
        graph[name], external[name] = _imports(path, name, set(paths))
    return graph, external


def find_cycle(graph: dict) -> list | None:
    """One import cycle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / 'eatai'
    (pkg / 'models').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'models' / '__init__.py').write_text('')
    (pkg / 'models' / 'zoo.py').write_text('from .loading import load\n')
    (pkg / 'models' / 'loading.py').write_text('def f():\n    from .zoo import entry   # lazy: still a cycle\n')
    graph, _ = import_graph(pkg)
    assert find_cycle(graph) == ['eatai.models.loading', 'eatai.models.zoo', 'eatai.models.loading']


@pytest.mark.parametrize('layer', ['eatai.attacks', 'eatai.evaluation'])
def test_attacks_and_evaluation_import_no_fastai(layer):
    graph, external = import_graph()
    modules = [m for m in graph if m == layer or m.startswith(layer + '.')]
    closure = set(modules).union(*(reachable(graph, m) for m in modules))
    fastai_users = sorted(m for m in closure if external[m] & {'fastai', 'fastcore', 'fastprogress'})
    # evaluation's progress bars come from fastprogress (no fastai) through eatai._utils.progress
    allowed = {'eatai._utils.progress'} if layer == 'eatai.evaluation' else set()
    assert set(fastai_users) <= allowed, f"{layer} reaches fastai through {fastai_users}"


def test_the_top_level_holds_entry_modules_and_packages_only():
    modules = {p.stem for p in PACKAGE.glob('*.py')}
    assert modules == ENTRY_MODULES
    packages = {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists()}
    assert {'attacks', 'callbacks', 'data', 'evaluation', 'models', '_utils'} <= packages


def test_every_evaluation_module_says_what_it_owns():
    for path in (PACKAGE / 'evaluation').glob('*.py'):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.splitlines()[0].endswith('.'), f"{path.name} needs a one-line docstring"
