"""Evaluation: threats as a registry, the runner (per-point verdicts, union, budgets, resume), curves, pictures, tables.

This package knows torch, the attacks, pyautoattack, rich and matplotlib, never fastai; the
Learner methods (`robust_eval`, `robustness_curves`, `show_adversarial`) live in `eatai.learner`.
"""
from .budget import ATTACKS, BUDGETS, APGDSettings, EvalBudget
from .checks import check_n
from .curves import ModelCurves, RobustnessCurves, agreement_tolerance, default_radii, robustness_curves
from .lp import LpThreat
from .pictures import AdversarialExamples, adversarial_examples
from .registry import (AttackContext, Threat, get_threat, parse_threats, register_threat, threat_names,
                       unregister_threat)
from .result import RobustResult
from .runner import evaluate_robustness
from .tables import print_results, results_table, results_text

__all__ = ['ATTACKS', 'BUDGETS', 'APGDSettings', 'EvalBudget', 'check_n', 'ModelCurves', 'RobustnessCurves',
           'agreement_tolerance', 'default_radii', 'robustness_curves', 'LpThreat', 'AdversarialExamples',
           'adversarial_examples', 'AttackContext', 'Threat', 'get_threat', 'parse_threats', 'register_threat',
           'threat_names', 'unregister_threat', 'RobustResult', 'evaluate_robustness', 'print_results', 'results_table', 'results_text']
