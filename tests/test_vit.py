"""Vision transformers for 32x32 inputs: parameter counts against the published ones, the XCiT
4-pixel patch stem, timm keyword arguments through `robust_learner`, a clear error for an image
size the patch size does not divide, the AdamW default, and a 1-epoch E-AT fine-tune of each
(tiny widths) on the bundled sample."""
import pytest
import timm
import torch
from fastai.torch_core import set_seed

from eatai.all import arrays_dls, build_model, load_sample, robust_learner
from eatai.callbacks import AdversarialTraining
from eatai.learner import default_opt_func, paper_sgd, transformer_adamw

TINY = dict(embed_dim=16, depth=1, num_heads=2)


def meta_params(name, **kwargs) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name, **kwargs).parameters())


def test_xcit_s12_p4_has_the_imagenet_xcit_s12_parameters():
    # Debenedetti et al. keep the ImageNet model's layout: the same weights count, 26M (XCiT paper: 26M)
    n = meta_params('xcit_small_12_p4_32', num_classes=1000)
    assert n == meta_params('xcit_small_12_p16_224')
    assert n == pytest.approx(26e6, rel=0.02)
    assert meta_params('xcit_medium_12_p4_32', num_classes=1000) == pytest.approx(46e6, rel=0.02)   # XCiT-M12
    assert meta_params('xcit_large_12_p4_32', num_classes=1000) == pytest.approx(104e6, rel=0.02)  # XCiT-L12


def test_vit_s4_is_deit_s_with_4_pixel_patches():
    # DeiT-S / ViT-S: 22M (22,050,664 in timm). At 32x32 with 4x4 patches it has 65 position
    # embeddings instead of 197 and a 3*4*4 instead of 3*16*16 patch projection per channel
    deit_s = meta_params('vit_small_patch16_224')
    assert deit_s == pytest.approx(22e6, rel=0.01)
    expected = deit_s - (197 - 65) * 384 - 3 * (16 * 16 - 4 * 4) * 384
    assert meta_params('vit_small_patch4_32', num_classes=1000) == expected
    assert meta_params('vit_small_patch16_224', img_size=32, patch_size=4, num_classes=10) == \
        meta_params('vit_small_patch4_32', num_classes=10)


def test_xcit_p4_stem_gives_an_8x8_token_grid():
    model = timm.create_model('xcit_small_12_p4_32', **TINY).eval()
    tokens, grid = model.patch_embed(torch.rand(2, 3, 32, 32))
    assert grid == (8, 8) and tokens.shape == (2, 64, 16)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize('img_size', [30, 33])
def test_patch_size_must_divide_the_image(img_size):
    with pytest.raises(ValueError, match='not a multiple of patch size'):
        build_model('vit_small_patch16_224', 10, img_size=img_size, patch_size=4, **TINY)
    with pytest.raises(ValueError, match='not a multiple of patch size'):
        timm.create_model('vit_small_patch4_32', img_size=img_size, **TINY)


def sample_dls(n_train=32, n_valid=16, bs=16):
    x, y, xv, yv = load_sample()
    return arrays_dls(x[:n_train], y[:n_train], xv[:n_valid], yv[:n_valid], bs=bs)


def test_timm_kwargs_pass_through_robust_learner_and_vits_get_adamw():
    learn = robust_learner(sample_dls(), 'vit_small_patch16_224', img_size=32, patch_size=4, cbs=[], **TINY)
    vit = learn.model.model
    assert vit.patch_embed.patch_size == (4, 4) and vit.patch_embed.img_size == (32, 32)
    assert learn.opt_func.keywords == transformer_adamw().keywords
    assert default_opt_func(build_model('cifar_cnn', 10)).keywords == paper_sgd().keywords
    with pytest.raises(TypeError, match='neither Learner arguments'):
        robust_learner(sample_dls(), vit, patch_size=4)


@pytest.mark.parametrize('arch', ['vit_small_patch4_32', 'xcit_small_12_p4_32'])
def test_one_epoch_eat_finetune_on_the_sample(arch):
    set_seed(0)
    learn = robust_learner(sample_dls(), arch, **TINY)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.eat_finetune(epochs=1, lr=1e-3, n_iter=2)
    adversary = next(cb for cb in learn.cbs if isinstance(cb, AdversarialTraining))
    assert sum(m.count for m in adversary.strategy.rerr.values()) == 32   # every training image attacked once
    changed = [k for k, v in learn.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, 'no weight moved'
    loss = learn.recorder.values[-1][0]
    assert loss == loss and loss < 50   # a finite training loss
