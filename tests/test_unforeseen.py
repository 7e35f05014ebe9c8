"""Threats beyond the l_p balls in one evaluation: a union of chosen threats, the unforeseen group's
average and worst case, corruptions judged on every point and kept out of the union, the tables,
JSON, heat map, `robust_eval(unforeseen=True)`, `corruption_eval` and `eatai eval --unforeseen`."""
import json

import matplotlib
import pytest

matplotlib.use('Agg')

from eatai.all import robust_learner, sample_dls  # noqa: E402
from eatai.cli import main  # noqa: E402
from eatai.data import load_sample  # noqa: E402
from eatai.demo import DEMO_CHECKPOINT  # noqa: E402
from eatai.evaluation import (UNFORESEEN, RobustResult, corruption_table, evaluate_robustness, results_text,  # noqa: E402
                              summary_plot, unforeseen_threats)
from eatai.models import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')

LP = ['linf:8/255', 'l1:12']
NEW = ['stadv:0.05', 'jpeg:0.25']


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv('EATAI_HOME', str(tmp_path))   # corruptions are cached in the test's folder


@pytest.fixture(scope='module')
def points():
    _, _, x, y = load_sample()
    return load_checkpoint(DEMO_CHECKPOINT).eval(), x[:20], y[:20]


@pytest.fixture(scope='module')
def mixed(points, tmp_path_factory):
    """l_p threats in the union, the new ones grouped outside it, and two corruptions."""
    model, x, y = points
    threats = LP + NEW + ['corruption:fog:3', 'corruption:contrast:5']
    return evaluate_robustness(model, x, y, threats=threats, budget='quick', bs=8, union=LP,
                               groups={'unforeseen': NEW})


def test_the_union_is_over_the_chosen_threats_and_adding_threats_never_raises_it(points, mixed):
    model, x, y = points
    flags = mixed.flags
    assert flags['union'] == [c and a and b for c, a, b in zip(flags['clean'], flags[LP[0]], flags[LP[1]])]
    wider = evaluate_robustness(model, x, y, threats=LP + NEW, budget='quick', bs=8)    # every attack in the union
    assert wider.union <= mixed.union
    assert all(not w or m for w, m in zip(wider.flags['union'], mixed.flags['union']))
    assert mixed.outside_union == NEW + ['corruption:fog:3', 'corruption:contrast:5']
    assert wider.outside_union == [] and wider.groups == {}


def test_the_groups_average_and_worst_case_come_from_the_flags(mixed):
    s = mixed.summary()['unforeseen']
    assert s['threats'] == NEW and s['exact']
    assert s['average'] == pytest.approx(sum(mixed.robust[t] for t in NEW) / 2)
    worst = sum(a and b for a, b in zip(mixed.flags[NEW[0]], mixed.flags[NEW[1]])) / mixed.n
    assert s['worst'] == pytest.approx(worst)
    assert s['worst'] <= min(mixed.robust[t] for t in NEW) <= s['average']
    assert mixed.summary([LP[0]])['worst'] == pytest.approx(mixed.robust[LP[0]])
    with pytest.raises(ValueError, match="no such threats"):
        mixed.summary(['l2:0.5'])


def test_corruptions_are_judged_on_every_point_and_their_mean_is_the_mca(points, mixed):
    model, x, y = points
    from eatai.evaluation.corruptions import cached_corruption
    import torch
    for key in ('corruption:fog:3', 'corruption:contrast:5'):
        _, name, severity = key.split(':')
        with torch.no_grad():
            right = (model(cached_corruption(x, name, int(severity))).argmax(1) == y).tolist()
        assert mixed.flags[key] == right          # clean-wrong points too: corruption accuracy, not robustness
    assert mixed.mca == pytest.approx((mixed.robust['corruption:fog:3'] + mixed.robust['corruption:contrast:5']) / 2)


def test_table_json_and_heat_map_carry_the_summary(mixed):
    text = results_text(mixed, width=250)   # wide enough that no header wraps
    for header in ('unforeseen avg', 'unforeseen worst', 'mCA', 'stadv (0.05)', 'fog (3)'):
        assert header in text
    assert f"{100 * mixed.mca:.1f}" in text
    data = json.loads(mixed.to_json())
    assert data['summary'] == mixed.summary() and data['mCA'] == mixed.mca
    back = RobustResult.from_json(mixed.to_json())
    assert back.summary() == mixed.summary() and back.mca == mixed.mca
    table = corruption_table(mixed)
    assert [c.header for c in table.columns] == ['corruption', '3', '5', 'mean']
    fig = summary_plot({'a': mixed, 'b': back})
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == LP + NEW + ['union', 'unforeseen avg', 'unforeseen worst', 'mCA']
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert len(shown) == 2 * len(labels) and f"{100 * mixed.union:.1f}" in shown


def test_bad_unions_and_groups_are_refused(points):
    model, x, y = points
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate_robustness(model, x[:2], y[:2], threats=LP, budget='quick', union=['l2:0.5'])
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate_robustness(model, x[:2], y[:2], threats=LP, budget='quick', groups={'u': ['stadv:0.05']})
    with pytest.raises(ValueError, match="not attacks"):
        evaluate_robustness(model, x[:2], y[:2], threats=['corruption:fog:1'], budget='quick',
                            union=['corruption:fog:1'])
    with pytest.raises(ValueError, match="no corruption threats"):
        corruption_table(evaluate_robustness(model, x[:2], y[:2], threats=LP[:1], budget='quick'))
    with pytest.raises(ValueError, match="no unforeseen threat set"):
        unforeseen_threats('imagenet')


def test_robust_eval_unforeseen_and_corruption_eval_through_the_learner():
    learn = robust_learner(sample_dls(bs=16), DEMO_CHECKPOINT)
    res = learn.robust_eval(n=6, threats=['linf'], budget='quick', bs=6, unforeseen=True, progress=False)
    assert res.threats == ['linf:8/255'] + list(UNFORESEEN['cifar10'])
    assert res.groups == {'unforeseen': list(UNFORESEEN['cifar10'])}
    assert res.outside_union == list(UNFORESEEN['cifar10'])
    assert res.flags['union'] == [c and r for c, r in zip(res.flags['clean'], res.flags['linf:8/255'])]
    corr = learn.corruption_eval(severities=(2,), corruptions=['fog', 'pixelate'], n=6, progress=False)
    assert corr.threats == ['corruption:fog:2', 'corruption:pixelate:2'] and corr.outside_union == corr.threats
    assert corr.union == corr.clean       # nothing in the union: the clean-correct points


def test_cli_eval_unforeseen_writes_the_summary(tmp_path):
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', str(DEMO_CHECKPOINT), '--n', '4', '--bs', '4', '--budget', 'quick',
                 '--threats', 'linf:8/255', 'l1:12', '--unforeseen', '--out', str(out)]) == 0
    data = json.loads(out.read_text())
    assert data['threats'][:2] == ['linf:8/255', 'l1:12'] and data['groups']['unforeseen'] == list(UNFORESEEN['cifar10'])
    assert set(data['summary']['unforeseen']) == {'threats', 'average', 'worst', 'exact'}
