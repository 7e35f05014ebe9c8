import math

import pytest

from eatai.threats import (
    DEFAULT_EPS,
    NORMS,
    ThreatModel,
    canonical_norm,
    default_eps,
    default_threats,
    format_strength,
    parse_eps,
    parse_threat,
)


def test_paper_radii():
    assert default_eps('linf', 'cifar10') == pytest.approx(8 / 255)
    assert default_eps('l2', 'cifar10') == 0.5
    assert default_eps('l1', 'cifar10') == 12
    assert default_eps('linf', 'imagenet') == pytest.approx(4 / 255)
    assert default_eps('l2', 'imagenet') == 2
    assert default_eps('l1', 'imagenet') == 255
    assert [t.norm for t in default_threats('cifar10')] == list(NORMS)
    assert set(DEFAULT_EPS) == {'cifar10', 'imagenet'}


@pytest.mark.parametrize('text, norm, eps', [
    ('linf:8/255', 'linf', 8 / 255), ('l1:12', 'l1', 12.0), ('L2=0.5', 'l2', 0.5), ('Linf 4/255', 'linf', 4 / 255),
    ('l1', 'l1', 12.0), ('inf:0.03', 'linf', 0.03), (' l2 : 1e-1 ', 'l2', 0.1), ('linf:0.5/255', 'linf', 0.5 / 255)])
def test_parse_threat(text, norm, eps):
    tm = parse_threat(text)
    assert tm.norm == norm and tm.eps == pytest.approx(eps)


def test_parse_threat_uses_dataset_default():
    assert parse_threat('l1', dataset='imagenet').eps == 255


def test_str_round_trips():
    for tm in default_threats('cifar10') + default_threats('imagenet'):
        again = parse_threat(str(tm))
        assert again.norm == tm.norm and again.eps == pytest.approx(tm.eps)
    assert str(ThreatModel('linf', 8 / 255)) == 'linf:8/255'
    # short decimals stay decimals; anything else is written exactly, so names never collide
    assert [format_strength(e) for e in (0.2, 12, 0.5, 8 / 255, 0.5 / 255)] == ['0.2', '12', '0.5', '8/255',
                                                                              repr(0.5 / 255)]
    assert str(ThreatModel('l2', 0.1234561)) != str(ThreatModel('l2', 0.1234564))
    for eps in (1 / 3, 0.5 / 255, 0.1234561, 2 / 255):
        assert parse_threat(str(ThreatModel('linf', eps))).eps == eps


@pytest.mark.parametrize('bad', ['l3:1', 'lmax', 'l0:5'])
def test_unknown_norm_names_the_value(bad):
    with pytest.raises(ValueError, match=bad.split(':')[0]):
        parse_threat(bad)


@pytest.mark.parametrize('eps', [0, -1, math.nan, math.inf, -0.5])
def test_bad_eps_names_the_value(eps):
    with pytest.raises(ValueError, match='eps'):
        ThreatModel('l2', eps)


@pytest.mark.parametrize('text', ['linf:0', 'l2:-0.5', 'l1:nan', 'l1:abc', 'linf:8/0', 'l2:'])
def test_bad_eps_strings(text):
    with pytest.raises(ValueError):
        parse_threat(text)


def test_parse_eps_has_no_eval():
    assert parse_eps('8/255') == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match='__import__'):
        parse_eps("__import__('os')")


def test_canonical_norm_and_unknown_dataset():
    assert canonical_norm('Linf') == 'linf' and canonical_norm('L1') == 'l1'
    with pytest.raises(ValueError, match='mnist'):
        default_eps('l2', 'mnist')


def test_threat_model_is_frozen_and_canonical():
    tm = ThreatModel('Linf', 0.1)
    assert tm.norm == 'linf'
    with pytest.raises(Exception):
        tm.eps = 0.2
