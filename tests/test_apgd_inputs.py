"""APGD's edges: what it refuses (with which words), the empty batch, the KL attack's reference,
restarts that keep only the examples still robust, ties in the loss, and its host syncs."""
import importlib

import pytest
import torch
from conftest import CountingModel, Flicker, TinyNet
from test_evaluate import ConstantModel
from torch import nn

from eatai.attacks import APGDConfig, apgd
from eatai.attacks.guards import check_batch
from eatai.attacks.losses import ce_loss, kl_loss
from eatai.attacks.syncs import count_host_syncs

pytestmark = pytest.mark.usefixtures('one_thread')


def test_check_batch_refuses_with_a_reason():
    x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    check_batch(x, y)
    edge = x.clone()
    edge[0, 0, 0, 0], edge[1, 0, 0, 0] = 0.0, 1.0
    check_batch(edge, y)                                          # 0 and 1 are pixels too
    cases = [
        ((x.numpy(), y), TypeError, '^x and y must be torch tensors, got ndarray and Tensor'),
        ((x, [0, 1]), TypeError, '^x and y must be torch tensors, got Tensor and list'),
        ((x.long(), y), ValueError, '^x must be a floating-point tensor in'),
        ((torch.rand(3), torch.tensor([0, 1, 2])), ValueError, r'^x must be a batch \(B, ...\), got shape \(3,\)'),
        ((x, torch.tensor([0, 1, 2])), ValueError, r'^y must have shape \(2,\) to match x, got \(3,\)'),
        ((x, torch.tensor([[0], [1]])), ValueError, r'^y must have shape \(2,\) to match x, got \(2, 1\)'),
        ((x, y.float()), ValueError, '^y must hold integer class labels'),
        ((x * float('nan'), y), ValueError, '^x contains NaN or infinite values'),
        ((x + 1, y), ValueError, r'^inputs must lie in \[0,1\] pixel space .*remove Normalize from the data pipeline'),
        ((x - 1, y), ValueError, r'^inputs must lie in \[0,1\] pixel space'),
        ((x, torch.tensor([0, -1])), ValueError, '^labels must be >= 0, got -1'),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            check_batch(*args)


def test_apgd_config_bounds():
    APGDConfig(n_iter=1), APGDConfig(n_restarts=1), APGDConfig(momentum=1.0, rho=1.0, l1_sparsity=1.0)
    APGDConfig(n_restarts=2, random_start=True)
    for kwargs, match in [(dict(n_iter=0), 'n_iter'), (dict(n_iter=1.5), 'n_iter'), (dict(n_iter=True), 'n_iter'),
                          (dict(n_restarts=0), 'n_restarts'), (dict(n_restarts=2.0), 'n_restarts'),
                          (dict(n_restarts=2), '^n_restarts > 1 needs random_start=True: without it every restart is identical'),
                          (dict(momentum=0), 'momentum'), (dict(rho=1.5), 'rho'), (dict(l1_sparsity=0), 'l1_sparsity'),
                          (dict(grad_scale=0), 'grad_scale')]:
        with pytest.raises(ValueError, match=match):
            APGDConfig(**kwargs)


def test_apgd_on_an_empty_batch_returns_empty_flags():
    x, y = torch.rand(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)
    x_adv, correct = apgd(TinyNet(), x, y, 'linf', 0.03)
    assert x_adv.shape == x.shape and correct.shape == (0,) and correct.dtype == torch.bool
    x_adv, correct, loss = apgd(TinyNet(), x, y, 'linf', 0.03, return_loss=True)
    assert loss.shape == (0,)


def test_apgd_kl_attack_measures_from_its_reference(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    with pytest.raises(ValueError, match="^loss 'kl' needs random_start=True: its gradient is zero at the clean point"):
        apgd(tiny_net, x, y, 'linf', 0.03, loss='kl')
    with pytest.raises(ValueError, match="^return_loss needs keep='loss': the loss is tracked at the highest-loss point"):
        apgd(tiny_net, x, y, 'linf', 0.03, return_loss=True, keep='misclassified')
    x_adv, _, loss = apgd(tiny_net, x, y, 'linf', 0.03, 3, loss='kl', random_start=True, seed=0, return_loss=True)
    with torch.no_grad():
        assert torch.allclose(loss, kl_loss(tiny_net(x_adv), y, tiny_net(x)), atol=1e-6)
        other = torch.randn(len(y), 10, generator=torch.Generator().manual_seed(1))
    x_o, _, loss_o = apgd(tiny_net, x, y, 'linf', 0.03, 3, loss='kl', random_start=True, seed=0, return_loss=True,
                          reference=other)
    with torch.no_grad():
        assert torch.allclose(loss_o, kl_loss(tiny_net(x_o), y, other), atol=1e-6)


def test_restarts_break_more_examples_and_return_real_adversarials(tiny_net, batch):
    x, _ = batch
    tiny_net.eval()
    with torch.no_grad():
        y = tiny_net(x).argmax(1)                               # every example correct clean
    opts = dict(random_start=True, keep='misclassified', seed=0)
    _, one = apgd(tiny_net, x, y, 'linf', 0.07, 1, **opts)
    x_adv, many = apgd(tiny_net, x, y, 'linf', 0.07, 1, n_restarts=20, **opts)
    assert not (many & ~one).any() and (one & ~many).any()     # restarts only ever break more
    with torch.no_grad():
        fooled = tiny_net(x_adv).argmax(1) != y
    assert torch.equal(fooled, ~many)                           # every broken example comes with its adversarial


def test_targeted_restarts_keep_their_targets(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    target = (y + 1) % 10
    x_adv, correct = apgd(tiny_net, x, y, 'l2', 0.5, 2, loss='ce-targeted', y_target=target, n_restarts=2,
                          random_start=True, keep='misclassified', seed=0)
    assert correct.shape == y.shape
    with torch.no_grad():
        assert not (correct & (tiny_net(x).argmax(1) != y)).any()   # misclassified clean: never robust


def test_apgd_flags_an_example_misclassified_at_any_iterate(batch):
    x, y = batch
    torch.manual_seed(0)
    _, correct = apgd(Flicker(y), x, y, 'linf', 0.03, 3)    # wrong at iterate 1 only
    assert not correct.any()
    _, _, loss = apgd(Flicker(y), x, y, 'linf', 0.03, 3, return_loss=True)
    assert (loss > 40).all()                                  # keep='loss': iterate 1's loss is the best


def test_more_apgd_edges(tiny_net, batch):
    from eatai.attacks.losses import get_loss
    x, y = batch
    tiny_net.eval()
    counting = CountingModel(tiny_net)
    apgd(counting, x, y, 'linf', 0.03)
    assert counting.n_forward == 10 + 1                                    # 10 steps by default
    with pytest.raises(TypeError, match=r"^unknown APGD option\(s\) \['bogus'\]; known:"):
        APGDConfig.from_options(bogus=1)
    with pytest.raises(ValueError, match='n_restarts'):
        APGDConfig(n_restarts=2.0, random_start=True)
    with pytest.raises(ValueError, match=r"^unknown attack loss 'cw': expected one of ce, dlr, dlr-targeted"):
        get_loss('cw')
    # every example broken by the first run: the restarts stop, and the flags say so
    _, correct = apgd(tiny_net, x, y, 'linf', 1.0, 2, n_restarts=3, random_start=True, keep='misclassified', seed=0)
    assert not correct.any()
    # restarts draw from the seeded generator, not from torch's global one
    torch.manual_seed(1)
    a = apgd(tiny_net, x, y, 'l2', 0.5, 2, n_restarts=3, random_start=True, seed=5)[0]
    torch.manual_seed(2)
    b = apgd(tiny_net, x, y, 'l2', 0.5, 2, n_restarts=3, random_start=True, seed=5)[0]
    assert torch.equal(a, b)


def test_restarts_with_keep_loss_never_turn_a_broken_example_robust(tiny_net, batch):
    x, _ = batch
    tiny_net.eval()
    with torch.no_grad():
        y = tiny_net(x).argmax(1)
    opts = dict(random_start=True, keep='loss', seed=0)
    _, one = apgd(tiny_net, x, y, 'linf', 0.07, 1, **opts)
    _, many = apgd(tiny_net, x, y, 'linf', 0.07, 1, n_restarts=20, **opts)
    assert not (many & ~one).any() and (one & ~many).any()


class LowLossFlicker(Flicker):
    """Misclassified, narrowly and with a low loss, at the attack's first iterate only (its second
    forward); correct everywhere else with a higher loss (logit 0.1 for the label, about 0 elsewhere).
    A small conv net adds a gradient whose direction changes between iterates, so the iterates
    differ. Records its inputs."""

    def __init__(self, y):
        super().__init__(y)
        torch.manual_seed(0)
        self.net = TinyNet().eval()

    def forward(self, x):
        self.calls += 1
        self.inputs = getattr(self, 'inputs', []) + [x.detach().clone()]
        bias = torch.zeros(len(x), 10)
        rows = torch.arange(len(x))
        bias[rows, self.y] = 5.0 if self.calls == 2 else 0.1
        if self.calls == 2:
            bias[rows, (self.y + 1) % 10] = 5.2
        return 0.01 * self.net(x) + bias


def test_keep_misclassified_returns_the_misclassified_iterate_not_the_highest_loss(batch):
    x, y = batch
    model = LowLossFlicker(y)
    x_adv, correct = apgd(model, x, y, 'linf', 0.03, 3, keep='misclassified')
    assert not correct.any()
    assert torch.equal(x_adv, model.inputs[1])                   # iterate 1, the only misclassified one
    assert not any(torch.equal(x_adv, other) for other in (model.inputs[0], *model.inputs[2:]))
    x_best, _ = apgd(LowLossFlicker(y), x, y, 'linf', 0.03, 3)    # keep='loss': another iterate
    assert not torch.equal(x_best, model.inputs[1])


def test_restarts_go_on_while_a_single_example_is_robust(batch):
    """keep='misclassified': each restart attacks the examples still robust, down to a single one."""
    x, _ = batch
    y = torch.tensor([0, 1, 2, 3, 4, 1])          # class 0 everywhere: only example 0 is (and stays) robust
    model, sizes = ConstantModel(), []
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    _, correct = apgd(model, x, y, 'linf', 0.03, 2, n_restarts=3, random_start=True, keep='misclassified', seed=0)
    assert correct.tolist() == [True] + [False] * 5
    assert sizes == [6] * 3 + [1] * 6              # first run: 3 forwards of 6; two restarts: 3 forwards of 1


def test_every_iterate_but_the_last_gets_a_gradient(tiny_net, batch):
    """n_iter + 1 forwards, n_iter input gradients: none at the final iterate, which takes no step."""
    x, y = batch
    needs_grad = []
    tiny_net.eval().register_forward_pre_hook(lambda m, args: needs_grad.append(args[0].requires_grad))
    apgd(tiny_net, x, y, 'l2', 0.5, 5)
    assert needs_grad == [True] * 5 + [False]


@pytest.mark.parametrize('options', [{}, {'random_start': True, 'seed': 1, 'keep': 'misclassified', 'n_restarts': 2,
                                          'l1_sparsity': 0.2}])
def test_l1_attack_too_narrow_for_its_iterates_runs_again_and_gives_the_exact_result(tiny_net, batch, monkeypatch,
                                                                                      options):
    """APGD-l1 computes on a top-k of a width fixed in advance (no host sync in its loop); where an
    example needed more, the attack runs again wider, from the same random state, and the next call
    starts at the width that sufficed. The result is the one computed on every coordinate."""
    apgd_module = importlib.import_module('eatai.attacks.apgd')
    from eatai.attacks import balls
    x, y = batch                                                   # d = 768
    monkeypatch.setattr(balls, '_WIDER', {})
    monkeypatch.setattr(apgd_module, 'compact_width', lambda d, s, eps: 10 ** 6)
    model = CountingModel(tiny_net.eval())
    exact = apgd(model, x, y, 'l1', 9.0, n_iter=6, **options)       # every coordinate: one run
    once = model.n_forward
    monkeypatch.setattr(apgd_module, 'compact_width', lambda d, s, eps: 8)
    model.n_forward = 0
    narrow = apgd(model, x, y, 'l1', 9.0, n_iter=6, **options)
    assert torch.equal(narrow[0], exact[0]) and torch.equal(narrow[1], exact[1])
    (key, wider), = balls._WIDER.items()
    tries = (wider // 8).bit_length()                              # 8, 16, ..., wider
    assert key == (9.0, 8) and wider >= 16 and model.n_forward == once * tries
    model.n_forward = 0
    assert torch.equal(apgd(model, x, y, 'l1', 9.0, n_iter=6, **options)[0], exact[0])
    assert model.n_forward == once


def test_targeted_l1_attack_too_narrow_runs_again_with_its_targets(tiny_net, batch, monkeypatch):
    apgd_module = importlib.import_module('eatai.attacks.apgd')
    from eatai.attacks import apgd_targeted, balls
    x, y = batch
    monkeypatch.setattr(balls, '_WIDER', {})
    monkeypatch.setattr(apgd_module, 'compact_width', lambda d, s, eps: 10 ** 6)
    exact = apgd_targeted(tiny_net, x, y, 'l1', 9.0, n_iter=5, n_target_classes=2, seed=0)
    monkeypatch.setattr(apgd_module, 'compact_width', lambda d, s, eps: 8)
    narrow = apgd_targeted(tiny_net, x, y, 'l1', 9.0, n_iter=5, n_target_classes=2, seed=0)
    assert torch.equal(narrow[0], exact[0]) and torch.equal(narrow[1], exact[1])
    assert list(balls._WIDER) == [(9.0, 8)] and balls._WIDER[(9.0, 8)] >= 16


def test_apgd_reads_from_the_device_once_per_call(tiny_net, batch):
    """The batch's checks in one read, the labels' included (the first forward's check reuses it, in
    every run); restarts and the loop add none; a DLR loss one more, its zero-gradient count, which a
    cross-entropy does not take. l-inf: nothing compacted, no width to check."""
    x, y = batch
    tiny_net.eval()
    for options, kinds in [({}, {'tolist': 1}), ({'n_restarts': 2, 'random_start': True, 'seed': 0}, {'tolist': 1}),
                           ({'loss': 'dlr'}, {'tolist': 1, '__int__': 1})]:
        with count_host_syncs() as syncs:
            apgd(tiny_net, x, y, 'linf', 0.03, 2, **options)
        assert syncs.by_kind() == kinds, options


def saturated(n=4, size=4):
    """A linear model whose logit for class 0, every label, is 30 above the others: its float32
    cross-entropy is exactly 0 near x while the input gradient (1e-18 to 1e-15) is not, so attacks move
    through points of equal loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 10)).eval()
    with torch.no_grad():
        model[1].weight.mul_(0.01)
        model[1].bias.zero_()[0] = 30.0
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(n, dtype=torch.long)
    x_req = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(ce_loss(model(x_req), y).sum(), x_req)
    assert (ce_loss(model(x), y) == 0).all() and (grad != 0).all()
    return model, x, y


@pytest.mark.parametrize('norm, eps', [('linf', 0.03), ('l2', 0.3)])
def test_the_highest_loss_iterate_is_the_first_of_equal_ones(norm, eps):
    """keep='loss': a later iterate replaces the best only with a strictly higher loss (AutoAttack's
    rule), in a run and across restarts; at a saturated loss the attack returns its start."""
    model, x, y = saturated()
    x_adv, correct = apgd(model, x, y, norm, eps, 4)
    assert correct.all() and torch.equal(x_adv, x)
    one = apgd(model, x, y, norm, eps, 4, random_start=True, seed=0)[0]
    assert not torch.equal(one, x)
    assert torch.equal(apgd(model, x, y, norm, eps, 4, random_start=True, seed=0, n_restarts=3)[0], one)
