"""torch.compile: a compiled tiny model trains with E-AT and is attacked like the eager one (same seed, same
adversarial points and statistics), keeps its train/eval flags, and saves clean checkpoints.

The tests compile with backend 'aot_eager' (dynamo's graphs and AOT autograd's forward/backward split,
no code generation): inductor's C++ compilation takes minutes on two CPU cores. bench/compile.py times
inductor and lists where the attack breaks the graph."""
import pytest
import torch
import torch._dynamo as dynamo
from fastai.torch_core import set_seed
from torch._dynamo.testing import CompileCounterWithBackend

from conftest import TinyNet
from eatai.all import Normalized, build_model, load_checkpoint, robust_learner, save_checkpoint
from eatai.attacks import apgd
from eatai.models.cifar_cnn import CifarCNN
from test_training import tiny_dls

pytestmark = pytest.mark.usefixtures('one_thread')
BACKEND = 'aot_eager'
N_ITER = 2


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled code and its caches are global: each test starts and leaves them empty."""
    dynamo.reset()
    yield
    dynamo.reset()


def _learner(compile=False, model=None):
    set_seed(0)
    model = model if model is not None else Normalized(CifarCNN(width=4), (0.5,) * 3, (0.25,) * 3)
    return robust_learner(tiny_dls(), model, compile=compile)


def _fit_eat(learn):
    set_seed(1)
    with learn.no_bar(), learn.no_logging():
        learn.fit_adversarial(1, lr=0.01, scheme='eat', n_iter=N_ITER)
    return learn


def test_compiled_learner_trains_with_eat_as_the_eager_one():
    counter = CompileCounterWithBackend(BACKEND)
    eager, compiled = _fit_eat(_learner()), _fit_eat(_learner(compile={'backend': counter}))
    # training forward; the attack's forwards with and without input gradients; validation (its last
    # batch differs in size from the first: one dynamic-shape recompilation at most)
    assert 3 <= counter.frame_count <= 5, counter.frame_count
    assert type(compiled.model) is Normalized   # compiled in place: the module itself is unchanged
    e, c = eager.adversarial_training.history, compiled.adversarial_training.history
    assert e[0].keys() == c[0].keys() and {'freq_linf', 'rerr_l1', 'prob_l1'} <= e[0].keys()
    for key in e[0]:
        assert c[0][key] == pytest.approx(e[0][key], rel=1e-4, abs=1e-6), key
    assert list(compiled.recorder.values[0]) == pytest.approx(list(eager.recorder.values[0]), rel=1e-4, abs=1e-6)
    for (name, p), q in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), name


def _tiny(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l1', 12.0)])
@pytest.mark.parametrize('how', ['in place', 'wrapper'])
def test_apgd_on_a_compiled_model_finds_the_eager_points_and_restores_flags(batch, norm, eps, how):
    x, y = batch
    eager = _tiny().train()
    compiled = _tiny().train()
    compiled.head.eval()   # mixed flags: each module's own flag comes back
    counter = CompileCounterWithBackend(BACKEND)
    if how == 'in place':
        compiled.compile(backend=counter)
        target = compiled
    else:   # torch.compile(model): an OptimizedModule around it, '_orig_mod.' in its keys
        target = torch.compile(compiled, backend=counter)
    flags = [m.training for m in compiled.modules()]
    kwargs = dict(n_iter=N_ITER, random_start=True, seed=3)
    x_e, c_e = apgd(eager, x, y, norm, eps, **kwargs)
    x_c, c_c = apgd(target, x, y, norm, eps, **kwargs)
    assert torch.allclose(x_c, x_e, atol=1e-6)
    assert torch.equal(c_c, c_e)
    assert counter.frame_count == 2   # eval mode with input gradients, and without (the last step)
    assert [m.training for m in compiled.modules()] == flags
    assert target.training   # the wrapper reports its module's flag


def test_a_compiled_attack_function_finds_the_eager_points(batch):
    """torch.compile(apgd) runs, graph breaks and all (bench/compile.py lists them), to the same points."""
    x, y = batch
    model = _tiny().eval()
    attack = torch.compile(apgd, backend=BACKEND)
    for norm, eps in (('linf', 8 / 255), ('l1', 12.0)):
        x_e, c_e = apgd(model, x, y, norm, eps, n_iter=N_ITER)
        x_c, c_c = attack(model, x, y, norm, eps, n_iter=N_ITER)
        assert torch.allclose(x_c, x_e, atol=1e-6) and torch.equal(c_c, c_e)


def test_the_model_graph_has_no_break():
    explained = dynamo.explain(build_model('cifar_cnn', 10, width=4).eval())(torch.rand(2, 3, 32, 32))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def _keys(path):
    return set(torch.load(path, weights_only=False)['model'])


@pytest.mark.parametrize('how', ['flag', 'wrapper'])
def test_checkpoints_of_compiled_learners_have_clean_keys(tmp_path, how):
    inner = Normalized(CifarCNN(width=4), (0.5,) * 3, (0.25,) * 3)
    if how == 'flag':
        learn = _learner(compile={'backend': BACKEND}, model=inner)
    else:
        learn = _learner(model=torch.compile(inner, backend=BACKEND))
        assert any('_orig_mod.' in k for k in learn.model.state_dict())
    _fit_eat(learn)
    path = learn.save(tmp_path / 'compiled.pth')
    assert _keys(path) == set(inner.state_dict())   # no '_orig_mod.'
    eager = _learner().load(path)   # a compiled run's checkpoint loads into an eager learner ...
    for k, v in inner.state_dict().items():
        assert torch.equal(eager.model.state_dict()[k], v), k
    with torch.no_grad():
        for p in inner.parameters():
            p.zero_()
    learn.load(eager.save(tmp_path / 'eager.pth'))   # ... and back into the compiled one
    for k, v in eager.model.state_dict().items():
        assert torch.equal(inner.state_dict()[k], v), k
    assert learn.adversarial_training.history == eager.adversarial_training.history


def test_save_checkpoint_of_a_compiled_model(tmp_path):
    model = build_model('cifar_cnn', 10, width=4)
    compiled = torch.compile(model, backend=BACKEND)
    path = save_checkpoint(compiled, tmp_path / 'c.pt', 'cifar_cnn', {'width': 4})
    state = torch.load(path, weights_only=True)['state_dict']
    assert set(state) == set(model.model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(path).eval()(x), model.eval()(x), atol=1e-6)


def test_compile_flag_takes_a_bool_or_options():
    with pytest.raises(TypeError, match='compile must be'):
        _learner(compile='inductor')
    assert _learner(compile=False).model._compiled_call_impl is None
    assert _learner(compile={'backend': BACKEND}).model._compiled_call_impl is not None
