"""What the attacks check before trusting a model: probabilities instead of logits, randomness in
eval mode, zero gradients, logits that do not cover the labels; with the words and the line the
warnings point the user to (not checked under mutmut, whose trampolines add a stack frame)."""

import os
import sys
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
    assert not looks_like_probabilities(torch.tensor([[1 + 5e-5, 0.0]]))  # sums to 1 within the tolerance, above 1
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
        attack(); line = sys._getframe().f_lineno                      # noqa: E702
    (w,) = caught
    assert str(w.message) == ("1 of 3 examples have a zero input gradient: the model may mask gradients (e.g. saturated "
                              "or quantised outputs); robust accuracy from gradient attacks may be overestimated")
    assert (w.filename, w.lineno) == (__file__, line) or not CALLER_LINE   # the attack's caller, not the attack
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


def test_check_batch_reads_everything_back_at_once_and_returns_the_largest_label():
    from eatai.attacks.syncs import count_host_syncs
    with count_host_syncs() as syncs:
        assert check_batch(torch.rand(3, 4), torch.tensor([2, 7, 0])) == 7
    assert syncs.total == 1                                            # one read of every value checked
    assert check_batch(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) is None
    assert check_batch(torch.rand(2, 4).bfloat16(), torch.tensor([257, 3])) == 257   # labels not rounded to bf16
    with pytest.raises(ValueError, match=r'^labels must be >= 0, got -2$'):
        check_batch(torch.rand(2, 4), torch.tensor([-2, 3]))
    with pytest.raises(ValueError, match=r'^x contains NaN or infinite values$'):
        check_batch(torch.tensor([[0.5, float('inf')]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r'got min -0.5, max 0.5\)'):
        check_batch(torch.tensor([[-0.5, 0.5]]), torch.tensor([0]))


def test_labels_are_checked_against_a_known_largest_one_without_reading_them():
    y = torch.tensor([0, 9])
    with pytest.raises(ValueError, match=r'^label 12 is out of range for a model with 10 outputs$'):
        check_labels(y, torch.zeros(2, 10), 12)                        # the given maximum is trusted
    check_labels(torch.tensor([0, 10]), torch.zeros(2, 11), 10)
    check_labels(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), None)


def test_a_zero_gradient_count_warns_at_the_callers_line():
    from eatai.attacks.guards import warn_zero_count, zero_gradients
    grad = torch.randn(4, 3)
    grad[[0, 2]] = 0
    assert zero_gradients(grad).item() == 2 and zero_gradients(grad).dim() == 0

    def attack(g):                                                     # the count is taken in the attack
        warn_zero_count(zero_gradients(g), len(g))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        attack(grad); line = sys._getframe().f_lineno                  # noqa: E702  the attack's caller
        attack(torch.randn(4, 3))
    (w,) = caught
    assert str(w.message).startswith("2 of 4 examples have a zero input gradient")
    assert (w.filename, w.lineno) == (__file__, line) or not CALLER_LINE


def test_attacks_warn_of_zero_gradients_once_per_call_at_the_callers_line():
    from eatai.attacks import apgd, apgd_targeted
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    with torch.no_grad():
        flat[1].weight.zero_()                                         # the output does not depend on the input
    x, y = torch.rand(5, 3, 4, 4), torch.arange(5)
    robust = flat[1].bias.argmax().repeat(5)
    robust[:2] = (robust[:2] + 1) % 10                                 # 3 classified correctly
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        apgd(flat, x, y, 'l1', 1.0, loss='dlr', n_restarts=2, random_start=True); first = sys._getframe().f_lineno  # noqa: E702
        apgd_targeted(flat, x, robust, 'linf', 0.1, n_iter=3, n_target_classes=3); second = sys._getframe().f_lineno  # noqa: E702
        apgd(flat, x, y, 'linf', 0.1, 3)      # cross-entropy: a saturated loss has zero gradients legitimately
    assert [str(w.message)[:9] for w in caught] == ['5 of 5 ex', '3 of 3 ex']   # apgd-t: the robust ones, first target
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, first), (__file__, second)] or not CALLER_LINE


class HalfDead(nn.Module):
    """Linear where the first pixel is 1, constant logits (class 0) where it is 0: there the input
    gradient is zero. The first pixel has no weight, so attacks without a random start never move it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 10)
        with torch.no_grad():
            self.fc.weight[:, 0] = 0
            self.fc.bias.zero_()[0] = 1.0

    def forward(self, x):
        live = (x.flatten(1)[:, :1] > 0.5).to(x.dtype)
        return live * self.fc(x.flatten(1)) + (1 - live) * self.fc.bias.detach()


def test_apgd_t_warns_of_the_zero_gradients_of_its_first_target_class():
    """The count and the total of the first target class, whose attack sees every robust example,
    not of a later one, which sees only those still robust (here, only the ones with zero gradients)."""
    from eatai.attacks import apgd_targeted
    model = HalfDead()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x.view(6, -1)[:, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])   # 4 live examples, 2 with zero gradients
    with torch.no_grad():
        y = model(x).argmax(1)                                          # all robust clean
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        _, correct = apgd_targeted(model, x, y, 'linf', 0.5, n_iter=5, n_target_classes=2, random_start=False)
    assert correct.tolist() == [False] * 4 + [True] * 2                 # the live ones broken at the first target
    assert [str(w.message)[:22] for w in caught] == ['2 of 6 examples have a']
