"""Report tables: Table 2 layout, signed differences, bounds, budget label in the title."""
import io

import pytest
import torch
from rich.console import Console
from torch import nn

from eatai.evaluation import EvalBudget, RobustResult, evaluate_robustness
from eatai.evaluation import print_results, results_table, results_text

THREATS = ['linf:8/255', 'l2:0.5', 'l1:12']
STANDARD = EvalBudget.from_name('standard').label


def result(clean, robust, union, threats=THREATS, exact=None, budget=STANDARD, n=1000, model=None):
    robust = dict(zip(threats, robust))
    return RobustResult(n=n, clean=clean, robust=robust, union=union, threats=list(threats), budget=budget,
                        exact=exact or {t: True for t in threats}, flags={}, seconds={}, model=model)


def flat(text: str) -> str:
    """Rendered text with line breaks and runs of spaces folded: titles wrap at the table width."""
    return ' '.join(text.split())


def column(table, header):
    (col,) = [c for c in table.columns if str(c.header) == header]
    return list(col.cells)


@pytest.fixture
def rows():
    # numbers of the paper's Table 2 shape: a l-inf model, then an E-AT fine-tuned one
    return {'PRN-18 linf-AT': result(0.823, (0.476, 0.226, 0.075), 0.071),
            'PRN-18 E-AT ft': result(0.809, (0.419, 0.576, 0.405), 0.352)}


def test_columns_follow_the_threats_in_paper_layout(rows):
    table = results_table(rows)
    assert [str(c.header) for c in table.columns] == ['model', 'clean', 'l_inf (8/255)', 'l_2 (0.5)', 'l_1 (12)',
                                                      'union']
    two = result(0.9, (0.5, 0.2), 0.15, threats=['linf:4/255', 'l1:255'])
    assert [str(c.header) for c in results_table([('a', two)]).columns] == ['model', 'clean', 'l_inf (4/255)',
                                                                           'l_1 (255)', 'union']


def test_signed_differences_to_the_first_row(rows):
    text = results_text(rows)
    assert '82.3' in text and '80.9 -1.4' in text and '41.9 -5.7' in text
    assert '57.6 +35.0' in text and '35.2 +28.1' in text
    first_line = [line for line in text.splitlines() if 'linf-AT' in line][0]
    assert '+' not in first_line and ' -' not in first_line        # the reference row shows no differences
    assert 'difference to the first row' in flat(text)


def test_differences_are_coloured(rows):
    table = results_table(rows)
    clean, l2 = column(table, 'clean'), column(table, 'l_2 (0.5)')
    assert [span.style for span in clean[1].spans] == ['red']       # 80.9 -1.4: down
    assert [span.style for span in l2[1].spans] == ['green']        # 57.6 +35.0: up
    assert clean[0].spans == []


def test_budget_label_and_n_in_the_title(rows):
    text = flat(results_text(rows, title='CIFAR-10'))
    assert 'CIFAR-10' in text and STANDARD in text and 'n=1000' in text
    quick = EvalBudget.from_name('quick').label
    text = flat(results_text({'m': result(0.5, (0.1, 0.2, 0.3), 0.1, budget=quick, n=64)}))
    assert quick in text and 'NOT AutoAttack standard' in text and 'n=64' in text


def test_upper_bounds_are_marked_and_explained():
    exact = {'linf:8/255': True, 'l2:0.5': False, 'l1:12': False}
    text = results_text({'m': result(0.8, (0.4, 0.5, 0.3), 0.2, exact=exact)})
    assert '≤50.0' in text and '≤30.0' in text and '≤40.0' not in text and '≤20.0' not in text
    assert 'upper bound' in flat(text)
    assert 'upper bound' not in results_text({'m': result(0.8, (0.4, 0.5, 0.3), 0.2)})


def test_missing_threat_shows_a_dash_and_no_difference():
    rows = [('all', result(0.8, (0.4, 0.5, 0.3), 0.2)),
            ('linf only', result(0.8, (0.45,), 0.45, threats=['linf:8/255']))]
    table = results_table(rows)
    assert str(column(table, 'l_2 (0.5)')[1]) == '–' and str(column(table, 'l_inf (8/255)')[1]) == '45.0 +5.0'


def test_row_forms_and_errors():
    res = result(0.8, (0.4, 0.5, 0.3), 0.2, model='net')
    for rows in (res, [res], [('net', res)], {'net': res}):
        assert str(column(results_table(rows), 'model')[0]) == 'net'
    with pytest.raises(ValueError):
        results_table([])
    with pytest.raises(TypeError):
        results_table({'net': 0.5})


def test_markup_in_names_is_kept():
    text = results_text({'wrn [ours]': result(0.8, (0.4, 0.5, 0.3), 0.2)})
    assert 'wrn [ours]' in text


def test_print_results_uses_the_given_console(rows):
    console = Console(record=True, width=120, file=io.StringIO())
    print_results(rows, title='demo', console=console)
    text = console.export_text()
    assert 'demo' in text and '80.9 -1.4' in text


def test_report_of_a_real_evaluation():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors: a second thread only adds waiting on a busy machine
    try:
        _report_of_a_real_evaluation()
    finally:
        torch.set_num_threads(threads)


def _report_of_a_real_evaluation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    x = torch.rand(8, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    a = evaluate_robustness(model, x, y, threats=['linf:1/255', 'l1:0.5'], budget='quick', name='linear')
    b = evaluate_robustness(model, x, y, threats=['linf:1/255', 'l1:0.5'], budget='quick', union_only=True)
    text = flat(results_text([('full', a), ('union only', b)]))
    assert 'NOT AutoAttack standard' in text and 'n=8' in text and 'l_inf (1/255)' in text
    assert f'{100 * a.union:.1f} +0.0' in text                       # union_only: same union
