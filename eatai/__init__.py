"""eatai: adversarial robustness to l1, l2 and l-inf at once, the fastai way (Croce & Hein, ICML 2022)."""
__version__ = '0.1.0'
