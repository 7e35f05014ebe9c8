"""eatai's unforeseen-threat attacks beside the authors' implementations, on the bundled checkpoint.

On eatai/checkpoints/cifar_cnn_linf.pt and the first --n bundled sample test images (500 at most), each attack
runs next to its published implementation at the threat's CIFAR-10 default, with the same number of steps:

- 'stadv:0.05': `eatai.attacks.spatial.stadv` against perceptual-advex 0.2.6's `StAdvAttack(model, bound=0.05,
  num_iterations=100)` (on recoloradv 0.0.1's mister_ed): 100 Adam steps each;
- 'recolor:0.06': `eatai.attacks.color.recolor` against perceptual-advex's `ReColorAdvAttack(model, bound=0.06,
  num_iterations=100)` (recoloradv's CIELUV colour function): 100 Adam steps each;
- 'jpeg:0.25': `eatai.attacks.jpeg.jpeg_attack` against perceptual-advex's `JPEGLinfAttack(model, 'cifar',
  bound=0.25, num_iterations=200)`, which runs advex-uar 0.0.6.dev0's `JPEGAttack` (Kang et al.'s own code):
  200 sign steps of eps/sqrt(200) each, from a random start, untargeted (both ascend the label's cross-entropy;
  advex-uar's own evaluator instead descends a random target's);
- common corruptions: `eatai.evaluation.corruptions.corrupt` against the `imagecorruptions` module of
  imagecorruptions-imaug called directly with the same per-image seeds (`corruption_seed`), for every type and
  severity on --corruption-images sample images: a (type, severity) cell counts as identical when every pixel is.

eatai runs as `evaluate_robustness(..., seed=0)` runs it: from each point's own random start. Per attack: robust
accuracy (clean-correct and still correct after the attack, over all n points) of each implementation, their
difference (eatai minus the reference, in points; the goal is at most +2), the points each breaks that the other
does not, the largest perturbation each implementation's outputs use in the threat's own bound, and seconds.
Sizes: StAdv, the flow's l-inf size from the returned parameters (eatai's flow; the reference's grid minus the
identity grid) and how many images pass eatai's `StAdvThreat.contains` (a necessary condition); ReColorAdv,
`ReColorThreat.size` (every pixel's colour change in rescaled CIELUV, measured on the images) and the offsets'
l-inf size; JPEG, the quantised-coefficient change in the strength's units (2 x its l-inf size; eatai's
returned `delta`, the reference's final `cat_var`) and how many images pass `jpeg_contains` (the reference's
do not: it decodes the chroma-subsampled clean image plus its change, see eatai.attacks.jpeg).

The reference packages are never dependencies of eatai. Build their folder with

    pip install --no-deps --target /tmp/refpkgs perceptual-advex==0.2.6 recoloradv==0.0.1 advex-uar==0.0.6.dev0 six

and pass it as --ref-path (default: $EATAI_REF_PATH, else /tmp/refpkgs); this script alone puts it on sys.path.
Three runtime shims, all inside this script, let the 2020-era code import and run on torch 2 and a CPU, without
changing what it computes: `torchvision.models.utils` (removed from torchvision) is aliased to torch.hub's
`load_state_dict_from_url`; the `robustness` package (Madry lab's training library, imported at module level by
perceptual-advex's model and data helpers, unused by these attacks) is stubbed with empty classes; and advex-uar,
which hard-codes `.cuda()` and `device='cuda'`, runs under a TorchFunctionMode that makes `Tensor.cuda` the
identity and turns device='cuda' into the CPU.

    python bench/unforeseen_vs_reference.py [--n 500] [--attacks stadv recolor jpeg corruptions] [--threads 1] [--parallel]
                                            [--ref-path DIR] [--corruption-images 4]
                                            [--out bench/results/unforeseen_vs_reference.json]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.abc
import importlib.machinery
import inspect
import json
import multiprocessing
import os
import platform
import sys
import time
import types
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from eatai.attacks.color import recolor
from eatai.attacks.jpeg import COEFFICIENT_SCALE, jpeg_attack, jpeg_contains
from eatai.attacks.spatial import stadv
from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import get_threat
from eatai.evaluation.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, corrupt, corruption_seed
from eatai.evaluation.recolor import TOLERANCE as RECOLOR_TOLERANCE
from eatai.evaluation.streams import point_generators
from eatai.models import load_model

ATTACKS = ('stadv', 'recolor', 'jpeg', 'corruptions')
THREATS = {'stadv': 'stadv:0.05', 'recolor': 'recolor:0.06', 'jpeg': 'jpeg:0.25'}
STEPS = {'stadv': 100, 'recolor': 100, 'jpeg': 200}   # perceptual-advex README (CIFAR-10); advex-uar's calibrations


# ---- the reference packages, imported from --ref-path with the shims the docstring describes

class _StubModule(types.ModuleType):
    """A module of `robustness`: any name is an empty class (DATASETS an empty dict, as datasets.py fills it)."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return {} if name == 'DATASETS' else type(name, (nn.Module,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == 'robustness' or fullname.startswith('robustness.'):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


class CudaOnCpu(TorchFunctionMode):
    """Inside it, `Tensor.cuda()` returns the tensor itself and device='cuda' means the CPU (advex-uar on a CPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        device = kwargs.get('device')
        if device is not None and torch.device(device).type == 'cuda':
            kwargs = {**kwargs, 'device': 'cpu'}
        return func(*args, **kwargs)


def reference_attacks(path: str):
    """perceptual_advex.attacks, imported from `path`."""
    if not Path(path, 'perceptual_advex').is_dir():
        sys.exit(f"no perceptual_advex under {path}: build it with pip install --no-deps --target {path} "
                 f"perceptual-advex==0.2.6 recoloradv==0.0.1 advex-uar==0.0.6.dev0 six")
    sys.path.insert(0, path)
    if 'torchvision.models.utils' not in sys.modules:
        shim = types.ModuleType('torchvision.models.utils')
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules['torchvision.models.utils'] = shim
    sys.meta_path.insert(0, _StubFinder())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import perceptual_advex.attacks as attacks
    return attacks


# ---- measuring

class Clock:
    """Wall and CPU seconds (this process's) of a block: on a shared machine the CPU seconds are the fairer cost."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def seconds(self) -> dict:
        return {'seconds': self.wall, 'cpu_seconds': self.cpu}


def robust(model, x_adv, y, clean) -> torch.Tensor:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y) & clean


def compare(threat: str, clean, ours: dict, ref: dict) -> dict:
    """The row of one attack: each side's figures, the difference and the points only one side breaks."""
    ok_ours, ok_ref = ours.pop('robust_flags'), ref.pop('robust_flags')
    ours['robust'] = ok_ours.float().mean().item()
    ref['robust'] = ok_ref.float().mean().item()
    return {'threat': threat, 'eatai': ours, 'reference': ref,
            'difference_points': 100 * (ours['robust'] - ref['robust']),
            'broken_only_by_eatai': int((ok_ref & ~ok_ours).sum()), 'broken_only_by_reference': int((ok_ours & ~ok_ref).sum())}


def run_stadv(model, refs, x, y, clean) -> dict:
    threat = get_threat(THREATS['stadv'])
    bound = threat.strength
    gens = point_generators(f"0|{threat.name}|{threat.family}", x, y)   # as evaluate_robustness(seed=0) draws them
    with Clock() as clock:
        x_ours, flow = stadv(model, x, y, bound, n_iter=STEPS['stadv'], generators=gens)
    ours = {**clock.seconds(), 'size': flow.abs().max().item(),
            'contains': int(threat.contains(x, x_ours).sum()), 'robust_flags': robust(model, x_ours, y, clean)}
    attack = refs.StAdvAttack(model, bound=bound, num_iterations=STEPS['stadv'])
    attack._setup_attack()
    with Clock() as clock, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        x_ref, *_, perturbation = attack.attack.attack(x, y)   # StAdvAttack.forward returns its [0]
    xform = perturbation.xform
    grid = xform.xform_params.detach() - xform.identity_params(x.shape)
    ref = {**clock.seconds(), 'size': grid.abs().max().item(),
           'contains': int(threat.contains(x, x_ref.detach()).sum()), 'robust_flags': robust(model, x_ref.detach(), y, clean)}
    out = compare(str(threat), clean, ours, ref)
    out['bound'] = bound
    out['size_unit'] = "flow l-inf (normalised coordinates), from the returned parameters"
    return out


def run_recolor(model, refs, x, y, clean) -> dict:
    threat = get_threat(THREATS['recolor'])
    eps = threat.strength
    gens = point_generators(f"0|{threat}|{threat.family}", x, y)
    with Clock() as clock:
        x_ours, offsets = recolor(model, x, y, eps, n_iter=STEPS['recolor'], generators=gens)
    size = threat.size(x, x_ours)
    ours = {**clock.seconds(), 'size': size.max().item(), 'parameters': offsets.abs().max().item(),
            'over_bound': int((size > eps + RECOLOR_TOLERANCE).sum()), 'contains': int(threat.contains(x, x_ours).sum()),
            'robust_flags': robust(model, x_ours, y, clean)}
    attack = refs.ReColorAdvAttack(model, bound=eps, num_iterations=STEPS['recolor'])
    attack._setup_attack()
    with Clock() as clock, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        x_ref, *_, perturbation = attack.attack.attack(x, y)
    x_ref = x_ref.detach()
    xform = perturbation.xform
    size = threat.size(x, x_ref)
    ref = {**clock.seconds(), 'size': size.max().item(),
           'parameters': (xform.xform_params.detach() - xform.identity_params).abs().max().item(),
           'over_bound': int((size > eps + RECOLOR_TOLERANCE).sum()), 'contains': int(threat.contains(x, x_ref).sum()),
           'robust_flags': robust(model, x_ref, y, clean)}
    out = compare(str(threat), clean, ours, ref)
    out['bound'] = eps
    out['size_unit'] = "largest per-pixel colour change, rescaled CIELUV l-inf (ReColorThreat.size), from the images"
    return out


def run_jpeg(model, refs, x, y, clean) -> dict:
    threat = get_threat(THREATS['jpeg'])
    eps = threat.strength
    gens = point_generators(f"0|{threat}|{threat.family}", x, y)
    with Clock() as clock:
        x_ours, delta = jpeg_attack(model, x, y, eps, n_iter=STEPS['jpeg'], generators=gens)
    ours = {**clock.seconds(), 'size': delta.linf().max().item() / COEFFICIENT_SCALE,
            'contains': int(jpeg_contains(x, x_ours, eps).sum()), 'robust_flags': robust(model, x_ours, y, clean)}
    attack = refs.JPEGLinfAttack(model, 'cifar', bound=eps, num_iterations=STEPS['jpeg'])
    final = []                                        # advex-uar's cat_var: coefficient change = cat_var / 2
    make = attack.attack_fn

    def recording():
        wrapper = make()
        run_one = wrapper._run_one_pgd

        def run(*args, **kwargs):
            cat_var = run_one(*args, **kwargs)
            final.append(cat_var.detach().clone())
            return cat_var
        wrapper._run_one_pgd = run
        return wrapper
    attack.attack_fn = recording
    torch.manual_seed(0)                              # advex-uar draws its start from torch's global generator
    with Clock() as clock, CudaOnCpu(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        x_ref = attack(x, y).detach()
    ref = {**clock.seconds(), 'size': final[0].abs().max().item() * 0.5 / COEFFICIENT_SCALE,
           'contains': int(jpeg_contains(x, x_ref, eps).sum()), 'robust_flags': robust(model, x_ref, y, clean)}
    out = compare(str(threat), clean, ours, ref)
    out['bound'] = eps
    out['size_unit'] = "quantised-coefficient change / 0.5 (the strength's units), from the returned parameters"
    return out


def run_corruptions(x: torch.Tensor) -> dict:
    """Every (type, severity) cell on the images x: eatai's `corrupt` against the library called directly."""
    import imagecorruptions
    from imagecorruptions import corruptions as library
    images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()   # (N, H, W, 3) uint8, as eatai feeds it
    cells, t = {}, time.perf_counter()
    for name in CORRUPTIONS + EXTRA_CORRUPTIONS:
        takes_seed = 'seed' in inspect.signature(getattr(library, name)).parameters
        for severity in SEVERITIES:
            ours = corrupt(x, name, severity, seed=0)
            ours = (ours * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            direct = []
            for image in images:
                s = corruption_seed(image, name, severity, 0)
                np.random.seed(s)
                direct.append(imagecorruptions.corrupt(image, severity=severity, corruption_name=name,
                                                       **({'seed': s} if takes_seed else {})))
            direct = np.stack(direct)
            cells[f'{name}/{severity}'] = int(np.abs(ours.astype(int) - direct.astype(int)).max())
    return {'images': len(x), 'types': len(CORRUPTIONS + EXTRA_CORRUPTIONS), 'severities': len(SEVERITIES),
            'cells': len(cells), 'identical': sum(v == 0 for v in cells.values()),
            'differing': {k: v for k, v in cells.items() if v}, 'seconds': time.perf_counter() - t}


RUNS = {'stadv': run_stadv, 'recolor': run_recolor, 'jpeg': run_jpeg}
_SHARED: tuple = ()   # (model, refs, x, y, clean, threads): what forked workers inherit


def _worker(name: str) -> dict:
    model, refs, x, y, clean, threads = _SHARED
    torch.set_num_threads(threads)
    return RUNS[name](model, refs, x, y, clean)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=500, help='test points (the first n of the bundled sample, 500 at most)')
    parser.add_argument('--attacks', nargs='+', choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument('--ref-path', default=os.environ.get('EATAI_REF_PATH', '/tmp/refpkgs'),
                        help='the folder the reference packages were pip-installed into (--target)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process')
    parser.add_argument('--parallel', action='store_true',
                        help='run the attacks at once, one forked process each (each pair still one after the other)')
    parser.add_argument('--corruption-images', type=int, default=4)
    parser.add_argument('--out', default='bench/results/unforeseen_vs_reference.json')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(DEMO_CHECKPOINT).eval()
    _, _, x_all, y_all = load_sample()
    x, y = x_all[:args.n], y_all[:args.n]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    results = {}
    attacks = [a for a in args.attacks if a != 'corruptions']
    refs = reference_attacks(args.ref_path) if attacks else None
    if args.parallel and len(attacks) > 1:
        global _SHARED
        _SHARED = (model, refs, x, y, clean, args.threads)
        with multiprocessing.get_context('fork').Pool(len(attacks)) as pool:
            rows = pool.map(_worker, attacks)
    else:
        rows = [RUNS[name](model, refs, x, y, clean) for name in attacks]
    for name, r in zip(attacks, rows):
        results[name] = r
        e, f = r['eatai'], r['reference']
        print(f"{r['threat']}: eatai {100 * e['robust']:.1f}% ({e['cpu_seconds']:.0f} CPU s, size {e['size']:.4f}), "
              f"reference {100 * f['robust']:.1f}% ({f['cpu_seconds']:.0f} CPU s, size {f['size']:.4f}), "
              f"difference {r['difference_points']:+.1f} points; broken only by eatai {r['broken_only_by_eatai']}, "
              f"only by the reference {r['broken_only_by_reference']}", flush=True)
    if 'corruptions' in args.attacks:
        c = run_corruptions(x_all[:args.corruption_images])
        results['corruptions'] = c
        print(f"corruptions: {c['identical']} of {c['cells']} (type, severity) cells pixel-identical on {c['images']} "
              f"images ({c['seconds']:.0f} s)", flush=True)
    versions = {}
    for dist in ('perceptual-advex', 'recoloradv', 'advex-uar', 'imagecorruptions-imaug'):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:   # the reference folder is on sys.path only if an attack ran
            pass
    out = {'provenance': {'command': ' '.join(['python', 'bench/unforeseen_vs_reference.py']
                                              + (sys.argv[1:] if argv is None else argv)),
                          'date': datetime.date.today().isoformat(),
                          'machine': f"{platform.machine()} cpu, {args.threads} thread{'s' if args.threads > 1 else ''}"
                                     + (f" in each of {len(attacks)} processes" if args.parallel and len(attacks) > 1 else ''),
                          'torch': torch.__version__},
           'args': vars(args), 'n': len(x), 'clean': clean.float().mean().item(), 'steps': STEPS,
           'versions': versions, 'results': results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + '\n')
    return out


if __name__ == '__main__':
    main()
