"""The training job of tests/test_resume.py: fine-tuning of a tiny model with a checkpoint after
every batch, resumed from the checkpoint when one exists; with a fourth argument `gp`, also with
GradientProjection (whose round state the checkpoint then carries). Usage: resume_job.py CKPT OUT SCHEME [gp]"""
import os
import sys
import time

import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import tiny_dls, tiny_learner  # noqa: E402

from eatai.callbacks import Checkpointing, GradientProjection  # noqa: E402


class Slow(Callback):
    """Gives the test time to kill the process in the middle of an epoch."""
    def after_batch(self):
        time.sleep(float(os.environ.get('EATAI_SLOW', '0')))


def main(ckpt, out, scheme, gp=''):
    torch.set_num_threads(1)
    set_seed(0)   # before the DataLoaders: they draw their shuffling seed from Python's random
    learn = tiny_learner(tiny_dls(n_train=96, bs=16))          # 6 batches per epoch
    learn.no_bar().__enter__()
    extra = [GradientProjection()] if gp == 'gp' else []
    learn.finetune_adversarial(scheme, epochs=2, lr=0.01, n_iter=1,
                               cbs=[Checkpointing(ckpt, every=1, resume=True), Slow(), *extra])
    torch.save({'weights': learn.model.state_dict(), 'history': learn.adversarial_training.history,
                'values': learn.recorder.values, 'gp': extra[0].history if extra else None}, out)


if __name__ == '__main__':
    main(*sys.argv[1:5])
