"""Checks every zoo entry against RobustBench's own architecture definitions, on the meta device
(shapes only, no memory): the parameter count of eatai's architecture equals RobustBench's, and a
state dict with RobustBench's layout (its model's keys and shapes, saved the way RobustBench's
checkpoints are) loads into eatai's model through the zoo's loading path (`load_weights`, strict).

RobustBench itself is not imported (its PyPI release fails at import); only its architecture
files are read, from an unpacked wheel or checkout: `pip download robustbench==1.1.1 --no-deps -d
/tmp/rb && cd /tmp/rb && python -m zipfile -e robustbench-1.1.1-py3-none-any.whl ex`, then

    python bench/zoo_check.py --robustbench /tmp/rb/ex/robustbench
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

from eatai.models.weights import load_weights
from eatai.models.zoo import ZOO, build_zoo_model
from eatai.models.zoo import _filtered


def import_architectures(root: Path):
    """RobustBench's architecture modules without running its package __init__ (which needs autoattack)."""
    for name, folder in (('robustbench', root), ('robustbench.model_zoo', root / 'model_zoo'),
                         ('robustbench.model_zoo.architectures', root / 'model_zoo' / 'architectures')):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    import importlib
    get = lambda m: importlib.import_module(f'robustbench.model_zoo.architectures.{m}')  # noqa: E731
    return get('wide_resnet'), get('dm_wide_resnet'), get('resnet'), get('xcit')


def robustbench_models(root: Path) -> dict:
    """key -> a factory of RobustBench's model for that zoo entry (as its model_zoo/*.py builds it)."""
    wrn, dm, resnet, xcit = import_architectures(root)
    import timm
    from torchvision.models import resnet50

    def dmw(depth, width):
        return lambda: dm.DMWideResNet(num_classes=10, depth=depth, width=width, activation_fn=dm.Swish,
                                       mean=dm.CIFAR10_MEAN, std=dm.CIFAR10_STD)
    rn50 = lambda: resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3])  # noqa: E731
    xc = lambda size: lambda: timm.create_model(f'debenedetti2022light_xcit_{size}_cifar10_linf')  # noqa: E731
    return {
        'cifar10/linf/Engstrom2019Robustness': rn50, 'cifar10/l2/Engstrom2019Robustness': rn50,
        'cifar10/l2/Augustin2020Adversarial': rn50,
        'cifar10/linf/Carmon2019Unlabeled': lambda: wrn.WideResNet(depth=28, widen_factor=10, sub_block1=True),
        'cifar10/linf/Gowal2020Uncovering_34_20': dmw(34, 20),
        'cifar10/linf/Gowal2020Uncovering_28_10_extra': dmw(28, 10),
        'cifar10/linf/Gowal2020Uncovering_70_16_extra': dmw(70, 16),
        'cifar10/l2/Gowal2020Uncovering_extra': dmw(70, 16),
        # the E-AT authors' PreAct RN-18 is RobustBench's PreActResNet with PreActBlockV2 and bn_before_fc
        'cifar10/l1/Croce2021Mind': lambda: resnet.PreActResNet(resnet.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True),
        'cifar10/linf/Debenedetti2022Light_XCiT-S12': xc('s12'),
        'cifar10/linf/Debenedetti2022Light_XCiT-M12': xc('m12'),
        'cifar10/linf/Debenedetti2022Light_XCiT-L12': xc('l12'),
        'imagenet/linf/Engstrom2019Robustness': resnet50, 'imagenet/l2/Engstrom2019Robustness': resnet50,
    }


def checkpoint_layout(key: str, state: dict) -> dict:
    """The keys as the published files hold them (RobustBench strips 'module.' / adds 'model.' itself)."""
    state = {k: v for k, v in state.items() if not k.startswith(('mu', 'sigma', 'normalize.'))}
    if key.endswith('XCiT-S12') or key.endswith('XCiT-M12') or key.endswith('XCiT-L12'):
        state = {k[len('model.'):]: v for k, v in state.items()}   # timm loads them before normalize_timm_model wraps
        return {'model': {k.replace('pos_embed.', 'pos_embeder.'): v for k, v in state.items()}}
    if key == 'cifar10/linf/Carmon2019Unlabeled':
        return {'state_dict': {f'module.{k}': v for k, v in state.items()}}
    if key == 'imagenet/l2/Engstrom2019Robustness':
        return {'model': {f'module.model.{k}': v for k, v in state.items()} | {'module.normalizer.new_mean': torch.empty(3, 1, 1, device='meta')}}
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robustbench', required=True, type=Path, help="the unpacked 'robustbench' package folder")
    args = parser.parse_args()
    factories = robustbench_models(args.robustbench)
    print(f"{'zoo key':<46}{'eatai params':>14}{'RobustBench':>14}  {'same':<5}{'state dict loads'}")
    failures = 0
    for key, entry in ZOO.items():
        ours = build_zoo_model(entry, device='meta')
        with torch.device('meta'):
            theirs = factories[key]()
        n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
        try:
            from eatai.models.weights import _strip_prefixes, _unwrap
            state = _strip_prefixes(_unwrap(checkpoint_layout(key, theirs.state_dict()), key))
            load_weights(ours, _filtered(entry, state, ours.model))
            loads = 'yes'
        except Exception as e:   # report, go on with the next entry
            loads, failures = f'NO: {str(e).splitlines()[0][:80]}', failures + 1
        failures += n_ours != n_theirs
        print(f"{key:<46}{n_ours:>14,}{n_theirs:>14,}  {str(n_ours == n_theirs):<5}{loads}", flush=True)
    print(f"{len(ZOO)} entries, {failures} failures")
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
