"""`eatai compare` / `compare_results`: results side by side, sorted by union, with budgets, points and
training cost; warnings where rows are not comparable; Markdown and a self-contained HTML page, the
latter checked in a real headless browser (Debian's chromium, installed by .ci/run); bad files get
one line each and nothing is written."""
import json
import re
import shutil
from pathlib import Path

import pytest

from eatai.cli import main
from eatai.evaluation import EvalBudget, RobustResult, compare_results

THREATS = ['linf:8/255', 'l2:0.5', 'l1:12']
STANDARD = EvalBudget.from_name('standard').label
QUICK = EvalBudget.from_name('quick').label
OLD = Path(__file__).parent / 'fixtures' / 'result_v0.1.0.json'


def result(clean, robust, union, threats=THREATS, budget=STANDARD, n=100, model=None, **kw):
    return RobustResult(n=n, clean=clean, robust=dict(zip(threats, robust)), union=union, threats=list(threats),
                        budget=budget, exact={t: True for t in threats}, flags={}, seconds={}, model=model, **kw)


def column(comparison, header):
    (i,) = [i for i, c in enumerate(comparison.columns) if c.header == header]
    return [comparison.cell(row, comparison.columns[i])[0] for row in comparison.rows]


def recipe_json(path, runs, training=None, **extra):
    """A file in the layout `run_recipe` writes."""
    data = {'recipe': 'cifar_train_compare', 'args': {'epochs': 4, 'smoke': False},
            'train_seconds': {k: v['seconds'] for k, v in (training or {}).items()},
            'results': {k: r.to_dict() for k, r in runs.items()}, **extra}
    if training is not None:
        data['training'] = training
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def three():
    return {'linf-AT': result(0.82, (0.48, 0.23, 0.08), 0.07),
            'E-AT': result(0.81, (0.42, 0.58, 0.41), 0.35),
            'MAX': result(0.79, (0.44, 0.55, 0.30), 0.28)}


def test_rows_sorted_by_union_best_first(three):
    c = compare_results(three)
    assert [r.name for r in c.rows] == ['E-AT', 'MAX', 'linf-AT']
    assert column(c, 'union') == ['35.0', '28.0', '7.0']
    assert column(c, 'clean') == ['81.0', '79.0', '82.0']
    assert [h.header for h in c.columns] == ['model', 'clean', 'l_inf (8/255)', 'l_2 (0.5)', 'l_1 (12)', 'union',
                                             'budget', 'n']
    assert c.comparable and c.warnings == []
    text = c.text()
    assert text.index('E-AT') < text.index('MAX') < text.index('linf-AT') and 'NOT COMPARABLE' not in text
    assert STANDARD in ' '.join(text.split())


def test_rows_from_any_mix_of_inputs_get_distinct_names(tmp_path, three):
    a = recipe_json(tmp_path / 'a.json', {'eat': three['E-AT']})
    b = recipe_json(tmp_path / 'b.json', {'eat': three['MAX']})
    c = compare_results([a, b, ('linf', three['linf-AT']), OLD])
    assert [r.name for r in c.rows] == ['eat (a)', 'eat (b)', 'demo-cnn', 'linf']
    assert compare_results(three, names=['x', 'y', 'z']).rows[0].name == 'y'
    with pytest.raises(ValueError, match='^2 names for 3 rows'):
        compare_results(three, names=['x', 'y'])
    with pytest.raises(ValueError, match='^no results to compare'):
        compare_results([])
    with pytest.raises(TypeError, match='^expected a results file, a RobustResult'):
        compare_results([3.5])


@pytest.mark.parametrize('odd, what', [(dict(budget=QUICK), 'budget'), (dict(n=24), 'n'),
                                       (dict(threats=THREATS[:2]), 'threats')])
def test_rows_evaluated_differently_are_marked_and_warned_about(three, odd, what):
    robust = (0.5, 0.5, 0.5)[:len(odd.get('threats', THREATS))]
    rows = {**three, 'odd one': result(0.9, robust, 0.5, **odd)}
    c = compare_results(rows)
    assert not c.comparable
    assert column(c, '≠') == [what, '', '', '']          # the odd one is first (best union), the rest agree
    words = {'budget': 'budgets', 'n': 'numbers of points', 'threats': 'threat sets'}[what]
    (warning,) = c.warnings
    assert f'different {words}' in warning and 'not comparable' in warning
    text = ' '.join(c.text().split())
    assert 'NOT COMPARABLE' in text and f'warning: rows evaluated with different {words}' in text
    if what == 'threats':   # the missing threat is a dash, not a zero
        assert column(c, 'l_1 (12)')[0] == '–'


def test_the_most_common_setting_is_the_reference(three):
    rows = {'a': result(0.9, (0.5,) * 3, 0.6, n=24), 'b': result(0.9, (0.5,) * 3, 0.5, n=24), **three}
    assert column(compare_results(rows), '≠') == ['n', 'n', '', '', '']
    tie = compare_results({'a': result(0.9, (0.5,) * 3, 0.6, n=24), 'b': result(0.9, (0.5,) * 3, 0.5)})
    assert column(tie, '≠') == ['', 'n']                # a tie: the best row's setting


def test_unforeseen_average_and_worst_columns_where_present(three):
    threats = [*THREATS, 'stadv:0.05']
    flags = {'clean': [True] * 4, 'linf:8/255': [True, True, False, False], 'l2:0.5': [True] * 4,
             'l1:12': [True, True, True, False], 'stadv:0.05': [True, False, True, False],
             'union': [True, False, False, False]}
    wide = RobustResult(n=4, clean=1.0, robust={t: sum(flags[t]) / 4 for t in threats}, union=0.25, threats=threats,
                        budget=STANDARD, exact={t: True for t in threats}, flags=flags, seconds={},
                        groups={'unforeseen': ['l2:0.5', 'stadv:0.05']})
    c = compare_results({**three, 'wide': wide})
    headers = [h.header for h in c.columns]
    assert headers.index('union') < headers.index('unforeseen avg') < headers.index('unforeseen worst')
    assert column(c, 'unforeseen avg') == ['–', '–', '75.0', '–']   # wide: (100 + 50) / 2; others: no group
    assert column(c, 'unforeseen worst') == ['–', '–', '50.0', '–']
    assert 'MultiRobustBench' in ' '.join(c.notes)


def test_training_cost_columns_from_a_recipe_json(tmp_path, three):
    training = {'eat': {'scheme': 'eat', 'epochs': 4, 'seconds': 480.0, 'seconds_per_epoch': 120.0, 'device': 'cpu'},
                'max': {'scheme': 'max', 'epochs': 4, 'seconds': 1440.0, 'seconds_per_epoch': 360.0, 'device': 'cpu'}}
    path = recipe_json(tmp_path / 'r.json', {'original': three['linf-AT'], 'eat': three['E-AT'], 'max': three['MAX']},
                       training)
    c = compare_results([path])
    assert [r.name for r in c.rows] == ['eat', 'max', 'original']
    assert column(c, 'train s/epoch') == ['2.0 min', '6.0 min', '–']
    assert column(c, 'train total') == ['8.0 min', '24.0 min', '–']
    assert column(c, 'epochs') == ['4', '4', '–']
    assert c.rows[0].training.scheme == 'eat' and c.warnings == []
    # a file from before `training`: the total from train_seconds, the epochs from --epochs
    old = tmp_path / 'old.json'
    data = json.loads(path.read_text())
    del data['training']
    old.write_text(json.dumps(data))
    assert column(compare_results([old]), 'train s/epoch') == ['2.0 min', '6.0 min', '–']
    # costs measured on different machines are said to be so
    training['max']['device'] = 'NVIDIA H100 80GB HBM3'
    mixed = compare_results([recipe_json(tmp_path / 'm.json', {'eat': three['E-AT'], 'max': three['MAX']}, training)])
    assert mixed.comparable and mixed.warnings == [
        'training costs measured on different devices (cpu, NVIDIA H100 80GB HBM3): not comparable']


def test_demo_json_gives_before_and_after_with_the_fine_tuning_cost(tmp_path, three):
    path = tmp_path / 'demo.json'
    path.write_text(json.dumps({'before': result(0.8, (0.4, 0.2, 0.1), 0.1, model='l-inf AT').to_dict(),
                                'after': result(0.8, (0.4, 0.5, 0.4), 0.3, model='+ E-AT').to_dict(),
                                'seconds': {'eval_before': 3.0, 'finetune': 90.0, 'eval_after': 3.0}, 'epochs': 3}))
    c = compare_results(path)
    assert [r.name for r in c.rows] == ['+ E-AT', 'l-inf AT']
    assert column(c, 'train s/epoch') == ['30 s', '–'] and column(c, 'train total') == ['90 s', '–']


def test_markdown(tmp_path, three):
    rows = {**three, 'a|b': result(0.5, (0.1,) * 3, 0.01, n=24)}
    c = compare_results(rows)
    text = c.to_markdown(tmp_path / 'out.md')
    assert (tmp_path / 'out.md').read_text() == text
    lines = text.splitlines()
    assert lines[0] == '# Results compared'
    assert lines[2].startswith('> **Warning:** rows evaluated with different numbers of points (100 | 24)')
    header = lines.index('| model | clean | l_inf (8/255) | l_2 (0.5) | l_1 (12) | union | budget | n | ≠ |')
    assert lines[header + 1] == '|:--|--:|--:|--:|--:|--:|:--|--:|:--|'
    body = lines[header + 2:header + 6]
    assert [r.split(' | ')[0] for r in body] == ['| E-AT', '| MAX', '| linf-AT', '| a\\|b']
    assert body[0] == f'| E-AT | 81.0 | 42.0 | 58.0 | 41.0 | 35.0 | {STANDARD} | 100 |  |'
    assert body[3].endswith(f'| 1.0 | {STANDARD} | 24 | n |')
    assert '- sorted by union robust accuracy; accuracies in %' in lines


def test_html_is_self_contained(three, tmp_path):
    training = {'eat': {'seconds': 100.0, 'epochs': 2}, 'max': {'seconds': 300.0, 'epochs': 2}}
    page = compare_results([recipe_json(tmp_path / 'r.json', {'eat': three['E-AT'], 'max': three['MAX']},
                                        training)]).to_html(tmp_path / 'c.html')
    assert (tmp_path / 'c.html').read_text() == page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == [] and '<script src' not in page
    assert page.count('data:image/png;base64,') == 1 and 'aria-sort="descending">union<' in page
    without = compare_results(three).to_html()
    assert 'data:image/png' not in without and 'no union-vs-cost plot' in without
    fig = compare_results(three).plot()
    assert fig is None


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_bad_files_get_one_line_each_and_nothing_is_written(tmp_path, capsys):
    good = json.loads(OLD.read_text())
    future = _write(tmp_path / 'future.json', {**good, 'results_format': 7, 'eatai_version': '3.0.0'})
    missing = _write(tmp_path / 'missing.json', {k: v for k, v in good.items() if k not in ('union', 'flags')})
    unknown = _write(tmp_path / 'unknown.json', {**good, 'margin': 0.1})
    typed = _write(tmp_path / 'typed.json', {**good, 'union': '25%'})
    broken = _write(tmp_path / 'broken.json', '{"n": 24,')
    other = _write(tmp_path / 'other.json', {'hello': 1})
    recipe = _write(tmp_path / 'recipe.json', {'recipe': 'x', 'results': {'eat': {k: v for k, v in good.items()
                                                                                  if k != 'n'}}})
    bad = [future, missing, unknown, typed, broken, other, recipe, tmp_path / 'absent.json']
    md, page = tmp_path / 'out.md', tmp_path / 'out.html'
    md.write_text('before')
    assert main(['compare', str(OLD), *map(str, bad), '--md', str(md), '--html', str(page)]) == 2
    out, err = capsys.readouterr()
    assert out == '' and md.read_text() == 'before' and not page.exists()
    lines = err.splitlines()
    assert len(lines) == len(bad) + 1 and all(line.startswith('eatai compare: error: ') for line in lines[:-1])
    expected = [
        f"{future}: written by eatai 3.0.0 in results format 7; this eatai 0.1.0 reads formats up to 2: upgrade eatai",
        f"{missing}: not an eatai result, or a damaged one: missing fields 'union', 'flags'",
        f"{unknown}: unknown field 'margin': written by another eatai version?",
        f"{typed}: fields of the wrong type: 'union' (str)",
        f"{broken}: not JSON (Expecting property name enclosed in double quotes at line 1, column 10)",
        f"{other}: not an eatai result, or a damaged one: missing fields 'n', 'clean'",
        f"{recipe}: run 'eat': not an eatai result, or a damaged one: missing field 'n'",
        f"{tmp_path / 'absent.json'}: No such file or directory"]
    for line, start in zip(lines, expected):
        assert line.removeprefix('eatai compare: error: ').startswith(start), (line, start)
    assert lines[-1] == f'eatai compare: nothing written ({len(bad)} of {len(bad) + 1} files unreadable)'
    # the Python API: the same line as a ValueError
    with pytest.raises(ValueError, match=r"missing fields 'union', 'flags'$"):
        compare_results([missing])
    # an output path that is one of the inputs is refused before anything is read or written
    before = OLD.read_text()
    copy = _write(tmp_path / 'copy.json', before)
    assert main(['compare', str(copy), '--html', str(copy)]) == 2
    assert capsys.readouterr().err == f'eatai compare: error: --html {copy} is one of the results files: it would be overwritten\n'
    assert copy.read_text() == before


def test_results_written_now_carry_their_format_and_the_old_one_still_loads(three):
    data = three['E-AT'].to_dict()
    assert data['results_format'] == 2 and data['eatai_version'] == __import__('eatai').__version__
    assert RobustResult.from_dict(data) == three['E-AT']
    old = compare_results(OLD)   # format 1: no key
    assert column(old, 'union') == ['25.0'] and column(old, 'l_inf (8/255)') == ['≤29.2']


def test_cli_prints_the_table_and_writes_both_pages(tmp_path, three, capsys):
    training = {'eat': {'seconds': 100.0, 'epochs': 2}}
    path = recipe_json(tmp_path / 'r.json', {'eat': three['E-AT'], 'linf': three['linf-AT']}, training)
    md, page = tmp_path / 'o' / 'c.md', tmp_path / 'o' / 'c.html'
    assert main(['compare', str(path), str(OLD), '--md', str(md), '--html', str(page), '--width', '200']) == 0
    out = capsys.readouterr().out
    assert 'Results compared · ≠ NOT COMPARABLE' in out and 'warning: rows evaluated with different budgets' in out
    assert out.index('eat ') < out.index('demo-cnn') < out.index('linf ')
    assert f'Markdown written to {md}' in out and f'HTML written to {page}' in out
    assert md.read_text().startswith('# Results compared') and page.read_text().startswith('<!DOCTYPE html>')


# ---- the page in a real browser


def _browser(tmp_path):
    chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
    if chromium is None or driver is None:
        pytest.fail("the HTML page is checked in Debian's chromium: `apt-get install chromium chromium-driver` "
                    "(.ci/run installs both)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1400,900',
                f'--user-data-dir={tmp_path / "profile"}'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_html_page_in_a_headless_browser(tmp_path, three):
    from selenium.webdriver.common.by import By
    training = {'eat': {'seconds': 100.0, 'epochs': 2}, 'max': {'seconds': 300.0, 'epochs': 2},
                'linf': {'seconds': 50.0, 'epochs': 2}}
    path = recipe_json(tmp_path / 'r.json', {'eat': three['E-AT'], 'max': three['MAX'], 'linf': three['linf-AT']},
                       training)
    c = compare_results([path, OLD])
    page = tmp_path / 'compare.html'
    c.to_html(page)
    browser = _browser(tmp_path)
    try:
        browser.get(page.as_uri())

        def names():
            return [row.find_elements(By.TAG_NAME, 'td')[0].text
                    for row in browser.find_elements(By.CSS_SELECTOR, 'tbody tr')]

        def click(header):
            (th,) = [th for th in browser.find_elements(By.TAG_NAME, 'th') if th.text.rstrip(' ▲▼') == header]
            th.click()
            return th.get_attribute('aria-sort')

        assert names() == ['eat', 'max', 'demo-cnn', 'linf']                      # as served: by union
        assert browser.execute_script('return document.images[0].complete && document.images[0].naturalWidth') > 0
        assert click('clean') == 'descending' and names() == ['linf', 'eat', 'max', 'demo-cnn']
        assert click('clean') == 'ascending' and names() == ['demo-cnn', 'max', 'eat', 'linf']
        assert click('model') == 'ascending' and names() == ['demo-cnn', 'eat', 'linf', 'max']
        assert click('train total') == 'descending' and names() == ['max', 'eat', 'linf', 'demo-cnn']  # none: last
        assert click('train total') == 'ascending' and names() == ['linf', 'eat', 'max', 'demo-cnn']
        shot = tmp_path / 'compare.png'
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 1000
        errors = [e for e in browser.get_log('browser') if e['level'] == 'SEVERE']
        assert errors == []
        browser.execute_script("console.error('probe')")   # the log does catch console errors
        assert any('probe' in e['message'] for e in browser.get_log('browser') if e['level'] == 'SEVERE')
    finally:
        browser.quit()
