"""A fixed seed gives identical weights and numbers for a CPU run, twice."""
import torch
from test_training import N_ITER, tiny_learner


def run_once():
    learn = tiny_learner()                      # set_seed(0) inside, before the model and data
    learn.eat_finetune(epochs=2, lr=0.01, n_iter=N_ITER)
    result = learn.robust_eval(n=16, budget='quick', progress=False)
    return [p.detach().clone() for p in learn.model.state_dict().values()], learn.adversarial_training.history, result


def test_same_seed_same_weights_statistics_and_evaluation():
    (w1, h1, r1), (w2, h2, r2) = run_once(), run_once()
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))
    assert h1 == h2
    assert r1.flags == r2.flags
