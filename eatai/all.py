"""`from eatai.all import *`: the public API for notebooks and scripts."""
from fastai.torch_core import set_seed

from .attacks import apgd, apgd_targeted, l1_box_projection
from .callbacks import (
           AVG,
           EAT,
           MAX,
           MSD,
           SAT,
           AdversarialTraining,
           AttackSettings,
           Checkpointing,
           GradientProjection,
           SingleNorm,
           Strategy,
           Switch,
           make_strategy,
)
from .callbacks import RAMP, TRADES, EATPair, AdaptiveProgress, DecayAll, TrainingLoss
from .callbacks import distributed  # noqa: F401  registers Learner.robust_distrib_ctx (docs: scale and resilience)
from .callbacks.plots import plot_training_stats
from .data import CIFAR10_CLASSES, arrays_dls, cifar10_dls, imagenet_dls, load_sample, mixed_dls, sample_dls
from .demo import DEMO_CHECKPOINT
from .evaluation import Comparison, compare_results
from .evaluation import CORRUPTIONS, UNFORESEEN, corruption_table, summary_plot
from .evaluation import (APGDSettings, AdversarialExamples, EvalBudget, LpThreat, ModelCurves, RobustnessCurves, RobustResult,
                         Threat, adversarial_examples, evaluate_robustness, get_threat, print_results, register_threat,
                         results_table, results_text, robustness_curves, threat_names)
from .finetune import finetune_schedule, piecewise_schedule, set_adversary
from .geometry import hull_covers, hull_radius, union_radius
from .learner import RobustLearner, paper_sgd, robust_learner, transformer_adamw  # also Learner.robust_eval, ...
from .models import Normalized, build_model, load_checkpoint, load_model, load_robustbench, load_weights, save_checkpoint
from .models.hub import export_model, load_export
from .models.zoo import get_entry, load_zoo_model, zoo_download, zoo_entries
from .threats import NORMS, ThreatModel, default_threats, parse_threat
from .callbacks.tracking import log_robust_result, robust_scalars, tracker_callbacks, tracking  # tensorboard, wandb: on demand

__all__ = ['apgd', 'apgd_targeted', 'l1_box_projection', 'EAT', 'MAX', 'AVG', 'MSD', 'SAT', 'Switch', 'AdversarialTraining', 'AttackSettings', 'SingleNorm',
           'Strategy', 'make_strategy', 'CIFAR10_CLASSES', 'arrays_dls', 'cifar10_dls', 'imagenet_dls', 'mixed_dls', 'load_sample', 'sample_dls',
           'EvalBudget', 'RobustResult', 'evaluate_robustness', 'finetune_schedule', 'piecewise_schedule',
           'set_adversary', 'hull_covers', 'hull_radius', 'union_radius', 'RobustLearner', 'paper_sgd',
           'robust_learner', 'Normalized', 'build_model', 'load_checkpoint', 'load_model', 'load_robustbench', 'load_weights', 'save_checkpoint', 'print_results',
           'results_table', 'results_text', 'NORMS', 'ThreatModel', 'default_threats', 'parse_threat', 'set_seed',
           'RAMP', 'EATPair', 'TRADES', 'TrainingLoss', 'DecayAll', 'GradientProjection',
           'ModelCurves', 'RobustnessCurves', 'robustness_curves', 'AdversarialExamples', 'adversarial_examples',
           'transformer_adamw', 'get_entry', 'load_zoo_model', 'zoo_download', 'zoo_entries',
           'Checkpointing', 'plot_training_stats', 'DEMO_CHECKPOINT', 'APGDSettings',
           'AdaptiveProgress', 'Threat', 'LpThreat', 'register_threat', 'get_threat', 'threat_names',
           'export_model', 'load_export',
           'Comparison', 'compare_results',
           'CORRUPTIONS', 'UNFORESEEN', 'corruption_table', 'summary_plot',
           'log_robust_result', 'robust_scalars', 'tracker_callbacks', 'tracking']
