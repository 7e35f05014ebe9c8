"""fastai callbacks for adversarial training (this layer may import fastai; attacks may not)."""
from .adversarial import AdversarialTraining, AttackSettings, EpochStat
from .strategies import EAT, STRATEGIES, AdversarialBatch, RunningMean, SingleNorm, Strategy, make_strategy

__all__ = ['AdversarialTraining', 'AttackSettings', 'EpochStat', 'Strategy', 'SingleNorm', 'EAT', 'STRATEGIES',
           'AdversarialBatch', 'RunningMean', 'make_strategy']
