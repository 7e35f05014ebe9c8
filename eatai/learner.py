"""`robust_learner`: a fastai Learner over a model that takes [0,1] inputs and normalises inside; its
evaluation methods `robust_eval`, `robustness_curves` and `show_adversarial`."""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam
from fastai.torch_core import get_model
from fastcore.basics import patch
from torch import nn

from . import finetune  # noqa: F401  registers fit_adversarial, eat_finetune, transfer_finetune
from ._utils.dist import is_main_process
from ._utils.io import atomic_torch_save
from .attacks import check_model_outputs
from .callbacks import AdaptiveProgress, AdversarialTraining
from .data import check_dls
from .data.loaders import first_batch, first_items
from .evaluation import (CORRUPTIONS, EvalBudget, RobustnessCurves, RobustResult, adversarial_examples, check_n,
                         evaluate_robustness, parse_threats, robustness_curves, unforeseen_threats)
from .models import Normalized, load_model, load_weights
from .models.checkpoint import uncompiled_keys
from .models.zoo import is_zoo_id
from .threats import NORMS, ThreatModel, default_threats

__all__ = ['RobustLearner', 'robust_learner', 'paper_sgd', 'transformer_adamw', 'default_opt_func']


def paper_sgd(mom: float = 0.9, wd: float = 5e-4):
    """The paper's optimiser (App. A): SGD, momentum 0.9, weight decay 5e-4 added to the
    gradient as in torch.optim.SGD (not fastai's default decoupled decay)."""
    return partial(SGD, mom=mom, wd=wd, decouple_wd=False)


def transformer_adamw(wd: float = 0.05, betas=(0.9, 0.999)):
    """AdamW (decoupled weight decay 0.05) for vision transformers, as DeiT, XCiT and Debenedetti
    et al.'s robust XCiTs are trained; the paper's SGD recipe was tuned for ResNets."""
    return partial(Adam, mom=betas[0], sqr_mom=betas[1], wd=wd, decouple_wd=True)


def _is_transformer(model: nn.Module) -> bool:
    """A ViT-family model: timm's transformers embed patches (`patch_embed`) and have no BatchNorm head."""
    return any(hasattr(m, 'patch_embed') and hasattr(m, 'blocks') for m in model.modules())


def default_opt_func(model: nn.Module):
    """The optimiser `robust_learner` picks: `transformer_adamw()` for ViT-family models, else `paper_sgd()`."""
    return transformer_adamw() if _is_transformer(model) else paper_sgd()


def _compiled_keys(model: nn.Module, state: dict) -> dict:
    """Clean keys as `model` names them, '_orig_mod.' included where it is (or holds) a `torch.compile` wrapper."""
    names = {k: n for n, k in zip(model.state_dict(), uncompiled_keys(model.state_dict()))}
    return {names.get(k, k): v for k, v in uncompiled_keys(state).items()}


class RobustLearner(Learner):
    """A Learner whose `save`/`load` also keep the adversarial-training state (strategy
    statistics, attack settings, per-epoch history), written atomically."""

    def _adversary(self) -> AdversarialTraining | None:
        return next((cb for cb in self.cbs if isinstance(cb, AdversarialTraining)), None)

    def save(self, file, with_opt: bool = True, pickle_protocol: int = 2) -> Path:
        path = self.path / self.model_dir / f'{file}.pth' if not Path(str(file)).suffix else Path(file)
        if not is_main_process():   # in a DDP run only rank 0 writes, as fastai's own save
            return path
        state = {'model': uncompiled_keys(get_model(self.model).state_dict())}
        if with_opt and self.opt is not None:
            state['opt'] = self.opt.state_dict()
        adversary = self._adversary()
        if adversary is not None:
            state['eatai'] = adversary.state_dict()
        return atomic_torch_save(state, path)

    def load(self, file, device=None, with_opt: bool = True, strict: bool = True) -> 'RobustLearner':
        path = self.path / self.model_dir / f'{file}.pth' if not Path(str(file)).suffix else Path(file)
        device = device if device is not None else self.dls.device
        state = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(state, dict) or 'model' not in state:   # a bare state dict
            state = {'model': state}
        model = get_model(self.model)
        model.load_state_dict(_compiled_keys(model, state['model']), strict=strict)
        if with_opt and 'opt' in state:
            if self.opt is None:
                self.create_opt()
            self.opt.load_state_dict(state['opt'])
        if 'eatai' in state:
            adversary = self._adversary()
            if adversary is None:
                adversary = AdversarialTraining(state['eatai']['strategy'])
                self.add_cb(adversary)
            adversary.load_state_dict(state['eatai'])
        return self

    @contextmanager
    def no_bar(self):
        """fastai's `no_bar` that puts back the learner's own progress callback (fastai's puts back a new
        `ProgressCallback`, which would write carriage returns into log files again)."""
        progress = getattr(self, 'progress', None)
        if progress is not None:
            self.remove_cb(progress)
        try:
            yield self
        finally:
            if progress is not None:
                self.add_cb(progress)


def _use_adaptive_progress(learn: Learner) -> None:
    """Swap fastai's ProgressCallback for `AdaptiveProgress`: bars in a terminal, lines in a log file."""
    progress = getattr(learn, 'progress', None)
    if progress is not None and type(progress) is ProgressCallback:
        learn.remove_cb(progress)
        learn.add_cb(AdaptiveProgress())


_LEARNER_KWARGS = set(inspect.signature(Learner.__init__).parameters) - {'self', 'dls', 'model'}


def _as_model(arch, n_classes: int, mean, std, weights, model_kwargs: dict) -> nn.Module:
    if isinstance(arch, nn.Module):
        if (mean is None) != (std is None):   # a named arch takes the missing one from its config
            raise ValueError(f"mean and std go together (the normalisation in front of the model): give both or "
                             f"neither, got mean={mean!r}, std={std!r}")
        if model_kwargs:
            raise TypeError(f"robust_learner got {sorted(model_kwargs)}, which are neither Learner arguments nor "
                            "used for a model given as an nn.Module")
        if weights is not None:
            load_weights(arch, weights)
        return arch if mean is None and std is None else Normalized(arch, mean, std)
    if isinstance(arch, (str, Path)):
        return load_model(arch, weights=weights, num_classes=n_classes, mean=mean, std=std, **model_kwargs)
    raise TypeError(f"arch must be an nn.Module, a timm model name, a RobustBench id or a checkpoint path, "
                    f"got {type(arch).__name__}")


def robust_learner(dls, arch, mean=None, std=None, weights=None, dataset: str = 'cifar10', opt_func=None,
                   metrics=accuracy, loss_func=None, check_data: bool = True, compile=False,
                   **kwargs) -> RobustLearner:
    """A Learner for adversarial training and robust evaluation in [0,1] pixel space.

    arch: an `nn.Module` taken as it is (it must accept [0,1] inputs, as RobustBench models
    do; `mean`/`std` put a normalisation layer in front of it), a timm model name (built with
    `dls.c` classes, normalised with `mean`/`std` or its config's), a RobustBench id, or the
    path of an eatai checkpoint. weights: a state-dict file to load into it (`load_weights`
    accepts the usual wrappers and prefixes). Defaults follow the paper: SGD, momentum 0.9,
    weight decay 5e-4.
    dataset: whose radii the training and evaluation defaults use ('cifar10', 'imagenet').
    DataLoaders that normalise or yield data outside [0,1] are refused, and a model that returns
    probabilities or is random in eval mode is warned about (`check_data=False` skips both).
    kwargs: fastai Learner arguments (`cbs`, `path`, ...); any other keyword goes to the model's
    factory, e.g. timm's `img_size=32, patch_size=4`, or a zoo id's `threat_model`.
    opt_func: default `paper_sgd()`, or `transformer_adamw()` for ViT-family models.
    Progress is shown by `AdaptiveProgress`: fastai's bars in a terminal or notebook, one line per
    epoch when standard output is a file or a pipe.
    compile: True, or a dict of `torch.compile` options (e.g. `{'mode': 'max-autotune'}`), compiles the
    model in place (`nn.Module.compile`): training, attack and evaluation passes run compiled while the
    module, its train/eval flags and its state-dict keys stay as they are, so checkpoints load either way.
    The attacks' own per-step bookkeeping stays eager (bench/compile.py says where it breaks the graph).
    """
    if compile is not False and compile is not True and not isinstance(compile, dict):
        raise TypeError(f"compile must be True, False or a dict of torch.compile options, got {compile!r}")
    if check_data:
        check_dls(dls)
    default_threats(dataset)  # validates the name
    n_classes = getattr(dls, 'c', None)
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _LEARNER_KWARGS}
    learner_kwargs = {k: v for k, v in kwargs.items() if k in _LEARNER_KWARGS}
    if isinstance(arch, str) and is_zoo_id(arch):   # RobustBench reuses ids across datasets
        model_kwargs.setdefault('dataset', dataset)
    model = _as_model(arch, n_classes, mean, std, weights, model_kwargs)
    learn = RobustLearner(dls, model, loss_func=loss_func or CrossEntropyLossFlat(),
                          opt_func=opt_func or default_opt_func(model), metrics=metrics, **learner_kwargs)
    if check_data:   # probabilities instead of logits, randomness in eval mode: warnings
        xb = first_batch(dls.valid)[0][:32].as_subclass(torch.Tensor)
        check_model_outputs(model.to(xb.device), xb)
    if compile is not False:   # after the checks: they run eagerly; compilation waits for the first real batch
        model.compile(**({} if compile is True else compile))
    learn.threat_dataset = dataset
    # for export_robust's recipe: a file by its name, a timm name or zoo id as given
    learn.start_model = None if isinstance(arch, nn.Module) else Path(arch).name if Path(arch).exists() else str(arch)
    _use_adaptive_progress(learn)
    return learn


@patch
def robust_eval(self: Learner, n: int = 1000, threats=None, budget='standard', dl=None, bs: int = 250,
                union_only: bool = False, seed: int = 0, progress: bool = True, name: str | None = None,
                resume_file=None, unforeseen: bool = False) -> RobustResult:
    """Clean, per-threat and union robust accuracy of the model on the first `n` validation
    items: budget 'standard' (APGD-CE then APGD-T, AutoAttack's settings), 'autoattack' (full
    AutoAttack) or 'quick' (see `evaluate_robustness`, which also explains `union_only`).
    unforeseen: also the threats outside training's l_p balls (`UNFORESEEN`: larger radii, StAdv,
    ReColorAdv, JPEG), outside the union, summarised as group 'unforeseen' (average and worst case).
    resume_file: keep finished chunks there, so an interrupted evaluation picks up where it stopped."""
    check_n(n)
    EvalBudget.from_name(budget)   # a typo fails before any data is read, and so does an unknown threat
    threats = _threats(self, threats)
    union = groups = None
    if unforeseen:
        union = [t for t in threats if t.in_union]
        extra = [t for t in _threats(self, unforeseen_threats(_dataset(self))) if str(t) not in map(str, threats)]
        threats, groups = threats + extra, {'unforeseen': [str(t) for t in extra]}
    x, y = first_items(dl if dl is not None else self.dls.valid, n)
    return evaluate_robustness(self.model, x, y, threats=threats, budget=budget, bs=bs, union_only=union_only,
                               seed=seed, device=_device(self), progress=progress, name=name, resume_file=resume_file,
                               union=union, groups=groups)


@patch
def corruption_eval(self: Learner, severities=(1, 2, 3, 4, 5), corruptions=None, n: int = 1000, dl=None,
                    bs: int = 250, progress: bool = True, name: str | None = None, resume_file=None) -> RobustResult:
    """Accuracy under common corruptions (CIFAR-10-C's 15 types by default, `EXTRA_CORRUPTIONS` on request)
    at `severities`, on the first `n` validation items; `result.mca` is their mean, `corruption_table(result)`
    shows them one by one. Corrupted images are cached on disk (see `eatai.evaluation.corruptions`)."""
    names = CORRUPTIONS if corruptions is None else [corruptions] if isinstance(corruptions, str) else corruptions
    threats = [f'corruption:{c}:{s}' for c in names for s in severities]
    return self.robust_eval(n=n, threats=threats, dl=dl, bs=bs, progress=progress, name=name, resume_file=resume_file)


@patch
def robustness_curves(self: Learner, n: int = 500, norms=NORMS, radii=None, dl=None, n_iter: int = 100,
                      bs: int = 250, seed: int = 0, name: str = 'model') -> RobustnessCurves:
    """Robustness curves of the model on the first `n` validation items (see `eatai.evaluation.curves`)."""
    x, y = first_items(dl if dl is not None else self.dls.valid, n)
    return robustness_curves(self.model, x, y, norms=norms, radii=radii, n_iter=n_iter, bs=bs, seed=seed,
                             device=_device(self), name=name, dataset=_dataset(self))


@patch
def show_adversarial(self: Learner, n: int = 8, threats=None, dl=None, n_iter: int = 20, seed: int = 0,
                     figsize=None):
    """Figure of `n` validation images, their adversarial versions per threat model and the amplified
    perturbations, titled with predictions (class names from the DataLoaders' vocab)."""
    x, y = first_items(dl if dl is not None else self.dls.valid, n)
    vocab = getattr(self.dls, 'vocab', None)
    classes = [str(v) for v in vocab] if vocab is not None and len(vocab) else None
    examples = adversarial_examples(self.model, x, y, _threats(self, threats), n_iter=n_iter, seed=seed,
                                    classes=classes, device=_device(self))
    return examples.plot(figsize=figsize)


@patch
def export_robust(self: Learner, folder, results=None, recipe: dict | None = None, overwrite: bool = False,
                  **kwargs) -> Path:
    """Write the model into `folder` for the Hugging Face Hub and timm (`eatai.models.hub.export_model`:
    model.safetensors, config.json, README.md with `results` and the training recipe: scheme, training
    threats, epochs, peak lr and start model as the learner knows them, updated by `recipe`). kwargs: arch,
    arch_kwargs, name, license, tags. Upload with `huggingface_hub.upload_folder`."""
    from .models.hub import export_model
    adversary = next((cb for cb in self.cbs if isinstance(cb, AdversarialTraining)), None)
    known = {'start_model': getattr(self, 'start_model', None)}
    if adversary is not None:
        known.update(scheme=adversary.strategy.name, epochs=len(adversary.history) or None,
                     training_threats=[str(ThreatModel(n, adversary.settings.eps[n])) for n in adversary.strategy.norms
                                       if n in adversary.settings.eps],
                     loss=type(adversary.loss).__name__ if adversary.loss is not None else None)
    lrs = getattr(getattr(self, 'recorder', None), 'lrs', None)
    known['lr'] = float(f'{max(lrs):.4g}') if lrs else None   # the peak of the last fit's schedule
    vocab = getattr(self.dls, 'vocab', None)
    return export_model(self.model, folder, results, {k: v for k, v in known.items() if v is not None} | (recipe or {}),
                        dataset=_dataset(self), input_size=tuple(first_batch(self.dls.valid)[0].shape[1:]),
                        label_names=list(vocab) if vocab is not None and len(vocab) else None, overwrite=overwrite,
                        **kwargs)


def _dataset(learn: Learner) -> str:
    return getattr(learn, 'threat_dataset', 'cifar10')


def _device(learn: Learner) -> torch.device:
    return next(learn.model.parameters()).device


def _threats(learn: Learner, threats) -> list:
    """The threats asked for, bare names with the learner's dataset's strengths; default the paper's three."""
    return parse_threats(default_threats(_dataset(learn)) if threats is None else threats, _dataset(learn))
