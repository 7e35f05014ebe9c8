"""eatai: adversarial robustness to l1, l2 and l-inf at once, the fastai way (Croce & Hein, ICML 2022).

Importing eatai registers its CIFAR architectures with timm (`timm.create_model('wrn_28_10')`);
`from eatai.all import *` brings the public API.
"""
from . import models  # noqa: F401  registers the architectures with timm

__version__ = '0.1.0'
