"""CIFAR architectures: timm registration, RobustBench state-dict layouts, parameter counts, activations.

The big WideResNets are built on the meta device (shapes only, no memory, no compute). Numerics are
checked on small instances of the same classes.
"""
import pytest
import timm
import torch
import torch.nn.functional as F

from eatai.models import CIFAR10_MEAN, CIFAR10_STD, Normalized, build_model, load_weights
from eatai.models.preact_resnet import PreActResNet
from eatai.models.wide_resnet import DMBlock, DMWideResNet, WideBasicBlock, WideResNet

# published parameter counts (10 classes)
PUBLISHED = {'preact_resnet18': 11.17e6, 'preact_resnet18_softplus': 11.17e6, 'resnet50_cifar': 23.5e6,
             'wrn_28_10': 36.5e6, 'wrn_34_20': 184.5e6, 'wrn_70_16': 267e6,
             'wrn_28_10_dm': 36.5e6, 'wrn_34_20_dm': 184.5e6, 'wrn_70_16_dm': 267e6}
NAMES = list(PUBLISHED)
SMALL = ['preact_resnet18', 'preact_resnet18_softplus', 'resnet50_cifar']


def meta_model(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, num_classes=10, **kwargs)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', NAMES)
def test_registered_with_timm_under_our_module(name):
    assert timm.is_model(name)
    assert type(meta_model(name)).__module__.startswith('eatai.models.')


@pytest.mark.parametrize('name', NAMES)
def test_logits_shape_on_meta(name):
    model = meta_model(name).eval()
    assert model(torch.empty(2, 3, 32, 32, device='meta')).shape == (2, 10)


@pytest.mark.parametrize('name', SMALL)
def test_small_models_give_finite_logits(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', NAMES)
def test_parameter_count_matches_published(name):
    assert n_params(meta_model(name)) == pytest.approx(PUBLISHED[name], rel=0.01)


@pytest.mark.parametrize('name', NAMES)
def test_num_classes_and_pretrained_cfg(name):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=100)
    assert model.num_classes == 100
    cfg = model.pretrained_cfg
    assert cfg['num_classes'] == 100 and cfg['input_size'] == (3, 32, 32)
    assert tuple(cfg['mean']) == CIFAR10_MEAN and tuple(cfg['std']) == CIFAR10_STD


# ---- RobustBench key layouts ----------------------------------------------------------------------------------

PREACT_KEYS = {'conv1.weight', 'layer1.0.bn1.weight', 'layer1.0.bn1.running_var', 'layer1.0.conv1.weight',
               'layer1.1.bn2.bias', 'layer1.1.conv2.weight', 'layer2.0.shortcut.0.weight', 'layer4.1.conv2.weight',
               'linear.weight', 'linear.bias'}
WRN_KEYS = {'conv1.weight', 'block1.layer.0.bn1.weight', 'block1.layer.0.conv1.weight', 'block1.layer.0.bn2.running_mean',
            'block1.layer.0.conv2.weight', 'block1.layer.0.convShortcut.weight', 'block2.layer.0.convShortcut.weight',
            'block3.layer.3.conv2.weight', 'bn1.weight', 'bn1.num_batches_tracked', 'fc.weight', 'fc.bias'}
DM_KEYS = {'mean', 'std', 'init_conv.weight', 'layer.0.block.0.batchnorm_0.weight', 'layer.0.block.0.conv_0.weight',
           'layer.0.block.0.batchnorm_1.running_var', 'layer.0.block.0.conv_1.weight', 'layer.0.block.0.shortcut.weight',
           'layer.2.block.3.conv_1.weight', 'batchnorm.weight', 'logits.weight', 'logits.bias'}
RESNET_KEYS = {'conv1.weight', 'bn1.weight', 'layer1.0.conv1.weight', 'layer1.0.bn3.weight', 'layer1.0.shortcut.0.weight',
               'layer1.0.shortcut.1.running_mean', 'layer3.5.conv3.weight', 'layer4.2.bn3.bias', 'linear.weight'}


def keys(name, **kwargs):
    return set(meta_model(name, **kwargs).state_dict())


def test_preact_keys_follow_robustbench():
    v2, v1 = keys('preact_resnet18'), keys('preact_resnet18', layout='v1')
    assert PREACT_KEYS <= v1 and PREACT_KEYS <= v2
    assert v2 - v1 == {'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var', 'bn.num_batches_tracked'}
    assert not any('shortcut' in k for k in v1 if k.startswith(('layer1.', 'layer2.1', 'layer3.1', 'layer4.1')))
    assert len(v1) == 102 and len(v2) == 107  # RobustBench's PreActResNet18() and PreActBlockV2 + bn_before_fc


def test_wrn_keys_follow_robustbench():
    k = keys('wrn_28_10')
    assert WRN_KEYS <= k and len(k) == 155
    assert 'block1.layer.1.convShortcut.weight' not in k and not any(s.startswith('sub_block1') for s in k)
    with_sub = keys('wrn_28_10', sub_block1=True)  # Carmon2019Unlabeled and others carry an unused copy of block1
    assert {s.replace('sub_block1.', 'block1.') for s in with_sub - k} == {s for s in k if s.startswith('block1.')}
    assert 'block3.layer.10.conv2.weight' in keys('wrn_70_16') and 'block3.layer.4.conv2.weight' in keys('wrn_34_20')


def test_dm_keys_follow_deepmind():
    k = keys('wrn_70_16_dm')
    assert DM_KEYS <= k and 'layer.2.block.10.conv_1.weight' in k and 'layer.0.block.1.shortcut.weight' not in k
    assert DM_KEYS <= keys('wrn_28_10_dm') and 'layer.1.block.4.conv_0.weight' in keys('wrn_34_20_dm')
    model = meta_model('wrn_28_10_dm')
    assert model.mean.shape == (3, 1, 1) and model.std.shape == (3, 1, 1)


def test_resnet50_keys_follow_robustbench():
    k = keys('resnet50_cifar')
    assert RESNET_KEYS <= k and 'layer1.1.shortcut.0.weight' not in k
    stem = meta_model('resnet50_cifar').conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)


@pytest.mark.parametrize('name,kwargs', [('preact_resnet18', {}), ('preact_resnet18', {'layout': 'v1'}),
                                         ('resnet50_cifar', {})])
def test_state_dict_with_module_prefix_loads_strictly(name, kwargs):
    torch.manual_seed(0)
    src, dst = timm.create_model(name, num_classes=10, **kwargs), timm.create_model(name, num_classes=10, **kwargs)
    saved = {f'module.{k}': v for k, v in src.state_dict().items()}  # as DataParallel checkpoints are stored
    load_weights(dst, saved, strict=True)   # eatai's loader drops the prefix, not the test
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))


# ---- activations ---------------------------------------------------------------------------------------------

def test_softplus_and_relu_variants_differ():
    torch.manual_seed(0)
    relu, soft = timm.create_model('preact_resnet18', num_classes=10), timm.create_model('preact_resnet18_softplus', num_classes=10)
    assert set(relu.state_dict()) == set(soft.state_dict())  # same checkpoints load into both
    soft.load_state_dict(relu.state_dict())
    acts = lambda m: {type(a).__name__ for a in m.modules() if isinstance(a, (torch.nn.ReLU, torch.nn.Softplus))}
    assert acts(relu) == {'ReLU'} and acts(soft) == {'Softplus'}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(relu.eval()(x), soft.eval()(x))


def test_softplus_name_is_the_activation_option():
    torch.manual_seed(0)
    named, option = timm.create_model('preact_resnet18_softplus'), timm.create_model('preact_resnet18', activation='softplus')
    option.load_state_dict(named.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(named.eval()(x), option.eval()(x))
    assert named.layout == option.layout == 'v2'


def test_dm_models_default_to_swish():
    assert meta_model('wrn_70_16_dm').activation == 'swish' and meta_model('wrn_70_16').activation == 'relu'
    assert any(isinstance(m, torch.nn.SiLU) for m in meta_model('wrn_28_10_dm').modules())
    assert not any(isinstance(m, torch.nn.SiLU) for m in meta_model('wrn_28_10_dm', activation='relu').modules())


# ---- forward semantics on small instances ----------------------------------------------------------------------

@pytest.mark.parametrize('cls,kwargs', [(WideResNet, {'widen_factor': 2}), (DMWideResNet, {'width': 2}),
                                        (WideResNet, {'widen_factor': 1, 'sub_block1': True})])
def test_small_wide_resnets_forward(cls, kwargs):
    torch.manual_seed(0)
    model = cls(depth=10, num_classes=10, **kwargs).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()


def _dm_copy_of(block: WideBasicBlock, stride: int) -> DMBlock:
    """A DMBlock with the same weights as `block`, through the layouts' name map."""
    names = {'bn1': 'batchnorm_0', 'conv1': 'conv_0', 'bn2': 'batchnorm_1', 'conv2': 'conv_1', 'convShortcut': 'shortcut'}
    dm = DMBlock(block.conv1.in_channels, block.conv1.out_channels, stride, 'relu')
    dm.load_state_dict({names[k.split('.')[0]] + k[k.index('.'):]: v for k, v in block.state_dict().items()})
    return dm.eval()


def test_dm_and_trades_blocks_agree_at_stride_1():
    torch.manual_seed(0)
    block, x = WideBasicBlock(4, 8, 1).eval(), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), _dm_copy_of(block, 1)(x), atol=1e-6)


def test_dm_stride_2_pads_right_and_bottom_only():
    torch.manual_seed(0)
    block, x = WideBasicBlock(4, 8, 2).eval(), torch.randn(2, 4, 8, 8)
    dm = _dm_copy_of(block, 2)
    with torch.no_grad():
        h = dm.relu_0(dm.batchnorm_0(x))
        same = F.conv2d(F.pad(h, (0, 1, 0, 1)), dm.conv_0.weight, stride=2)  # TensorFlow 'SAME' for stride 2
        expected = dm.shortcut(h) + dm.conv_1(dm.relu_1(dm.batchnorm_1(same)))
        assert torch.allclose(dm(x), expected, atol=1e-6)
        assert not torch.allclose(dm(x), block(x), atol=1e-3)  # symmetric padding would be a different network


def test_dm_mean_std_buffers_are_not_applied():
    torch.manual_seed(0)
    model, x = DMWideResNet(depth=10, width=1).eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.mean.fill_(100.)
        assert torch.equal(model(x), before)


def test_dm_checkpoint_with_other_normalisation_is_refused():
    src = DMWideResNet(depth=10, width=1, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.raises(RuntimeError, match='mean=...'):
        DMWideResNet(depth=10, width=1).load_state_dict(src.state_dict())
    same = DMWideResNet(depth=10, width=1, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    same.load_state_dict(src.state_dict())
    assert same.pretrained_cfg['mean'] == (0.5, 0.5, 0.5)


# ---- options, errors, eatai wrapper ------------------------------------------------------------------------------

@pytest.mark.parametrize('name,kwargs,error', [
    ('preact_resnet18', {'layout': 'v3'}, ValueError), ('preact_resnet18', {'activation': 'gelu'}, ValueError),
    ('wrn_28_10', {'width': 3}, TypeError), ('wrn_28_10_dm', {'sub_block1': True}, TypeError),
    ('resnet50_cifar', {'activation': 'softplus'}, TypeError), ('wrn_28_10', {'pretrained': True}, ValueError)])
def test_bad_options_are_refused(name, kwargs, error):
    with pytest.raises(error):
        meta_model(name, **kwargs)


def test_depth_must_be_6n_plus_4():
    with pytest.raises(ValueError, match='6n\\+4'):
        WideResNet(depth=30, widen_factor=1)


def test_build_model_wraps_in_normalized_for_unit_inputs():
    torch.manual_seed(0)
    model = build_model('preact_resnet18_softplus', 10).eval()
    assert isinstance(model, Normalized) and isinstance(model.model, PreActResNet)
    assert torch.allclose(model.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.allclose(model.std.flatten(), torch.tensor(CIFAR10_STD))
    x = torch.rand(2, 3, 32, 32)  # [0,1] pixel space
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.allclose(out, model.model((x - model.mean) / model.std))


def test_import_eatai_registers_the_architectures():
    import subprocess
    import sys
    code = ("import timm, eatai; names = ['preact_resnet18', 'wrn_28_10', 'wrn_34_20', 'wrn_70_16', 'resnet50_cifar']; "
            "assert all(n in timm.list_models() for n in names); "
            "print(timm.create_model('preact_resnet18', num_classes=10).num_classes)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '10'
