"""What the training one-liners pass on to the attacks, observed on the real attacks: a recording
wrapper around the attack functions the adversarial-training callback calls, calling through."""
import pytest
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from test_training import tiny_dls
from test_training import tiny_learner as training_learner

import eatai.callbacks.adversarial as adversarial


def tiny_learner(dls=None, **kwargs):
    """test_training's tiny learner, on this module's smaller default data (32 training, 8 validation images)."""
    set_seed(0)   # before the DataLoaders: fastai's draw their shuffling RNG from the global state when made
    return training_learner(dls or tiny_dls(n_train=32, n_valid=8), **kwargs)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def attacks(monkeypatch):
    """Every training attack as (method, norm, eps, n_iter), recorded on its way to the real attack."""
    seen = []

    def recording(method, real):
        def attack(model, x, y, norm, eps, n_iter, **kwargs):
            seen.append((method, norm, eps, n_iter))
            return real(model, x, y, norm, eps, n_iter, **kwargs)
        return attack

    monkeypatch.setattr(adversarial, 'apgd', recording('apgd', adversarial.apgd))
    monkeypatch.setattr(adversarial, 'pgd', recording('pgd', adversarial.pgd))
    return seen


class LRs(Callback):
    order = 70   # after ParamScheduler set the batch's lr

    def before_fit(self):
        self.lrs = []

    def before_step(self):
        self.lrs.append(self.opt.hypers[-1]['lr'])


def test_custom_eps_and_per_norm_steps_reach_the_attacks(attacks):
    learn = tiny_learner(tiny_dls(n_train=64, bs=16))
    learn.eat_finetune(epochs=1, lr=0.01, eps={'linf': 2 / 255, 'l1': 5}, n_iter={'linf': 2, 'l1': 3})
    assert len(attacks) == 4
    assert {(m, n) for m, n, _, _ in attacks} == {('apgd', 'linf'), ('apgd', 'l1')}   # E-AT: both norms drawn
    for _, norm, eps, n_iter in attacks:
        assert (eps, n_iter) == ((2 / 255, 2) if norm == 'linf' else (5, 3))


def test_imagenet_radii_for_training_and_evaluation(attacks):
    learn = tiny_learner(dataset='imagenet')
    with pytest.warns(UserWarning, match='nest|inside'):   # 3072 * 4/255 < 255: the balls nest on 32x32 images
        learn.eat_finetune(epochs=1, lr=0.01, n_iter=1)
    assert {(norm, eps) for _, norm, eps, _ in attacks} <= {('linf', 4 / 255), ('l1', 255.0)} and attacks
    res = learn.robust_eval(n=2, budget='quick', progress=False)
    assert res.threats == ['linf:4/255', 'l2:2', 'l1:255']


def test_transfer_finetune_trains_in_the_norm_it_names(attacks):
    learn = tiny_learner()
    learn.transfer_finetune('l1', epochs=1, lr=0.01, n_iter=1)
    assert [(norm, eps) for _, norm, eps, _ in attacks] == [('l1', 12.0), ('l1', 12.0)]
    history = learn.adversarial_training.history
    assert set(k for k in history[0] if k.startswith('rerr_')) == {'rerr_l1'}
    attacks.clear()
    learn.transfer_finetune('Linf', epochs=1, lr=0.01, n_iter=1)
    assert [norm for _, norm, _, _ in attacks] == ['linf', 'linf']


@pytest.mark.parametrize('scheme, method, expected', [
    ('linf', None, 'apgd'), ('linf', 'pgd', 'pgd'),        # single norms: APGD unless told
    ('avg', None, 'pgd'), ('avg', 'apgd', 'apgd'),         # baselines: PGD (paper) unless told
])
def test_method_chooses_the_attack(attacks, scheme, method, expected):
    learn = tiny_learner(tiny_dls(n_train=16))
    learn.fit_adversarial(1, lr=0.01, scheme=scheme, n_iter=1, method=method)
    assert attacks and {m for m, _, _, _ in attacks} == {expected}


def test_decay_at_moves_the_lr_drop():
    learn = tiny_learner(tiny_dls(n_train=16))
    rec = LRs()
    learn.fit_adversarial(4, lr=0.04, scheme='linf', n_iter=1, decay_at=0.5, cbs=[rec])
    assert rec.lrs == pytest.approx([0.04, 0.04, 0.004, 0.004])


def _weights(learn):
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_results_depend_on_what_is_trained():
    """Same start and seed: identical weights; another norm or seed: other weights; all moved."""
    start = _weights(tiny_learner())

    def finetune(seed, how):
        learn = tiny_learner()
        set_seed(seed)
        how(learn)
        return _weights(learn)

    eat = lambda l: l.eat_finetune(epochs=1, lr=0.05, n_iter=2)
    a, b = finetune(1, eat), finetune(1, eat)
    assert _same(a, b) and not _same(a, start)
    assert not _same(a, finetune(2, eat))
    l1 = finetune(1, lambda l: l.transfer_finetune('l1', epochs=1, lr=0.05, n_iter=2))
    linf = finetune(1, lambda l: l.transfer_finetune('linf', epochs=1, lr=0.05, n_iter=2))
    assert not _same(l1, linf)


def test_save_load_round_trips_the_optimiser_state(tmp_path):
    learn = tiny_learner(path=tmp_path)
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=1)
    learn.save('ft')
    fresh = tiny_learner(path=tmp_path)
    fresh.load('ft')
    saved, loaded = learn.opt.state_dict(), fresh.opt.state_dict()
    moms = [s['grad_avg'] for s in saved['state'] if 'grad_avg' in s]
    assert moms and any(m.abs().sum() > 0 for m in moms)             # momentum buffers exist and are not zero
    assert len(saved['state']) == len(loaded['state'])
    for s, t in zip(saved['state'], loaded['state']):
        assert s.keys() == t.keys()
        for k in s:
            assert torch.equal(torch.as_tensor(s[k]), torch.as_tensor(t[k]))
    assert saved['hypers'] == loaded['hypers']
    without = tiny_learner(path=tmp_path)
    without.load('ft', with_opt=False)
    assert without.opt is None or not any('grad_avg' in s for s in without.opt.state_dict()['state'])
