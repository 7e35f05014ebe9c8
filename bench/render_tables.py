"""Render the tables of measured figures in README.md and docs/ from the JSON files under bench/results/.

One home per number: a figure lives in one JSON under bench/results/ (written by the bench script that
measured it, or transcribed with its provenance), and a page shows it only through a generated block
between two markers:

    <!-- table:NAME -->
    (generated: a caption naming the command, date and machine, and a Markdown table)
    <!-- /table:NAME -->

NAME is a key of TABLES below, which says which JSON files the block is made from and how. Usage:

    python bench/render_tables.py            # rewrite every marked block of README.md and docs/**/*.md
    python bench/render_tables.py --check    # rewrite nothing; exit 1 listing the pages that differ

To change a figure, rerun its bench command (it writes the JSON) or edit the JSON, then run this
script; never edit a generated block by hand. tests/test_rendered_tables.py fails when a page and
its JSON disagree. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'results'

# markers stand alone on their lines (a marker quoted in prose, `<!-- table:NAME -->`, is not one)
BLOCK = re.compile(r'^(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)^(<!-- /table:(?P=name) -->)$', re.S | re.M)
OPEN = re.compile(r'^<!-- table:([\w-]+) -->$', re.M)

SCHEME = {'clean': 'clean epoch', 'linf': 'l-inf AT', 'l2': 'l2-AT', 'l1': 'l1-AT', 'eat': 'E-AT', 'max': 'MAX',
          'avg': 'AVG', 'msd': 'MSD', 'sat': 'SAT', 'ramp': 'RAMP', 'ramp+gp': 'RAMP + GP',
          'eat+trades': 'E-AT + TRADES', 'eat-pair': 'eat-pair'}
NORM = {'linf': 'l-inf', 'l2': 'l2', 'l1': 'l1'}
MODEL = {'preact_resnet18': 'PreAct ResNet-18', 'cifar_cnn': '`cifar_cnn` (tiny)', 'vit_small_patch4_32': 'ViT-S/4',
         'xcit_small_12_p4_32': 'XCiT-S12/4'}
KEYS = ('clean', 'linf', 'l2', 'l1', 'union')
WORDS = {0: 'no', 1: 'one', 2: 'two', 3: 'three', 4: 'four', 5: 'five'}


# ---- formatting ----

def pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage, e.g. 0.296 -> '29.6'."""
    return f'{100 * x:.{digits}f}'


def threat_label(threat: str) -> str:
    """'linf:8/255' -> 'l-inf 8/255'."""
    norm, _, eps = threat.partition(':')
    return f'{NORM.get(norm, norm)} {eps}'.strip()


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def caption(data: dict, what: str = '') -> str:
    """`command` (date, machine; note): what -- from the JSON's provenance, else from the args a script wrote."""
    # provenance as a block, or as top-level keys (as bench/attack_syncs.py writes them)
    p = data.get('provenance') or ({k: data[k] for k in ('command', 'date', 'machine', 'note') if k in data}
                                   if 'command' in data else None)
    if p:
        where = ', '.join(x for x in (p.get('date'), p.get('machine')) if x)
        if p.get('note'):
            where += f"; {p['note']}"
        head = f"`{p['command']}` ({where})"
    else:
        head = f"run with {json.dumps(data.get('args', {}))} (no provenance recorded)"
    return f'{head}{": " + what if what else ""}'


def minutes_seconds(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f'{m} min {s} s' if m else f'{s} s'


# ---- the tables ----

class Table(NamedTuple):
    files: tuple[str, ...]
    render: Callable[..., str]


TABLES: dict[str, Table] = {}


def register(*files: str):
    def wrap(fn):
        TABLES[fn.__name__] = Table(files, fn)
        return fn
    return wrap


@register('training_cost_defaults.json')
def training_cost_defaults(d):
    rows = [[SCHEME.get(s, s), f'{r:.2f}', str(d['paper_ratio_to_linf'].get(s, ''))]
            for s, r in d['ratio_to_linf'].items() if s != 'linf']
    return (caption(d, "seconds per epoch divided by l-inf AT's, and the paper's ratio") + '\n\n'
            + table(['scheme', 'time per epoch / l-inf AT', 'paper'], rows))


@register('training_cost.json')
def training_cost(d):
    sec, ratio = d['seconds_per_epoch'], d['ratio_to_linf']
    rows = [[SCHEME.get(s, s), f'{sec[s]:.2f}', f'{ratio[s]:.2f}', f"{sec[s] / sec['eat']:.2f}" if 'eat' in sec else '']
            for s in sec]
    text = (caption(d, 'seconds per epoch of each scheme, divided by l-inf AT\'s and by E-AT\'s') + '\n\n'
            + table(['scheme', 'seconds per epoch', '/ l-inf AT', '/ E-AT'], rows))
    if {'ramp', 'ramp+gp', 'clean'} <= set(sec):
        text += f"\n\nGradient projection adds {(sec['ramp+gp'] - sec['ramp']) / sec['clean']:.2f} clean epochs to RAMP's."
    return text


@register('ramp_floor.json')
def ramp_floor(d):
    f, sec = d['floor_seconds'], d['seconds_per_epoch']
    floor = f['linf_attack'] + f['l1_attack'] + 2 * f['step_on_B_points']
    dearer = "l1's attack costs more than l-inf's" if f['l1_attack'] > f['linf_attack'] else "l-inf's attack costs more than l1's"
    return (caption(d) + f": l-inf AT {sec['linf']:.2f} s per epoch; RAMP's floor "
            f"{f['linf_attack']:.2f} + {f['l1_attack']:.2f} + 2 x {f['step_on_B_points']:.2f} = {floor:.2f} s "
            f"({floor / sec['linf']:.2f}x l-inf AT: {dearer}); RAMP took {sec['ramp']:.2f} s, "
            f"{100 * (sec['ramp'] / floor - 1):.1f}% above it.")


def _ratio_cell(v) -> str:
    return f'{v[0]:.2f}-{v[1]:.2f}' if isinstance(v, list) else f'{v:.2f}'


@register('attack_cost.json')
def attack_cost(d):
    n_iter = d.get('args', {}).get('n_iter', 10)
    norms = list(next(iter(d['results'].values()))['ratio_to_exact_floor'])
    rows = [[MODEL.get(m, m)] + [_ratio_cell(r['ratio_to_exact_floor'][n]) for n in norms] for m, r in d['results'].items()]
    notes = [f"`{m}`: {r['seconds']['fwd+bwd']:.2f} s per forward + backward" for m, r in d['results'].items()
             if 'fwd+bwd' in r.get('seconds', {})]
    return (caption(d, f'{n_iter}-step APGD divided by its {n_iter + 1} forwards + {n_iter} backwards') + '\n\n'
            + table(['model'] + [NORM[n] for n in norms], rows) + ('\n\n' + '; '.join(notes) + '.' if notes else ''))


@register('apgd_strength.json')
def apgd_strength(d):
    a = d['args']
    rows = [[threat_label(t), pct(r['eatai']), pct(r['autoattack'])] for t, r in d['results'].items()]
    return (caption(d, f"robust accuracy (%) under {a['n_iter']}-step APGD-CE, first {a['n']} sample test images")
            + '\n\n' + table(['threat', "eatai's training APGD", "AutoAttack's APGD"], rows))


@register('precision.json')
def precision(d):
    a = d['args']
    dtypes = list(next(iter(d['results'].values())))
    rows = [[threat_label(t)] + [pct(r[k]['robust_accuracy']) for k in dtypes] for t, r in d['results'].items()]
    return (caption(d, f"robust accuracy (%) under {a['n_iter']}-step APGD, the attack in each precision, "
                       f"first {a['n']} sample test images") + '\n\n'
            + table(['threat'] + [k if k == 'fp32' else f'{k} autocast' for k in dtypes], rows))


@register('distributed.json')
def distributed(d):
    one, two = d['one_process'], d['two_processes']
    return (caption(d, 'E-AT fine-tuning, seconds per epoch') + '\n\n'
            + table(['processes', 'seconds per epoch', 'speed-up'], [['1', f'{one:.1f}', '1.00'],
                                                                    ['2', f'{two:.1f}', f'{one / two:.2f}']]))


@register('gp_cost.json')
def gp_cost(d):
    rows = [['clean epoch', f"{d['seconds']['clean']:.2f}", '', '']]
    for s, r in d['gp'].items():
        rows.append([SCHEME.get(s, s), f"{r['seconds']:.2f}", f"{r['seconds_gp']:.2f} (x{r['ratio_gp']:.2f})",
                     f"{r['added_seconds']:.2f} s = {r['added_over_clean']:.2f} clean epochs "
                     f"({r['in_gp_seconds']:.2f} s inside GP's hooks)"])
    return caption(d) + ':\n\n' + table(['training', 'seconds', 'with GP', 'GP adds'], rows)


@register('architectures.json')
def architectures(d):
    rows, base = d['rows'], d['rows'][0]
    cells = [[MODEL.get(r['name'], r['name']), f"`{r['name']}`", f"{r['seconds_per_step']:.2f}",
              f"{r['seconds_per_step'] / base['seconds_per_step']:.1f}x"] for r in rows]
    return (caption(d, f"seconds per SGD step at batch {d['args']['bs']}, median of {d['args']['steps']} steps")
            + '\n\n' + table(['architecture', 'name', 'seconds per step', f"/ {MODEL.get(base['name'], base['name'])}"], cells))


def _result_cells(r: dict) -> list[str]:
    robust = list(r['robust'].values())
    return [pct(r['clean'])] + [pct(v) for v in robust] + [pct(r['union'])]


@register('eval_budgets.json')
def eval_budgets(d):
    budgets = [k for k in d if k != 'provenance']
    threats = list(d[budgets[0]]['robust'])
    rows = [[f"`'{b}'`"] + _result_cells(d[b]) + [minutes_seconds(d[b]['wall_seconds'])] for b in budgets]
    std, quick = d['standard'], d['quick']
    over = max([quick['robust'][t] - std['robust'][t] for t in threats] + [quick['union'] - std['union']])
    return (caption(d, f"robust accuracy (%) of the bundled checkpoint on {std['n']} sample test images") + '\n\n'
            + table(['budget', 'clean'] + [threat_label(t) for t in threats] + ['union', 'time'], rows)
            + f'\n\nThe quick budget overstates robust accuracy by up to {pct(over)} points.')


@register('eval_cost.json')
def eval_cost(d):
    p1, p2 = d['part1'], d['part2']
    s = p1['seconds']
    r_norm, r_naive = p1['ratio union_only / per norm'], p1['ratio union_only / naive']
    rows = [['naive: AutoAttack (APGD-CE + APGD-T) per norm, every point', f"{s['naive']:.1f}", f'{r_naive:.2f}x'],
            ['eatai per norm', f"{s['eatai per norm']:.1f}", f'{r_norm:.2f}x'],
            ['eatai `union_only`', f"{s['eatai union_only']:.1f}", '']]
    met = 'met' if r_norm <= 0.6 and r_naive <= 0.4 else 'not met'
    union = p1['robust']['eatai per norm']['union']
    differ = {t: v for t, v in p1['naive vs eatai per norm: differing points'].items() if v and t != 'union'}
    if differ:
        parts = []
        for t, points in differ.items():
            same = math.isclose(p1['robust']['naive'][t], p1['robust']['eatai per norm'][t], abs_tol=1e-6)
            ways = f", {'one' if len(points) == 2 else 'as many'} each way" if same else ''
            parts.append(f"{len(points)} {NORM[t.split(':')[0]]} points{ways}")
        agree = f"naive and eatai differ on {', '.join(parts)} (random starts drawn differently)"
    else:
        agree = 'naive and eatai agree on every point'
    std, full = p2['standard'], p2['autoattack']
    t_std = sum(round(v) for v in std['seconds'].values())
    t_full = sum(round(v) for v in full['seconds'].values())
    threats = list(std['robust'])
    rows2 = [['standard (APGD-CE, APGD-T)'] + _result_cells(std)[1:] + [f'{t_std}'],
             ['full AutoAttack (APGD-CE, APGD-T, FAB-T, Square)'] + _result_cells(full)[1:] + [f'{t_full} ({t_full / t_std:.1f}x)']]
    extra = p2['broken only by FAB-T/Square']['union']
    total = sum(s.values()) + sum(std['seconds'].values()) + sum(full['seconds'].values())
    return (caption(d, f"the bundled checkpoint, first {d['n']} sample test images, {d['budget']}, "
                       f"{total / 60:.0f} min in all") + '\n\n'
            + table(['protocol', 'seconds', '`union_only` / it'], rows)
            + f"\n\nGoals (`union_only` at most 0.6x eatai per norm, 0.4x naive) {met}: the {pct(union)}% of points "
              f"robust in the union still get every attack in every norm, and APGD-T is most of the cost. "
              f"`union_only`'s union {'is identical to' if p1['union_only union == per-norm union'] else 'differs from'} "
              f"the per-norm union; {agree}.\n\n"
            + table(['budget'] + [threat_label(t) for t in threats] + ['union', 'seconds'], rows2)
            + f"\n\nFAB-T and Square broke {WORDS.get(len(extra), len(extra))} point{'s' if len(extra) != 1 else ''} "
              f"APGD missed.")


@register('eval_cost_check_bs.json')
def eval_cost_check_bs(d):
    p1 = d['part1']
    other = p1['per norm, other bs: differing points']
    same_bs = all(not v for r in other.values() for v in r.values())
    bs = ' and '.join([str(d['bs'])] + list(other))
    return (caption(d) + f": the flags of bs {bs} {'were identical' if same_bs else 'differed'}, `union_only`'s union "
            f"{'was identical to' if p1['union_only union == per-norm union'] else 'differed from'} the per-norm union, "
            f"at {p1['ratio union_only / per norm']:.2f}x the time of the per-norm evaluation "
            f"({p1['ratio union_only / naive']:.2f}x the naive protocol's).")


_ATTACK = {'apgd-ce': 'APGD-CE', 'apgd-t': 'APGD-T', 'stadv': 'StAdv', 'recoloradv': 'ReColorAdv', 'jpeg-pgd': 'JPEG PGD'}


@register('eval_cost_unforeseen.json')
def eval_cost_unforeseen(d):
    p3 = d['part3']
    pp, full, corr = p3['per point'], p3.get('full'), p3['corruptions']
    rows = []
    for key, sec in pp['seconds per point'].items():
        attack, threat = key.split(' ', 1)
        rows.append([f"{_ATTACK.get(attack, attack)}, {threat_label(threat)}", f"{pp['steps'][key]}",
                     f'{1000 * sec:.0f}', f"{pp['ratio to apgd-ce linf'][key]:.2f}x"])
    text = (caption(d, f"the bundled checkpoint, {p3['data']}")
            + f"\n\nSeconds per attacked point ({pp['attacked']} clean-correct of the first {pp['n']} points, the "
              "faster of two runs), each attack alone at the standard budget's steps:\n\n"
            + table(['attack', 'steps', 'ms per point', 'vs APGD-CE l-inf'], rows)
            + f"\n\nCommon corruptions (`corruption_eval`: {corr['cells']} cells, 15 corruptions x 5 severities) of "
              f"{corr['n']} points: {minutes_seconds(corr['seconds first'])} with an empty cache (generating), "
              f"{minutes_seconds(corr['seconds cached'])} cached (mCA {pct(corr['mCA'])}%).")
    if full is None:
        return text + ("\n\nThe full unforeseen evaluation of 1,000 points (`--pieces full --unforeseen-n 1000`) "
                       "has not been measured yet.")
    steps = sorted(full['steps'].items(), key=lambda kv: -kv[1]['seconds'])
    total = sum(v['seconds'] for v in full['steps'].values())
    rows2 = [[f"{_ATTACK.get(k.split(' ', 1)[0], k.split(' ', 1)[0])}, {threat_label(k.split(' ', 1)[1])}",
              f"{v['attacked']}", f"{v['seconds']:.0f}", f"{100 * v['seconds'] / total:.0f}%"] for k, v in steps]
    lp = sum(v['seconds'] for k, v in full['steps'].items() if k.split(' ', 1)[1] in full['union'])
    group = full['unforeseen']
    return (text
            + f"\n\nThe full unforeseen evaluation (`robust_eval(unforeseen=True)`: the l_p union and the unforeseen "
              f"group, {full['budget']}) of {full['n']} points took {minutes_seconds(full['seconds'])} "
              f"(clean {pct(full['clean'])}%, union {pct(full['union accuracy'])}%, unforeseen average "
              f"{pct(group['average'])}%, worst {pct(group['worst'])}%); the l_p union's three threats took "
              f"{100 * lp / total:.0f}% of the attacks' time. Where it went:\n\n"
            + table(['attack, threat', 'points attacked', 'seconds', 'share'], rows2))


def _finetune(d, *, seeds: bool) -> str:
    st = d['settings']
    start = d['start']
    rows = [['l-inf AT (the start)'] + [pct(start[k]) for k in KEYS[:-1]] + [f'**{pct(start["union"])}**']
            + (['', ''] if seeds else [])]
    if seeds:
        summ = d['summary']
        eat = summ.get('eat')
        for scheme, r in summ.items():
            union = f"**{pct(r['union'][0])} ± {pct(r['union'][1])}**"
            vs = time = ''
            if eat and scheme != 'eat':
                (ma, sa), (mb, sb) = r['union'], eat['union']
                pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
                vs = f'{100 * (ma - mb):+.1f} ({(ma - mb) / pooled:+.2f} sd)'
            if eat:
                time = f"{r['seconds_per_epoch']:.1f} ({r['seconds_per_epoch'] / eat['seconds_per_epoch']:.1f}x)"
            rows.append([f'+ {SCHEME.get(scheme, scheme)}'] + [pct(r[k][0]) for k in KEYS[:-1]] + [union, time, vs])
        n = max(r['n_seeds'] for r in summ.values())
        what = (f"{st['ft_epochs']} epochs of fine-tuning on {st['n_train']:,} images; robust accuracy (%) on "
                f"{st['n_eval']} test points, quick budget, mean ± std over {n} seeds; every run is kept in the JSON")
        header = ['model', 'clean', 'l-inf', 'l2', 'l1', 'union', 'seconds per epoch (/ E-AT)', 'union - E-AT (pooled sd)']
    else:
        for key, run in d['runs'].items():
            r = run['quick']
            rows.append([f"+ {SCHEME.get(key.split('/')[0], key)}"] + [pct(r[k]) for k in KEYS[:-1]] + [f"**{pct(r['union'])}**"])
        what = (f"{st['ft_epochs']} epochs of fine-tuning on {st['n_train']:,} images; robust accuracy (%) on "
                f"{st['n_eval']} test points, quick budget, one seed")
        header = ['model', 'clean', 'l-inf', 'l2', 'l1', 'union']
    text = caption(d, what) + '\n\n' + table(header, rows)
    standard = [(k.split('/')[0], run['standard']['union']) for k, run in d['runs'].items()
                if 'standard' in run and k.endswith('/0')]
    if standard:
        text += ('\n\nStandard budget (APGD-CE + APGD-T), seed 0, union: '
                 + ', '.join(f'{SCHEME.get(s, s)} {pct(u)}' for s, u in standard) + '.')
    return text


@register('finetune_mini.json')
def finetune_mini(d):
    return _finetune(d, seeds=True)


@register('finetune_mini_10k.json')
def finetune_mini_10k(d):
    return _finetune(d, seeds=False)


UNSEEN = {'stadv': 'StAdv', 'recolor': 'ReColorAdv', 'jpeg': 'JPEG'}


def _mean_sd(cell) -> str:
    m, s = cell
    return pct(m) if s is None else f'{pct(m)} ± {pct(s)}'


@register('finetune_mini_unforeseen.json')
def finetune_mini_unforeseen(d):
    st, start, summ = d['settings'], d['start'], d['summary']
    keys = ('clean', 'union', 'unforeseen_avg', 'unforeseen_worst', 'mca')
    threats = list(start['unforeseen'])
    label = {t: f"{UNSEEN.get(t.split(':')[0], NORM.get(t.split(':')[0]))} {t.split(':')[1]}" for t in threats}
    rows = [['l-inf AT (the start)', ''] + [pct(start[k]) for k in keys]]
    rows += [[f'+ {SCHEME.get(s, s)}', str(r['n_seeds'])] + [_mean_sd(r[k]) for k in keys] for s, r in summ.items()]
    rows2 = [['l-inf AT (the start)'] + [pct(start['unforeseen'][t]) for t in threats]]
    rows2 += [[f'+ {SCHEME.get(s, s)}'] + [pct(r['unforeseen'][t]) for t in threats] for s, r in summ.items()]
    seeds = sorted({r['n_seeds'] for r in summ.values()})
    n = ('no fine-tuned run yet' if not seeds else f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1
         else f"{'-'.join(map(str, seeds))} seeds (column seeds)")
    sev = st['severities']
    what = (f"{st['ft_epochs']} epochs of fine-tuning on {st['n_train']:,} images, as above; accuracy (%) on the first "
            f"{st['n_eval']} test points, quick budget for every attack (20 steps for StAdv, ReColorAdv and JPEG); "
            f"unforeseen avg: the mean of the six unforeseen threats' accuracies, worst: robust to all six at once, "
            f"mCA: 15 corruptions at severities "
            f"{sev[0]}-{sev[-1]} on the first {st['n_corrupt']} points (ImageNet-C's parameters, harsher than CIFAR-10-C's); "
            f"mean ± std over {n}")
    return (caption(d, what) + '\n\n'
            + table(['model', 'seeds', 'clean', 'l_p union', 'unforeseen avg', 'unforeseen worst', 'mCA'], rows)
            + '\n\nPer unforeseen threat (mean over seeds):\n\n' + table(['model'] + [label[t] for t in threats], rows2))


@register('curves.json')
def curves(d):
    a = d['args']
    threats = list(dict.fromkeys(r['threat'] for r in d['rows']))
    rows = []
    for model, clean in d['clean'].items():
        mine = {r['threat']: r for r in d['rows'] if r['model'] == model}
        rows.append([f'{model}, clean {pct(clean, 0)}', 'curve at eps'] + [pct(mine[t]['curve_at_eps'], 0) for t in threats])
        rows.append(['', f"APGD-CE + APGD-T ({a['budget']})"] + [pct(mine[t]['apgd_robust'], 0) for t in threats])
    tol = [r['tolerance'] for r in d['rows']]
    off = [r for r in d['rows'] if abs(r['curve_at_eps'] - r['apgd_robust']) > r['tolerance']]
    if off:
        exceptions = ' except ' + '; '.join(f"{r['model']} in {NORM[r['threat'].split(':')[0]]}: "
                                            f"{pct(r['curve_at_eps'], 0)} against {pct(r['apgd_robust'], 0)}" for r in off)
    else:
        exceptions = ' everywhere'
    return (caption(d, f"robust accuracy (%) at the evaluated radius on the first {a['n']} sample test points, "
                       f"{a['n_iter']} APGD-CE steps per radius for the curves") + '\n\n'
            + table(['model', ''] + [threat_label(t) for t in threats], rows)
            + f"\n\nThe curve agrees with APGD within two binomial standard errors ({pct(min(tol))} to "
              f"{pct(max(tol))} points on {a['n']} points){exceptions}.")


@register('mutation.json')
def mutation(d):
    rows = []
    for m in d['modules']:
        non_equivalent = m['mutants'] - m['equivalent']
        killed = m['killed'] + m['killed_later'] + m['killed_outside_mutmut']
        cell = str(m['killed'])
        if m['killed_later']:
            cell += f" + {m['killed_later']}"
        if m['killed_outside_mutmut']:
            cell += f" (+ {m['killed_outside_mutmut']} outside mutmut)"
        share = 100 * killed / non_equivalent
        time = ', then '.join(f'{s} s' for s in m['seconds'])
        if m['survivor_seconds']:
            time += ', then survivors ' + ' + '.join(f'{s} s' for s in m['survivor_seconds'])
        rows.append([f"{m['module']} ({m['files']})" if m.get('files') else m['module'], str(m['mutants']), cell,
                     str(m['equivalent']), str(non_equivalent - killed), '100%' if killed == non_equivalent else f'{share:.1f}%',
                     time])
    return (caption(d) + ':\n\n'
            + table(['module', 'mutants', 'killed', 'equivalent', 'real, not killed', 'killed of the non-equivalent',
                     'time'], rows))


@register('zoo_check.json')
def zoo_check(d):
    return (caption(d) + f": {d['passed']} of {d['entries']} entries have RobustBench's parameter count and load "
            f"its state-dict layout strictly (robustbench {d['robustbench']}'s files).")


@register('eval_floor.json')
def eval_floor(d):
    p = d['part1']
    s, floor = p['seconds'], p['floor seconds']
    rows = [['the floor: the cheapest order of the same attacks for the same verdicts', f'{floor:.1f}', '1.00'],
            ['eatai `union_only` (order learned on its first chunk)', f"{s['eatai union_only']:.1f}", f"{p['ratio union_only / floor']:.2f}"],
            ['eatai per norm', f"{s['eatai per norm']:.1f}", f"{p['ratio per norm / floor']:.2f}"],
            ['naive: AutoAttack per norm, every point', f"{s['naive']:.1f}", f"{p['ratio naive / floor']:.2f}"]]
    simulated = '; '.join(f'{k}: {v:.3f}x' for k, v in p['simulated ratio to floor'].items())
    same = p['union_only union == per-norm union']
    return (caption(d, f"the bundled checkpoint, first {d['n']} sample test images, {d['budget']}") + '\n\n'
            + table(['protocol', 'seconds', '/ floor'], rows)
            + f"\n\n`union_only`'s union {'is identical to' if same else 'differs from'} the per-norm union, point by point. "
              f"The order it learned: {', '.join(f'`{a}`' for a in p['union_only learned order'])}. "
              f"Orders replayed on the per-norm run's log, as ratios to the floor: {simulated}.")


@register('attack_syncs.json', 'attack_syncs_before.json')
def attack_syncs(after, before):
    def counts(d):
        return {(r['attack'], r['n_iter']): r for r in d['results']}
    a, b = counts(after), counts(before)
    iters = sorted({n for _, n in a})
    attacks = list(dict.fromkeys(name for name, _ in a))
    rows = [[name] + [f"{b[name, n]['syncs']} → {a[name, n]['syncs']}" if (name, n) in b else str(a[name, n]['syncs'])
                      for n in iters]
            + [', '.join(f'{k} {v}' for k, v in sorted(a[name, iters[-1]]['by_kind'].items()))]
            for name in attacks]
    return (caption(after, f"host-device synchronisations per call, {after['args']['batch']} CIFAR-sized points; "
                           f"before (`{before['command']}` on {before.get('commit', 'the previous commit')}) → after")
            + '\n\n' + table(['attack'] + [f'{n} iterations' for n in iters] + ['kinds, after'], rows))


@register('compile.json')
def compile_cost(d):
    r, a = d['results'], d['args']
    kinds = ['eager', 'compiled model', '+ attack']
    rows = [[what] + [f"{r[what][k]['seconds']:.2f}" if k in r[what] else '' for k in kinds]
            + [f"{r[what]['compiled model']['first_call_s']:.1f}"] for what in r]
    breaks = '; '.join(f"{norm}: {g['breaks']} graph breaks" for norm, g in d.get('graph_breaks', {}).items())
    return (caption(d, f"seconds per call, {MODEL.get(a['arch'], a['arch'])}, batch {a['batch']}, {a['n_iter']}-step APGD, "
                       f"backend {a['backend']} on {a['device']}")
            + '\n\n' + table(['call', 'eager', 'compiled model', 'compiled model + attack step', 'first compiled call'], rows)
            + (f'\n\n{breaks}.' if breaks else ''))


_REFERENCE = {'stadv': "perceptual-advex's `StAdvAttack`",
              'recolor': "perceptual-advex's `ReColorAdvAttack` (recoloradv)",
              'jpeg': "advex-uar's `JPEGAttack` (perceptual-advex's `JPEGLinfAttack`)"}
_SIZE_UNIT = {'stadv': 'flow', 'recolor': 'pixel colour change', 'jpeg': 'coefficient change'}


@register('unforeseen_vs_reference.json')
def unforeseen_vs_reference(d):
    res, n = d['results'], d['n']
    rows, notes = [], []
    for key, r in res.items():
        if key == 'corruptions':
            continue
        e, f = r['eatai'], r['reference']
        rows.append([f"{threat_label(r['threat'])} ({d['steps'][key]} steps)", _REFERENCE.get(key, key), pct(e['robust']),
                     pct(f['robust']), f"{r['difference_points']:+.1f}",
                     f"{r['broken_only_by_eatai']} / {r['broken_only_by_reference']}",
                     f"{e['size']:.4f} / {f['size']:.4f} ({_SIZE_UNIT.get(key, 'size')}, bound {r['bound']:g})",
                     f"{e['cpu_seconds']:.0f} / {f['cpu_seconds']:.0f}"])
        if 'over_bound' in f:
            notes.append(f"{threat_label(r['threat'])}: {f['over_bound']} of the reference's {n} images change a pixel's "
                         f"colour by more than the bound, {e['over_bound']} of eatai's")
        elif key == 'jpeg' and 'contains' in f:
            notes.append(f"{threat_label(r['threat'])}: `eatai.attacks.jpeg.jpeg_contains` accepts {e['contains']} of eatai's {n} images and "
                         f"{f['contains']} of the reference's (it decodes the chroma-subsampled clean image plus its change)")
        elif 'contains' in f:
            notes.append(f"{threat_label(r['threat'])}: `StAdvThreat.contains` accepts {e['contains']} of eatai's {n} images and "
                         f"{f['contains']} of the reference's")
    text = (caption(d, f"robust accuracy (%) of the bundled checkpoint (clean {pct(d['clean'])}%) on the first {n} "
                       f"sample test images, each attack beside its authors' implementation with the same steps")
            + '\n\n' + table(['threat', 'reference implementation', 'eatai', 'reference', 'eatai - reference (points)',
                              'broken only by eatai / by the reference', 'largest size: eatai / reference',
                              'CPU seconds: eatai / reference'], rows))
    if notes:
        text += '\n\n' + '; '.join(notes) + '.'
    if 'corruptions' in res:
        c = res['corruptions']
        text += (f"\n\nCommon corruptions: {c['identical']} of {c['cells']} (corruption, severity) cells "
                 f"({c['types']} corruptions x {c['severities']} severities, {c['images']} images each) are pixel-identical "
                 f"to the `imagecorruptions` library called directly with the same seeds.")
    return text


# ---- pages ----

def pages(root: Path = ROOT) -> list[Path]:
    return [root / 'README.md'] + sorted(p for p in (root / 'docs').rglob('*.md') if 'notebooks' not in p.parts)


def load(files: tuple[str, ...], results: Path) -> list[dict]:
    return [json.loads((results / f).read_text()) for f in files]


def render(name: str, results: Path = RESULTS) -> str:
    """The generated text between the markers of table NAME, from the JSON under `results`."""
    if name not in TABLES:
        raise KeyError(f'unknown table {name!r}; known: {", ".join(sorted(TABLES))}')
    spec = TABLES[name]
    return '\n' + spec.render(*load(spec.files, results)).rstrip('\n') + '\n\n'


def marked(text: str) -> list[str]:
    """The table names a page marks, in order."""
    return OPEN.findall(text)


def render_page(text: str, results: Path = RESULTS) -> str:
    """The page with every marked block regenerated; an opening marker without its closing one is an error."""
    names = marked(text)
    closed = [m.group('name') for m in BLOCK.finditer(text)]
    if names != closed:
        raise ValueError(f"unclosed or nested table markers: {sorted(set(names) - set(closed)) or names}")
    return BLOCK.sub(lambda m: m.group(1) + render(m.group('name'), results) + m.group(4), text)


def stale(results: Path = RESULTS, root: Path = ROOT) -> list[Path]:
    """The pages whose marked tables differ from what their JSON renders to."""
    return [p for p in pages(root) if marked(p.read_text()) and render_page(p.read_text(), results) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='rewrite nothing; exit 1 if a page differs from its JSON')
    parser.add_argument('--results', type=Path, default=RESULTS, help='the folder of JSON files (default: bench/results)')
    parser.add_argument('--root', type=Path, default=ROOT, help='the repository whose README.md and docs/ to render')
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.results, args.root)
        for page in bad:
            print(f'{page.relative_to(args.root)}: its tables differ from bench/results; run python bench/render_tables.py')
        return 1 if bad else 0
    for page in pages(args.root):
        text = page.read_text()
        if marked(text):
            new = render_page(text, args.results)
            if new != text:
                page.write_text(new)
                print(f'rewritten: {page.relative_to(args.root)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
