"""`robust_learner` and `RobustLearner` without training: the optimisers it picks, how it builds
the model from each kind of `arch`, what it refuses, its progress callback, and save/load edge cases."""
import pytest
import torch
from fastai.callback.progress import ProgressCallback
from fastai.losses import CrossEntropyLossFlat
from test_training import tiny_dls, tiny_learner
from test_zoo import cache, server, tiny_checkpoint, tiny_entry, zoo  # noqa: F401  fixtures
from torch import nn

from eatai.all import AdaptiveProgress, Normalized, arrays_dls, paper_sgd, robust_learner, set_adversary, transformer_adamw
from eatai.learner import default_opt_func
from eatai.models.cifar_cnn import CifarCNN
from eatai.models.zoo import NO_NORM, register_entry


def three_class_dls():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, 32, 32, generator=g), torch.arange(24) % 3
    return arrays_dls(x[:16], y[:16], x[16:], y[16:], bs=8, vocab=['a', 'b', 'c'])


def step_names(opt_func):
    opt = opt_func([nn.Parameter(torch.ones(2))], lr=0.1)
    return opt, [getattr(cb, '__name__', None) or cb.func.__name__ for cb in opt.cbs]


def test_paper_sgd_is_momentum_sgd_with_coupled_weight_decay():
    opt, steps = step_names(paper_sgd())
    assert opt.hypers[0]['mom'] == 0.9 and opt.hypers[0]['wd'] == 5e-4
    assert 'l2_reg' in steps and 'weight_decay' not in steps     # decay added to the gradient, as torch SGD


def test_transformer_adamw_is_adam_with_decoupled_weight_decay():
    opt, steps = step_names(transformer_adamw())
    h = opt.hypers[0]
    assert (h['mom'], h['sqr_mom'], h['wd']) == (0.9, 0.999, 0.05)
    assert 'weight_decay' in steps and 'l2_reg' not in steps and 'adam_step' in steps
    h = step_names(transformer_adamw(wd=0.1, betas=(0.8, 0.99)))[0].hypers[0]
    assert (h['mom'], h['sqr_mom'], h['wd']) == (0.8, 0.99, 0.1)


class PatchesAndBlocks(nn.Module):
    def __init__(self, blocks=True):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 4, 4, 4)
        if blocks:
            self.blocks = nn.Sequential(nn.Identity())


def test_default_optimiser_follows_the_architecture():
    assert 'adam_step' in step_names(default_opt_func(nn.Sequential(PatchesAndBlocks())))[1]
    assert 'l2_reg' in step_names(default_opt_func(PatchesAndBlocks(blocks=False)))[1]   # a patch stem alone is no ViT
    assert 'l2_reg' in step_names(default_opt_func(CifarCNN(width=4)))[1]


def test_a_module_arch_is_taken_as_it_is_or_normalised():
    dls = tiny_dls(n_train=16, bs=16)
    model = CifarCNN(width=4)
    assert robust_learner(dls, model).model is model
    wrapped = robust_learner(dls, model, mean=(0.5,) * 3, std=(0.25,) * 3).model
    assert isinstance(wrapped, Normalized) and wrapped.model is model
    assert torch.allclose(wrapped.mean.flatten(), torch.full((3,), 0.5))
    with pytest.raises(TypeError, match=r"^robust_learner got \['width'\], which are neither Learner arguments nor "
                                        "used for a model given as an nn.Module"):
        robust_learner(dls, model, width=8)
    with pytest.raises(TypeError, match='^arch must be an nn.Module, a timm model name, a RobustBench id or a '
                                        'checkpoint path, got int'):
        robust_learner(dls, 3)


def test_a_named_arch_gets_the_datas_classes_weights_and_normalisation(tmp_path):
    dls = three_class_dls()
    learn = robust_learner(dls, 'cifar_cnn', width=4, mean=(0.1,) * 3, std=(0.2,) * 3)
    assert learn.model(torch.rand(2, 3, 32, 32)).shape == (2, 3)                  # dls.c classes, not 10
    assert sum(p.numel() for p in learn.model.parameters()) < 10_000               # width=4 reached the model (width 32: 278,563)
    assert torch.allclose(learn.model.mean.flatten(), torch.full((3,), 0.1))
    assert torch.allclose(learn.model.std.flatten(), torch.full((3,), 0.2))
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in learn.model.model.state_dict().items()}
    torch.save(weights, tmp_path / 'w.pt')
    loaded = robust_learner(dls, 'cifar_cnn', width=4, weights=tmp_path / 'w.pt')
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.model.state_dict().items())


def test_learner_defaults_and_pass_through():
    dls = tiny_dls(n_train=16, bs=16)
    learn = robust_learner(dls, CifarCNN(width=4))
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    assert [m.name for m in learn.metrics] == ['accuracy']
    assert isinstance(learn.progress, AdaptiveProgress)
    assert not any(type(cb) is ProgressCallback for cb in learn.cbs)
    loss = nn.CrossEntropyLoss()
    other = robust_learner(dls, CifarCNN(width=4), loss_func=loss, metrics=[], path='elsewhere', dataset='imagenet')
    assert other.loss_func is loss and len(other.metrics) == 0 and str(other.path) == 'elsewhere'
    assert other.threat_dataset == 'imagenet'


def test_save_without_an_optimiser_and_paths(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16), path=tmp_path)
    assert learn.opt is None
    path = learn.save('plain')                                       # no optimiser yet: the model alone
    assert path == tmp_path / 'models' / 'plain.pth'
    assert set(torch.load(path, weights_only=False)) == {'model'}
    assert learn.save(tmp_path / 'given.pt') == tmp_path / 'given.pt'
    learn.create_opt()
    assert 'opt' not in torch.load(learn.save(tmp_path / 'noopt.pt', with_opt=False), weights_only=False)


def test_load_a_bare_state_dict_strictly_or_not(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    state = {k: v + 1 if v.is_floating_point() else v for k, v in learn.model.state_dict().items()}
    torch.save(state, tmp_path / 'bare.pt')
    learn.load(tmp_path / 'bare.pt')
    assert all(torch.equal(v, state[k]) for k, v in learn.model.state_dict().items())
    partial = dict(list(state.items())[:-1])
    torch.save(partial, tmp_path / 'partial.pt')
    with pytest.raises(RuntimeError, match='Missing key'):
        learn.load(tmp_path / 'partial.pt')
    learn.load(tmp_path / 'partial.pt', strict=False)


def test_load_adds_the_adversarial_callback_it_saved(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    set_adversary(learn, 'l1', n_iter=3)
    path = learn.save(tmp_path / 'adv.pth')
    fresh = tiny_learner(tiny_dls(n_train=16, bs=16))
    fresh.load(path)
    cb = fresh.adversarial_training
    assert cb.strategy.name == 'l1' and cb.settings.n_iter['l1'] == 3
    armed = tiny_learner(tiny_dls(n_train=16, bs=16))
    set_adversary(armed, 'eat')
    armed.load(path)                                                  # reuses the callback it has
    cbs = [c for c in armed.cbs if type(c).__name__ == 'AdversarialTraining']
    assert len(cbs) == 1 and cbs[0].strategy.name == 'l1'


def test_robust_eval_refuses_an_empty_dataloader():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    with pytest.raises(ValueError, match='^the DataLoader yielded no batches'):
        learn.robust_eval(n=4, dl=[], progress=False)


def test_plain_pytorch_dataloaders_and_mean_without_std():
    """fastai takes DataLoaders of plain PyTorch loaders (no `c`, no `one_batch`): so does robust_learner.
    A module given with a mean and no std is refused (a named arch takes the other from its config)."""
    from fastai.data.core import DataLoaders
    from torch.utils.data import DataLoader, TensorDataset
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(8, 3, 32, 32, generator=g), torch.arange(8))
    dls = DataLoaders(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))
    model = CifarCNN(width=4)
    assert robust_learner(dls, model).model is model
    with pytest.raises(ValueError, match=r"^mean and std go together \(the normalisation in front of the model\): "
                                         r"give both or neither, got mean=\(0\.5, 0\.5, 0\.5\), std=None"):
        robust_learner(dls, model, mean=(0.5,) * 3)


def test_a_zoo_id_shared_across_datasets_loads_the_learners_datasets_model(server, cache, zoo):
    """RobustBench reuses ids across datasets: robust_learner's `dataset` picks the entry."""
    folder, base = server
    weights = {name: tiny_checkpoint(folder, f'{name}.pt', seed=seed) for seed, name in enumerate(('cifar10', 'imagenet'))}
    for name in weights:
        register_entry(tiny_entry(f'{base}/{name}.pt', dataset=name, mean=NO_NORM[0], std=NO_NORM[1]))
    dls = tiny_dls(n_train=16, bs=16)
    for name, state in weights.items():
        learn = robust_learner(dls, 'Tiny2024Test', dataset=name, progress=False)
        assert torch.equal(learn.model.model.head.bias, state['head.bias']), name
        assert learn.model.zoo_entry.dataset == learn.threat_dataset == name
