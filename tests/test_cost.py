"""What an evaluation costs: the floor from a per-step log, the greedy order, and union_only's learned order."""
import json
import time

import pytest
from conftest import softmax_regression

from eatai.evaluation import APGDSettings, EvalBudget, RobustResult, evaluate_robustness
from eatai.evaluation.cost import cost_floor, greedy_order, step_costs

pytestmark = pytest.mark.usefixtures('one_thread')
TINY = EvalBudget('tiny', linf=APGDSettings(4, 1, 2), l2=APGDSettings(4, 1, 2), l1=APGDSettings(4, 1, 2, use_largereps=True))


def logged(steps, clean):
    return RobustResult(n=len(clean), clean=0, robust={}, union=0, threats=[], budget='', exact={},
                        flags={'clean': clean}, seconds={}, steps=steps)


def step(threat, attack, attacked, broken, seconds):
    return {'threat': threat, 'attack': attack, 'attacked': attacked, 'broken': broken, 'seconds': seconds}


def test_the_floor_charges_every_step_to_robust_points_and_the_cheapest_breaker_to_the_rest():
    # points 0..3 clean-correct, 4 a clean error; a costs 1 s a point, b 3 s, c 2 s
    res = logged([step('t', 'a', 4, [0], 4.0), step('t', 'b', 3, [1, 2], 9.0), step('u', 'c', 2, [2], 3.0),
                  step('u', 'c', 1, [], 1.0)], clean=[True, True, True, True, False])
    assert step_costs(res.steps) == {('t', 'a'): 1.0, ('t', 'b'): 3.0, ('u', 'c'): 4.0 / 3}
    # 0: a (1); 1: b (3); 2: c, cheaper than b (4/3); 3 robust: every step (1 + 3 + 4/3); 4: nothing
    assert cost_floor(res) == pytest.approx(1 + 3 + 4 / 3 + (1 + 3 + 4 / 3))


def test_greedy_order_puts_most_breaks_per_second_first_and_unattacked_steps_last():
    stats = {'slow': (10, 5, 10.0), 'fast': (10, 2, 1.0), 'idle': (0, 0, 0.0), 'none': (10, 0, 2.0)}
    assert greedy_order(stats) == ['fast', 'slow', 'none', 'idle']


def test_greedy_order_puts_steps_timed_at_zero_or_with_no_point_last():
    """A clock too coarse to see a step, or time spent with no point attacked, gives no rate."""
    stats = {'idle': (0, 0, 0.5), 'instant': (3, 1, 0.0), 'none': (10, 0, 2.0), 'fast': (10, 2, 1.0)}
    assert greedy_order(stats) == ['fast', 'none', 'idle', 'instant']


def test_a_threats_seconds_add_up_its_steps_and_fit_in_the_call():
    model, x, y = softmax_regression(n=12, size=4)
    start = time.perf_counter()
    res = evaluate_robustness(model, x, y, threats=['linf:0.03', 'l2:0.3'], budget=TINY, bs=6)
    elapsed = time.perf_counter() - start
    for threat in res.threats:
        steps = [s['seconds'] for s in res.steps if s['threat'] == threat]
        assert len(steps) == 2 and res.seconds[threat] == pytest.approx(sum(steps))
    assert all(0 <= s['seconds'] <= elapsed for s in res.steps)


def test_union_only_learns_an_order_from_two_steps_on():
    model, x, y = softmax_regression(n=40, size=4)
    n_clean = int(sum(evaluate_robustness(model, x, y, threats=['linf:0.03'], budget=TINY).flags['clean']))
    assert n_clean > 10
    # one step: nothing to order, it runs once on every point
    one = EvalBudget('apgd-ce only', linf=TINY.linf, attacks=('apgd-ce',))
    res = evaluate_robustness(model, x, y, threats=['linf:0.03'], budget=one, bs=10, union_only=True)
    assert [(s['attack'], s['attacked']) for s in res.steps] == [('apgd-ce', n_clean)]
    # two steps: both on the first chunk (bs points), then both again, in the learned order, on the rest
    res = evaluate_robustness(model, x, y, threats=['linf:0.03'], budget=TINY, bs=10, union_only=True)
    assert len(res.steps) == 4 and res.steps[0]['attacked'] == 10
    assert res.steps[2]['attacked'] == n_clean - 10


def test_union_only_learns_its_order_on_the_first_chunk_and_keeps_the_union():
    model, x, y = softmax_regression(n=90, size=4)
    threats = ['linf:0.03', 'l2:0.3', 'l1:2']
    per_threat = evaluate_robustness(model, x, y, threats=threats, budget=TINY, bs=30)
    union_only = evaluate_robustness(model, x, y, threats=threats, budget=TINY, bs=30, union_only=True)
    assert union_only.flags['union'] == per_threat.flags['union']
    steps = [(s['attack'], s['threat']) for s in union_only.steps]
    default = [(a, t) for a in ('apgd-ce', 'apgd-t') for t in threats]
    probe, rest = union_only.steps[:6], union_only.steps[6:]
    assert steps[:6] == default and probe[0]['attacked'] == 30   # the first chunk: bs points (at most 32)
    stats = {(s['attack'], s['threat']): (s['attacked'], len(s['broken']), s['seconds']) for s in probe}
    assert [(s['attack'], s['threat']) for s in rest] == greedy_order(stats)
    # the rest: every clean-correct point outside the first chunk, for the first step of the learned order
    assert rest[0]['attacked'] == sum(per_threat.flags['clean']) - 30


def test_a_resumed_union_only_run_reuses_the_order_it_saved(tmp_path):
    model, x, y = softmax_regression(n=40, size=4)
    path = tmp_path / 'eval.json'
    first = evaluate_robustness(model, x, y, threats=['linf:0.03', 'l2:0.3'], budget=TINY, bs=10, union_only=True,
                                resume_file=path)
    saved = json.loads(path.read_text())['done']
    order = saved['union_only order']
    assert order == [f"{s['attack']}|{s['threat']}" for s in first.steps[4:]]
    # a forged order in the file is the one the resumed run follows, and the flags stay the same
    saved['union_only order'] = order[::-1]
    path.write_text(json.dumps({**json.loads(path.read_text()), 'done': saved}))
    again = evaluate_robustness(model, x, y, threats=['linf:0.03', 'l2:0.3'], budget=TINY, bs=10, union_only=True,
                                resume_file=path)
    assert [f"{s['attack']}|{s['threat']}" for s in again.steps[4:]] == order[::-1]
    assert again.flags['union'] == first.flags['union']
