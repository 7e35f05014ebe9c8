"""What the attacks check before trusting a model: probabilities instead of logits, randomness in
eval mode, zero gradients, logits that do not cover the labels; with the words and the line the
warnings point the user to (not checked under mutmut, whose trampolines add a stack frame)."""

import os
import warnings

import pytest
import torch
from torch import nn

from eatai.attacks.guards import check_batch, check_labels, check_model_outputs, looks_like_probabilities, warn_zero_gradients

CALLER_LINE = 'MUTANT_UNDER_TEST' not in os.environ


def test_probabilities_are_told_from_logits():
    probs = torch.randn(4, 10).softmax(1)
    assert looks_like_probabilities(probs)
    assert looks_like_probabilities(torch.eye(3))                      # one-hot rows: 0s and 1s included
    assert looks_like_probabilities(torch.ones(1, 1))                  # a single probability of 1
    assert looks_like_probabilities(probs * (1 + 5e-5))                # half-precision sums, off by 5e-5
    assert not looks_like_probabilities(torch.randn(4, 10))            # logits
    assert not looks_like_probabilities(torch.full((2, 3), 0.5))       # in [0,1], but rows sum to 1.5
    assert not looks_like_probabilities(torch.tensor([[1.5, -0.5]]))   # rows sum to 1, but outside [0,1]
    assert not looks_like_probabilities(probs[0])                      # not (B, K)
    assert not looks_like_probabilities(torch.zeros(0, 10))


class Softmaxed(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10].softmax(1)


class Noisy(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        out = x.flatten(1)[:, :10] * 10
        return out + self.scale * out.abs().max() * torch.randn_like(out)


def warned(model, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        check_model_outputs(model, x)   # the line the warnings must point at
    return caught


CHECK_LINE = next(i for i, line in enumerate(open(__file__), 1) if 'the line the warnings must point at' in line
                  and 'next(' not in line)


def test_model_checks_warn_about_softmax_and_randomness_at_the_callers_line():
    x = torch.rand(4, 3, 8, 8)
    (w,) = warned(Softmaxed(), x)
    assert str(w.message) == ("the model's outputs look like probabilities (in [0,1], summing to 1): attacks and the "
                              "cross-entropy need logits, remove the final softmax")
    assert (w.filename, w.lineno) == (__file__, CHECK_LINE) or not CALLER_LINE   # stacklevel: the caller's line
    (w,) = warned(Noisy(1e-2), x)
    assert str(w.message).startswith("the model gives different outputs for the same input in eval mode: a randomised "
                                     "model makes attack results unreliable (AutoAttack's version='rand' handles")
    assert (w.filename, w.lineno) == (__file__, CHECK_LINE) or not CALLER_LINE
    assert warned(Noisy(1e-8), x) == []                                # float noise of 1e-8 is no randomness
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(192, 10), nn.Dropout(0.5)).train()
    assert warned(dropout, x) == [] and dropout.training               # checked in eval mode, train mode given back


class Alternating(nn.Module):
    """Constant logits `level`, shifted by +delta on odd calls and -delta on even ones."""

    def __init__(self, level, delta):
        super().__init__()
        self.level, self.delta, self.calls = level, delta, 0

    def forward(self, x):
        self.calls += 1
        return torch.full((len(x), 10), self.level) + (self.delta if self.calls % 2 else -self.delta)


@pytest.mark.parametrize('level, delta, warns', [
    (0.0, 2e-6, False), (0.0, 2e-5, True),         # near zero: 1e-5 absolute (fp32 reductions in another order)
    (100.0, 2.5e-3, False), (100.0, 1e-2, True),   # large logits: 1e-4 relative
])
def test_randomness_tolerance_is_absolute_near_zero_and_relative_above(level, delta, warns):
    assert bool(warned(Alternating(level, delta), torch.rand(2, 3, 4, 4))) == warns


def test_zero_gradients_are_counted_per_example():
    grad = torch.randn(3, 3, 4, 4)
    grad[1] = 0
    grad[2, 0] = 0                                                     # one channel zero: not a zero gradient

    def attack():
        warn_zero_gradients(grad)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        attack()
    (w,) = caught
    assert str(w.message) == ("1 of 3 examples have a zero input gradient: the model may mask gradients (e.g. saturated "
                              "or quantised outputs); robust accuracy from gradient attacks may be overestimated")
    assert w.filename == __file__ or not CALLER_LINE                   # the attack's caller
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        warn_zero_gradients(torch.randn(2, 5))


def test_logits_must_cover_the_labels():
    y = torch.tensor([0, 9])
    check_labels(y, torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r'^label 10 is out of range for a model with 10 outputs$'):
        check_labels(torch.tensor([0, 10]), torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r'^the model must return logits of shape \(2, n_classes\), got \(3, 10\)$'):
        check_labels(y, torch.zeros(3, 10))
    with pytest.raises(ValueError, match=r'^the model must return logits of shape \(2, n_classes\), got \(2, 10, 1\)$'):
        check_labels(y, torch.zeros(2, 10, 1))


def test_out_of_range_inputs_are_told_how_to_fix_the_pipeline():
    with pytest.raises(ValueError, match=r"^inputs must lie in \[0,1\] pixel space \(got min 0, max 2\): eps is measured "
                                         r"there. If the data are normalised, remove Normalize from the data pipeline and "
                                         r"put the normalisation inside the model instead.$"):
        check_batch(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
