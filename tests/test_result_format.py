"""`RobustResult`'s text and JSON forms, written out by hand, and the checks of n."""
import pytest

from eatai.all import RobustResult


def result(**kw):
    base = dict(n=200, clean=0.5, robust={'linf:0.0314': 0.25, 'l1:12': 0.125}, union=0.1, threats=['linf:0.0314', 'l1:12'],
                budget='standard', exact={'linf:0.0314': True, 'l1:12': False},
                flags={'clean': [True, False]}, seconds={'linf:0.0314': 1.5})
    return RobustResult(**{**base, **kw})


def test_repr_names_every_number_and_marks_upper_bounds():
    assert repr(result()) == ("RobustResult(n=200, clean=50.0%, linf:0.0314=25.0%, l1:12=<=12.5%, union=10.0%, "
                              "budget='standard')")
    assert repr(result(model='ckpt.pt')).startswith("RobustResult('ckpt.pt', n=200, clean=50.0%")
    # a threat that `exact` does not mention counts as exact (no '<=')
    assert repr(result(exact={'l1:12': False})) == ("RobustResult(n=200, clean=50.0%, linf:0.0314=25.0%, "
                                                    "l1:12=<=12.5%, union=10.0%, budget='standard')")


def test_json_round_trips_through_text_and_files(tmp_path):
    r = result(notes=['zero gradients'])
    text = r.to_json(tmp_path / 'r.json')
    assert (tmp_path / 'r.json').read_text() == text
    assert text.startswith('{\n "n": 200,')                          # indented one space per level
    assert RobustResult.from_json(text) == r
    assert RobustResult.from_json(tmp_path / 'r.json') == r
    assert RobustResult.from_json(str(tmp_path / 'r.json')) == r
    assert RobustResult.from_json('  ' + text) == r                   # JSON text with leading blanks


def test_check_n_takes_one_and_up_to_the_data():
    from eatai.evaluation import check_n
    check_n(1), check_n(4, 4)                                          # the smallest n, and all of the data
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match=r'^n must be an integer >= 1, got'):
            check_n(bad)
    with pytest.raises(ValueError, match=r'^n=5 is larger than the data: it holds 4 examples; use n <= 4'):
        check_n(5, 4)


def test_a_result_written_by_the_previous_release_still_loads():
    """tests/fixtures/result_v0.1.0.json: `evaluate_robustness(..., union_only=True)` of the bundled checkpoint
    on 24 sample points, written by eatai 0.1.0 before evaluation became a package."""
    from pathlib import Path

    from eatai.all import results_text
    old = RobustResult.from_json(Path(__file__).parent / 'fixtures' / 'result_v0.1.0.json')
    assert old.n == 24 and old.model == 'demo-cnn' and old.threats == ['linf:8/255', 'l2:0.5', 'l1:12']
    assert old.exact == {'linf:8/255': False, 'l2:0.5': False, 'l1:12': False}
    assert old.union == sum(old.flags['union']) / 24 == 0.25
    assert old.flags['union'] == [all(old.flags[t][i] for t in old.threats) for i in range(24)]
    table = results_text(old)
    assert 'l_inf (8/255)' in table and '≤29.2' in table and '25.0' in table
