"""Robustness curves of the bundled checkpoint and of its E-AT fine-tuned version (the demo's),
and the APGD robust accuracy at the evaluated radii beside the curves' values there.

Fine-tunes as `eatai demo` does (3 epochs, lr 0.05, batch 64, seed 0, the bundled sample), then
writes docs/img/curves.png, docs/img/curves.json and docs/img/adversarial.png and prints, per
model and norm: the curve at eps, robust_eval's APGD-CE + APGD-T robust accuracy on the same
points, and the tolerance (two binomial standard errors).
"""
import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from fastai.torch_core import set_seed  # noqa: E402

from eatai.all import arrays_dls, load_sample, robust_learner  # noqa: E402
from eatai.evaluation.curves import agreement_tolerance  # noqa: E402
from eatai.demo import DEMO_CHECKPOINT, DemoConfig  # noqa: E402


def measure(learn, name, args):
    start = time.perf_counter()
    curves = learn.robustness_curves(n=args.n, n_iter=args.n_iter, name=name)
    t_curves = time.perf_counter() - start
    start = time.perf_counter()
    res = learn.robust_eval(n=args.n, budget=args.budget, progress=False, name=name)
    t_eval = time.perf_counter() - start
    m, rows = curves.models[0], []
    for threat in res.threats:
        norm = threat.split(':')[0]
        p = res.robust[threat]
        rows.append({'model': name, 'threat': threat, 'curve_at_eps': m.at_eps(norm), 'apgd_robust': p,
                     'tolerance': agreement_tolerance(p, res.n), 'ok': m.at_eps(norm) >= p - agreement_tolerance(p, res.n)})
    print(f"{name}: clean {res.clean:.3f} (curve at 0: {m.clean:.3f}); curves {t_curves:.0f} s, "
          f"robust_eval ({res.budget}) {t_eval:.0f} s", flush=True)
    for r in rows:
        print(f"  {r['threat']:>10}: curve {r['curve_at_eps']:.3f}  APGD {r['apgd_robust']:.3f}  "
              f"tolerance {r['tolerance']:.3f}  curve >= APGD - tol: {r['ok']}", flush=True)
    return curves, rows


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--n', type=int, default=200)
    p.add_argument('--n-iter', type=int, default=20, help='APGD-CE iterations per radius of the curves')
    p.add_argument('--budget', default='quick')
    p.add_argument('--out-dir', default='docs/img')
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = DemoConfig()
    set_seed(config.seed)
    x_train, y_train, x_valid, y_valid = load_sample()
    learn = robust_learner(arrays_dls(x_train, y_train, x_valid, y_valid, bs=config.bs), str(DEMO_CHECKPOINT))
    before, rows = measure(learn, 'l-inf AT (bundled)', args)
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.eat_finetune(epochs=config.epochs, lr=config.lr)
        print(f"E-AT fine-tuning: {time.perf_counter() - start:.0f} s", flush=True)
    after, rows_after = measure(learn, '+ E-AT fine-tuning', args)
    curves = before + after
    curves.to_json(out / 'curves.json')
    fig = curves.plot()
    fig.savefig(out / 'curves.png', dpi=110)
    plt.close(fig)
    fig = learn.show_adversarial(n=6, n_iter=20)
    fig.savefig(out / 'adversarial.png', dpi=110)
    plt.close(fig)
    (out / 'curves_vs_apgd.json').write_text(json.dumps(rows + rows_after, indent=1))
    print(f"written: {out}/curves.png, curves.json, adversarial.png, curves_vs_apgd.json")


if __name__ == '__main__':
    main()
