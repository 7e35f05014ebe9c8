"""The job of tests/test_distributed.py, launched by torchrun with 2 processes (gloo on CPU):
E-AT fine-tuning of a tiny model with DDP and gradient projection, then a sharded evaluation. Usage: ddp_job.py OUT_DIR"""
import os
import sys

import torch
from fastai.torch_core import set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import tiny_dls, tiny_learner  # noqa: E402

import eatai.callbacks.distributed  # noqa: E402,F401
from eatai.all import GradientProjection  # noqa: E402


def main(out_dir):
    torch.set_num_threads(1)
    set_seed(0)
    learn = tiny_learner(tiny_dls(n_train=128, bs=16))
    learn.no_bar().__enter__(), learn.no_logging().__enter__()
    gp = GradientProjection()   # its natural gradients are averaged across processes too
    with learn.robust_distrib_ctx():
        learn.eat_finetune(epochs=2, lr=0.01, n_iter=2, cbs=[gp])
    result = learn.robust_eval(n=16, budget='quick', progress=False)
    rank = int(os.environ['RANK'])
    torch.save({'weights': learn.model.state_dict(), 'history': learn.adversarial_training.history,
                'flags': result.flags, 'probs': learn.adversarial_training.strategy.probabilities(),
                'world': torch.distributed.get_world_size(), 'gp': gp.history}, os.path.join(out_dir, f'rank{rank}.pt'))


if __name__ == '__main__':
    main(sys.argv[1])
