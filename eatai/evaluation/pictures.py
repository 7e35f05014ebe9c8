"""Adversarial pictures: what each threat's quick attack (APGD for a ball) does to images, fastai's show_results way.

One row per example: the clean image, its adversarial version in each threat model, then each
perturbation amplified to the full grey range (mid-grey is zero). Titles give the prediction
(class names when known) and whether the attack changed it. Any registered threat works: StAdv, ReColorAdv
and JPEG show their own attack's image; a common corruption ('corruption:fog:3') shows the corrupted image,
its change from the clean one as the amplified delta.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import check_batch, eval_mode
from ..threats import default_threats
from . import lp  # noqa: F401  registers the l_p threats
from .checks import check_logits, model_device
from .registry import parse_threats

__all__ = ['AdversarialExamples', 'adversarial_examples']


@dataclass
class AdversarialExamples:
    """Clean inputs, their adversarial versions per threat, and the predictions on each."""
    x: torch.Tensor                    # (N, C, H, W) in [0,1]
    y: torch.Tensor                    # (N,)
    pred: torch.Tensor                 # (N,) prediction on the clean inputs
    x_adv: dict[str, torch.Tensor]     # threat -> (N, C, H, W), inside its ball and [0,1]
    pred_adv: dict[str, torch.Tensor]  # threat -> (N,)
    classes: list[str] | None = None

    def _name(self, k: int) -> str:
        return self.classes[k] if self.classes and k < len(self.classes) else str(k)

    def plot(self, figsize=None):
        """The figure: per example, clean | adversarial per threat | amplified perturbation per threat."""
        import matplotlib.pyplot as plt
        threats, n = list(self.x_adv), len(self.y)
        cols = 1 + 2 * len(threats)
        fig, axes = plt.subplots(n, cols, figsize=figsize or (1.6 * cols, 2.0 * n), squeeze=False)
        show = lambda ax, img: ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap='gray', vmin=0, vmax=1)
        for i, row in enumerate(axes):
            ok = bool(self.pred[i] == self.y[i])
            show(row[0], self.x[i])
            row[0].set_title(f"true {self._name(int(self.y[i]))}\npred {self._name(int(self.pred[i]))}",
                             fontsize=7, color='black' if ok else 'red')
            for j, t in enumerate(threats):
                p = int(self.pred_adv[t][i])
                fooled = ok and p != int(self.y[i])
                verdict = 'fooled' if fooled else ('held' if ok else 'clean error')
                show(row[1 + j], self.x_adv[t][i])
                row[1 + j].set_title(f"{t}\n{self._name(p)} ({verdict})", fontsize=7,
                                     color='red' if fooled else 'black')
                delta = self.x_adv[t][i] - self.x[i]
                scale = float(delta.abs().max())
                # amplified so the largest change reaches black or white; zero is mid-grey
                show(row[1 + len(threats) + j], (0.5 + delta / (2 * scale)) if scale > 0 else delta + 0.5)
                row[1 + len(threats) + j].set_title(f"delta {t.rsplit(':', 1)[0]}\nx{0.5 / scale:.0f}" if scale > 0
                                                    else f"delta {t.rsplit(':', 1)[0]}\nzero", fontsize=7)
            for ax in row:
                ax.set_xticks([]), ax.set_yticks([])
        fig.tight_layout(pad=0.3, h_pad=0.8)
        return fig


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats=None, n_iter: int = 20,
                         seed: int = 0, classes=None, device=None) -> AdversarialExamples:
    """Each threat's quick attack (`n_iter` steps; APGD-CE with evaluation settings for a ball) on
    x: (N, C, H, W) in [0,1], y: (N,). threats: default the paper's CIFAR-10 three; any registered threat
    ('stadv:0.05', 'recolor:0.06', 'jpeg:0.25', 'corruption:fog:3'). Every output is checked to lie inside its threat."""
    check_batch(x, y)
    threats = parse_threats(default_threats() if threats is None else threats)
    device = model_device(model, device)
    x, y = x.detach().to(device), y.detach().long().to(device)
    x_adv, pred_adv = {}, {}
    with eval_mode(model):
        with torch.no_grad():
            logits = model(x)
        check_logits(logits)
        for t in threats:
            adv = t.quick_attack(model, x, y, n_iter=n_iter, seed=seed)
            if not bool(t.contains(x, adv).all()):
                raise RuntimeError(f"the {t} attack returned points outside the threat model")
            with torch.no_grad():
                pred_adv[str(t)] = model(adv).argmax(1).cpu()
            x_adv[str(t)] = adv.cpu()
    return AdversarialExamples(x.cpu(), y.cpu(), logits.argmax(1).cpu(), x_adv, pred_adv,
                               list(classes) if classes is not None else None)
