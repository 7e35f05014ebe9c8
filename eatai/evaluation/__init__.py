"""Evaluation: the threat registry, the runner (per-point verdicts, union, budgets, resume), curves, pictures, tables.

Threats: the l_p balls, StAdv, ReColorAdv, JPEG and common corruptions.

This package knows torch, the attacks, pyautoattack, rich and matplotlib, never fastai; the
Learner methods (`robust_eval`, `robustness_curves`, `show_adversarial`) live in `eatai.learner`.
"""
from . import jpeg, recolor, stadv  # noqa: F401  register the unforeseen threats
from .budget import ATTACKS, BUDGETS, APGDSettings, EvalBudget
from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, CorruptionThreat, evaluate_corruptions
from .checks import check_n
from .compare import Comparison, compare_results
from .curves import ModelCurves, RobustnessCurves, agreement_tolerance, default_radii, robustness_curves
from .lp import LpThreat
from .pictures import AdversarialExamples, adversarial_examples
from .registry import (AttackContext, Threat, get_threat, parse_threats, register_threat, threat_names,
                       unregister_threat)
from .result import RobustResult
from .runner import evaluate_robustness
from .iterative import IterativeThreat
from .jpeg import JpegThreat
from .recolor import ReColorThreat
from .stadv import StAdvThreat
from .tables import corruption_table, print_results, results_table, results_text
from .unforeseen import UNFORESEEN, summary_plot, unforeseen_threats

__all__ = ['ATTACKS', 'BUDGETS', 'APGDSettings', 'EvalBudget', 'check_n', 'ModelCurves', 'RobustnessCurves',
           'agreement_tolerance', 'default_radii', 'robustness_curves', 'LpThreat', 'AdversarialExamples',
           'adversarial_examples', 'AttackContext', 'Threat', 'get_threat', 'parse_threats', 'register_threat',
           'threat_names', 'unregister_threat', 'RobustResult', 'evaluate_robustness', 'print_results', 'results_table', 'results_text',
           'CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'CorruptionThreat', 'evaluate_corruptions', 'IterativeThreat', 'JpegThreat', 'ReColorThreat',
           'StAdvThreat', 'corruption_table', 'UNFORESEEN', 'summary_plot', 'unforeseen_threats', 'Comparison', 'compare_results']
