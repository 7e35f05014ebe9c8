"""show_adversarial: panel count, perturbations inside their balls, amplified deltas, titles, bad input."""
import matplotlib
import numpy as np
import pytest
import torch
from conftest import TinyNet
from torch import nn

matplotlib.use('Agg')

from eatai.attacks import lp_norm  # noqa: E402
from eatai.cli import main  # noqa: E402
from eatai.data import CIFAR10_CLASSES, arrays_dls, load_sample  # noqa: E402
from eatai.demo import DEMO_CHECKPOINT  # noqa: E402
from eatai.learner import robust_learner  # noqa: E402
from eatai.evaluation import adversarial_examples  # noqa: E402

THREATS = ['linf:8/255', 'l2:0.5', 'l1:12']
EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def learn():
    x_train, y_train, x_valid, y_valid = load_sample()
    torch.manual_seed(0)
    return robust_learner(arrays_dls(x_train[:32], y_train[:32], x_valid[:16], y_valid[:16], bs=8), DEMO_CHECKPOINT)


def _pixels(ax) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(ax.images[0].get_array()), dtype=torch.float32)
    return img.permute(2, 0, 1)   # (C, H, W)


def test_panels_balls_and_titles(learn):
    n = 3
    fig = learn.show_adversarial(n=n, n_iter=5)
    assert len(fig.axes) == n * (1 + 2 * len(THREATS))
    rows = np.array(fig.axes).reshape(n, -1)
    _, _, x_valid, y_valid = load_sample()
    fooled = 0
    for i, row in enumerate(rows):
        clean = _pixels(row[0])
        assert torch.allclose(clean, x_valid[i])   # the clean panel shows the clean image
        assert CIFAR10_CLASSES[int(y_valid[i])] in row[0].get_title()
        for j, t in enumerate(THREATS):
            norm = t.split(':')[0]
            adv, delta_panel = _pixels(row[1 + j]), _pixels(row[1 + len(THREATS) + j])
            delta = adv - clean
            assert lp_norm(delta[None], norm).item() <= EPS[norm] * (1 + 1e-4) and 0 <= adv.min() and adv.max() <= 1
            assert row[1 + j].get_title().startswith(t)
            with torch.no_grad():
                pred = learn.model.eval()(adv[None]).argmax(1).item()
            assert CIFAR10_CLASSES[pred] in row[1 + j].get_title()
            fooled += 'fooled' in row[1 + j].get_title()
            if delta.abs().max() > 0:   # amplified: the largest change reaches 0 or 1, zero is mid-grey
                expected = 0.5 + delta / (2 * delta.abs().max())
                assert torch.allclose(delta_panel, expected, atol=1e-5)
                assert delta_panel.min().item() == pytest.approx(0, abs=1e-5) or \
                    delta_panel.max().item() == pytest.approx(1, abs=1e-5)
    assert fooled > 0   # the bundled model is fooled by some attack on some of these points


def test_fooled_only_when_the_prediction_changes():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10
    threats = ['linf:0.3', 'linf:0.002']
    ex = adversarial_examples(model, x, y, threats=threats, n_iter=5)
    rows = np.array(ex.plot().axes).reshape(4, -1)
    assert 'clean error' in rows[0][1].get_title() and 'clean error' in rows[0][2].get_title()
    verdicts = []
    for i in range(1, 4):
        for j, t in enumerate(threats):
            changed = int(ex.pred_adv[t][i]) != int(y[i])
            verdicts.append(changed)
            assert ('fooled' in rows[i][1 + j].get_title()) == changed
            assert ('held' in rows[i][1 + j].get_title()) == (not changed)
    assert any(verdicts) and not all(verdicts)   # both cases were checked


def test_bad_input(learn):
    with pytest.raises(ValueError, match='n=17 is larger than the data'):
        learn.show_adversarial(n=17)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match='probabilities'):
        adversarial_examples(nn.Sequential(TinyNet(), nn.Softmax(dim=1)), x, y)


def test_eval_show_writes_a_png(tmp_path):
    out = tmp_path / 'adv.png'
    rc = main(['eval', '--model', str(DEMO_CHECKPOINT), '--n', '4', '--budget', 'quick', '--threat', 'linf:8/255',
               '--show', str(out)])
    assert rc == 0 and out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_threats_beyond_lp_and_a_corruption(monkeypatch, tmp_path):
    """StAdv, ReColorAdv, JPEG and a corruption in the pictures: every image inside its threat (`contains`),
    the corruption's the corrupted image, one clean, one image and one delta panel per threat."""
    from eatai.evaluation import get_threat
    from eatai.evaluation.corruptions import corrupt
    monkeypatch.setenv('EATAI_HOME', str(tmp_path))   # the corruption's cache
    _, _, x, y = load_sample()
    x, y = x[:3], y[:3]
    threats = ['stadv:0.05', 'recolor:0.06', 'jpeg:0.25', 'corruption:fog:3']
    model = robust_learner(arrays_dls(x, y, x, y, bs=3), DEMO_CHECKPOINT).model.eval()
    ex = adversarial_examples(model, x, y, threats=threats, n_iter=3)
    assert list(ex.x_adv) == threats
    for t in threats:
        adv = ex.x_adv[t]
        assert bool(get_threat(t).contains(x, adv).all()), t
        assert not torch.equal(adv, x), t   # the image changed
        with torch.no_grad():
            assert torch.equal(ex.pred_adv[t], model(adv).argmax(1))
    assert torch.allclose(ex.x_adv['corruption:fog:3'], corrupt(x, 'fog', 3), atol=0.25 / 255)
    rows = np.array(ex.plot().axes).reshape(3, -1)
    assert rows.shape[1] == 1 + 2 * len(threats)
    assert [ax.get_title().split('\n')[0] for ax in rows[0][1:1 + len(threats)]] == threats
    assert rows[0][-1].get_title().startswith('delta corruption:fog')
