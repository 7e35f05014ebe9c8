"""Host-device synchronisations per attack call (issue 23, "few host syncs"): the counter itself, and
a constant number per call, whatever n_iter, for APGD in every norm, APGD-T, PGD, SLIDE and MSD.
Counted on the CPU with a TorchFunctionMode (`eatai.attacks.syncs`); the counts do not depend on
the device. The inputs are CIFAR-sized, so that APGD-l1 and SLIDE take their compacted top-k path."""
import pytest
import torch
from torch import nn

from eatai.attacks import EVALUATION, apgd, apgd_targeted
from eatai.attacks.msd import msd
from eatai.attacks.pgd import pgd
from eatai.attacks.syncs import count_host_syncs, sync_kind

pytestmark = pytest.mark.usefixtures('one_thread')

EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}
MOST = 6   # the bound on syncs per call


def test_the_counter_counts_each_kind_of_sync():
    x = torch.tensor([0.5, -1.0, 2.0])
    mask = x > 0
    cases = {
        'item': lambda: x[0].item(), '__bool__': lambda: bool(x[0] > 0), '__int__': lambda: int(x[2]),
        '__float__': lambda: float(x[0]), 'tolist': lambda: x.tolist(), 'numpy': lambda: x.numpy(),
        'cpu': lambda: x.cpu(), 'nonzero': lambda: mask.nonzero(), 'where(cond)': lambda: torch.where(mask),
        'bool_mask_index': lambda: x[mask], 'from_host': lambda: torch.tensor([1.0], device=x.device),
    }
    for kind, call in cases.items():
        with count_host_syncs(record_where=True) as syncs:
            call()
        assert syncs.by_kind() == {kind: 1}, kind
        (place,) = syncs.by_place()
        assert place.startswith(f'{kind} at {__file__}:'), place      # the line in this file, not torch's
    with count_host_syncs() as syncs:
        x[x > 1] = 0.0                                                   # a boolean-mask assignment
        if x.sum() > 0:                                                  # a tensor in an `if`
            pass
    assert syncs.total == 2 and syncs.by_kind() == {'bool_mask_index': 1, '__bool__': 1}


def test_the_counter_leaves_device_side_work_alone():
    x = torch.rand(4, 5)
    with count_host_syncs() as syncs:
        torch.where(x > 0.5, x, 0.0), x.topk(2, dim=1), x.sort(dim=1), x[torch.tensor([0, 2])], x.any(), x.max()
        x.masked_fill(x > 0.5, 0), torch.full((3,), 1.0, device=x.device), torch.tensor([1.0]), x.to(x.device)
    assert syncs.total == 0, syncs.by_kind()
    assert sync_kind(torch.Tensor.to, (x, 'cpu'), {}) is None           # a CPU tensor stays: no copy
    assert sync_kind(torch.Tensor.repeat_interleave, (x, torch.tensor([1, 2])), {}) == 'repeat_interleave'
    assert sync_kind(torch.Tensor.repeat_interleave, (x, torch.tensor([1, 2])), {'output_size': 3}) is None


@pytest.fixture(scope='module')
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10)).eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10          # a few misclassified points, so APGD-T has both kinds
    return model, x, y


def per_call(attack, n_iter):
    with count_host_syncs() as syncs:
        attack(n_iter)
    return syncs


def check_constant(attack, most=MOST):
    """The same syncs at 10 and at 20 iterations, at most `most`: none inside the loop. After a first
    call, which may find that l1 needs a wider top-k and run again (see the last test)."""
    attack(20)
    ten, twenty = per_call(attack, 10), per_call(attack, 20)
    assert ten.by_kind() == twenty.by_kind()
    assert ten.total <= most
    return ten


@pytest.mark.parametrize('norm, expected', [('linf', 1), ('l2', 1), ('l1', 2)])
def test_apgd_syncs_once_or_twice_per_call(problem, norm, expected):
    model, x, y = problem
    syncs = check_constant(lambda n: apgd(model, x, y, norm, EPS[norm], n_iter=n))
    assert syncs.total == expected, syncs.by_kind()   # the checks of the batch; l1: whether it needed more coordinates


@pytest.mark.parametrize('norm', ['linf', 'l1'])
def test_apgd_at_the_evaluation_budget_syncs_as_often(problem, norm):
    model, x, y = problem
    options = {**EVALUATION, 'seed': 0}
    syncs = check_constant(lambda n: apgd(model, x, y, norm, EPS[norm], **{**options, 'n_iter': n}))
    assert syncs.total == (2 if norm == 'l1' else 1)


@pytest.mark.parametrize('norm', ['linf', 'l2', 'l1'])
def test_apgd_targeted_syncs_once_per_target_class_and_call(problem, norm):
    model, x, y = problem
    syncs = check_constant(lambda n: apgd_targeted(model, x, y, norm, EPS[norm], n_iter=n, n_target_classes=3,
                                                   seed=0))
    # the checks, the zero-gradient count, l1's width (none once l1 takes every coordinate), and the
    # robust points before each of the 3 target classes (while some are)
    kinds = syncs.by_kind()
    assert kinds.pop('nonzero', 0) <= 3
    assert kinds == {'tolist': 1, '__int__': 1} or (norm == 'l1' and kinds == {'tolist': 1, '__int__': 1, '__bool__': 1})


@pytest.mark.parametrize('norm', ['linf', 'l2', 'l1'])
def test_pgd_and_slide_sync_once_or_twice_per_call(problem, norm):
    model, x, y = problem
    syncs = check_constant(lambda n: pgd(model, x, y, norm, EPS[norm], n_iter=n))
    assert syncs.total == (2 if norm == 'l1' else 1)
    syncs = check_constant(lambda n: pgd(model, x, y, norm, EPS[norm], n_iter=n, random_start=True))
    assert syncs.total == (2 if norm == 'l1' else 1)


def test_msd_syncs_twice_per_call(problem):
    model, x, y = problem
    syncs = check_constant(lambda n: msd(model, x, y, EPS, n_iter=n))
    assert syncs.by_kind() == {'tolist': 2}   # the checks; the steps each norm won, returned as numbers
