"""Bad numbers, unknown flags and missing folders stop every command and recipe at parse time: one
line naming the problem on stderr, exit status 2, no traceback, nothing printed on stdout.

In-process (`main(argv)` raising SystemExit, which argparse does before any work: a check made later
would load data first and return instead of raising); one case also through a real subprocess.
"""
import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eatai.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / 'recipes').glob('*.py'))
CKPT = str(REPO / 'eatai' / 'checkpoints' / 'cifar_cnn_linf.pt')

# derandomized, few examples: each is a parse that ends in SystemExit, milliseconds apiece
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)

not_a_count = st.one_of(st.integers(max_value=0).map(str), st.floats(allow_nan=True).map(repr),
                        st.sampled_from(['', 'ten', '1e3', '3.5', '0x10']))
not_positive = st.one_of(st.floats(max_value=0).map(repr), st.sampled_from(['nan', 'inf', '-inf', 'fast', '', '1/0']),
                         st.integers(max_value=0).map(str), st.integers(max_value=0).map(lambda i: f'{i}/255'))
not_a_seed = st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 32)).map(str)

# (command line up to the flag, flag, strategy of bad values) for every number a command takes
CLI_NUMBERS = [
    (['eval', '--model', CKPT], '--n', not_a_count),
    (['eval', '--model', CKPT], '--bs', not_a_count),
    (['eval', '--model', CKPT], '--seed', not_a_seed),
    (['demo'], '--epochs', not_a_count),
    (['demo'], '--n', not_a_count),
    (['demo'], '--n-train', not_a_count),
    (['demo'], '--lr', not_positive),
    (['demo'], '--seed', not_a_seed),
    (['radius'], '--eps-p', not_positive),
    (['radius'], '--eps1', not_positive),
    (['radius'], '--eps-inf', not_positive),
    (['radius'], '--d', not_a_count),
    (['radius'], '--p', st.one_of(st.floats(max_value=0.99).map(repr), st.just('nan'))),
]


def parse_error(call, argv) -> str:
    """Run `call(argv)`, expecting argparse's exit; return what it wrote on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        call(argv)
    assert exit_.value.code == 2, (argv, exit_.value.code)
    assert out.getvalue() == '', out.getvalue()      # nothing printed before the error
    message = err.getvalue()
    assert 'Traceback' not in message and message.count('\n') == 1, message   # one line
    return message


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('head,flag,bad', CLI_NUMBERS, ids=lambda v: v if isinstance(v, str) else None)
def test_cli_refuses_bad_numbers_at_parse_time(head, flag, bad):
    @SETTINGS
    @given(bad)
    def check(value):
        message = parse_error(main, [*head, f'{flag}={value}'])
        assert flag in message and f'eatai {head[0]}: error' in message
    check()


@pytest.mark.parametrize('argv,named', [
    (['eval', '--model', CKPT, '--data', 'no/such/folder'], 'no/such/folder'),
    (['eval', '--model', CKPT, '--threat', 'l3:1'], "'l3'"),
    (['eval', '--model', CKPT, '--dataset', 'mnist'], 'mnist'),
    (['demo', '--no-such-flag'], '--no-such-flag'),
])
def test_cli_refuses_bad_paths_names_and_flags(argv, named):
    assert named in parse_error(main, argv)


# every number a recipe takes; each recipe is checked with each flag it has
RECIPE_NUMBERS = {'--epochs': not_a_count, '--bs': not_a_count, '--n-eval': not_a_count, '--n-iter': not_a_count,
                  '--lr': not_positive, '--seed': not_a_seed, '--n-train': not_a_count, '--n': not_a_count,
                  '--width': not_a_count, '--epoch-list': not_a_count,
                  '--checkpoint-every': st.integers(max_value=-1).map(str)}


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: p.stem)
def test_recipes_refuse_bad_numbers_unknown_flags_and_missing_data(path, tmp_path):
    recipe = load(path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        recipe.main(['--help'])
    flags = [f for f in RECIPE_NUMBERS if f' {f} ' in out.getvalue().replace('\n', ' ')]
    trains = path.stem != 'cifar_unforeseen_eval'   # the one recipe that only evaluates
    assert {'--seed', *(['--epochs', '--lr'] if trains else ['--n-eval', '--bs'])} <= set(flags), flags

    @settings(max_examples=4, deadline=None, derandomize=True, database=None)
    @given(st.sampled_from(flags).flatmap(lambda f: st.tuples(st.just(f), RECIPE_NUMBERS[f])))
    def check(case):
        flag, value = case
        assert flag in parse_error(recipe.main, ['--smoke', f'{flag}={value}'])
    check()
    assert '--colour' in parse_error(recipe.main, ['--smoke', '--colour', 'blue'])
    if ' --data ' in out.getvalue().replace('\n', ' '):   # quickstart uses the bundled sample only
        message = parse_error(recipe.main, ['--data', str(tmp_path / 'no_such_data')])
        assert '--data' in message and 'no_such_data' in message and 'does not exist' in message


def test_a_bad_radius_prints_no_radius_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'eatai.cli', 'radius', '--eps-p', '-1'], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == '', proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "eatai radius: error: argument --eps-p: expected a radius > 0 such as 0.5 or 8/255, got '-1' "
        "(see eatai radius --help)"]
