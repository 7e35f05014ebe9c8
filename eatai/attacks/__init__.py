"""Attacks in pixel space [0,1]: APGD for l-inf, l2 and l1 and the l1-ball-and-box projection.

This layer knows torch only, never fastai.
"""
from .apgd import EVALUATION, APGDConfig, apgd, apgd_targeted
from .balls import Ball, L1Ball, L2Ball, LinfBall, lp_norm, make_ball
from .guards import check_batch, check_model_outputs, eval_mode
from .losses import LOSSES, ce_loss, dlr_loss, dlr_targeted_loss
from .projection import l1_box_projection

__all__ = ['apgd', 'apgd_targeted', 'APGDConfig', 'EVALUATION', 'l1_box_projection', 'make_ball', 'Ball',
           'LinfBall', 'L2Ball', 'L1Ball', 'lp_norm', 'eval_mode', 'check_batch', 'check_model_outputs', 'LOSSES', 'ce_loss',
           'dlr_loss', 'dlr_targeted_loss']
