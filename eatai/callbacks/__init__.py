"""fastai callbacks for adversarial training (this layer may import fastai; attacks may not); beside them
`plots` (training statistics over epochs) and `distributed` (`learn.robust_distrib_ctx()`), imported on demand."""
from .adversarial import AdversarialTraining, AttackSettings, EpochStat
from .baselines import AVG, MAX, MSD, MultiNorm
from .decay import DecayAll
from .gradient_projection import GradientProjection
from .losses import TRADES, TrainingLoss, trades_loss
from .ramp import RAMP, EATPair, ramp_loss
from .progress import AdaptiveProgress
from .registry import STRATEGIES, make_strategy
from .resume import Checkpointing
from .strategies import EAT, SAT, AdversarialBatch, RandomNorm, RunningMean, SingleNorm, Strategy
from .switch import Switch

__all__ = ['AdversarialTraining', 'AttackSettings', 'EpochStat', 'Strategy', 'SingleNorm', 'RandomNorm', 'EAT', 'SAT',
           'MultiNorm', 'MAX', 'AVG', 'MSD', 'Switch', 'STRATEGIES', 'AdversarialBatch', 'RunningMean', 'make_strategy',
           'Checkpointing', 'RAMP', 'EATPair', 'ramp_loss', 'TRADES', 'TrainingLoss', 'trades_loss', 'DecayAll', 'GradientProjection',
           'AdaptiveProgress']
