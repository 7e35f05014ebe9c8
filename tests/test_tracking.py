"""The per-epoch columns and the final robust evaluation reach fastai's TensorBoardCallback, WandbCallback
(offline) and CSVLogger unchanged; each tracker's files are read back with its own reader."""
import json
import math
import struct
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_training import tiny_dls, tiny_learner

from eatai.evaluation import RobustResult
from eatai.callbacks.tracking import TRACKERS, log_robust_result, robust_csv_path, robust_scalars, tracker_callbacks, tracking

pytestmark = pytest.mark.usefixtures('one_thread')

EAT_COLUMNS = ['freq_linf', 'freq_l1', 'rerr_linf', 'rerr_l1', 'loss_linf', 'loss_l1']
RAMP_COLUMNS = ['rerr_linf', 'rerr_l1', 'rerr_union', 'max_linf', 'max_l1', 'kl']


def result():
    """A small evaluation by hand: 4 points, three threats in the union, one unforeseen threat outside it."""
    flags = {'clean': [True, True, True, False], 'linf:8/255': [True, True, False, False],
             'l2:0.5': [True, False, True, False], 'l1:12': [True, True, True, False], 'l2:1': [True, False, False, False]}
    flags['union'] = [all(f[i] for k, f in flags.items() if k in ('linf:8/255', 'l2:0.5', 'l1:12')) for i in range(4)]
    robust = {k: sum(v) / 4 for k, v in flags.items() if k not in ('clean', 'union')}
    return RobustResult(n=4, clean=0.75, robust=robust, union=0.25, threats=list(robust), budget='quick',
                        exact={k: True for k in robust}, flags=flags, seconds={}, outside_union=['l2:1'],
                        groups={'unforeseen': ['l2:1']})


def fit(learn, scheme, cbs):
    learn.fit_adversarial(1, lr=0.01, scheme=scheme, n_iter=1, cbs=cbs)
    names, values = list(learn.recorder.metric_names), learn.recorder.log
    return dict(zip(names, values))


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def test_robust_scalars_name_every_number_of_the_result():
    scalars = robust_scalars(result())
    assert scalars == {'robust/clean': 0.75, 'robust/linf:8/255': 0.5, 'robust/l2:0.5': 0.5, 'robust/l1:12': 0.75,
                       'robust/l2:1': 0.25, 'robust/union': 0.25, 'robust/unforeseen_avg': 0.25,
                       'robust/unforeseen_worst': 0.25}
    assert set(robust_scalars(result(), 'original')) == {k.replace('robust/', 'original/') for k in scalars}


def test_csv_logger_keeps_the_columns_and_a_side_file_the_evaluation(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    cbs = tracker_callbacks('csv', tmp_path, 'run')
    row = fit(learn, 'eat', cbs)
    table = pd.read_csv(tmp_path / 'run.csv')
    assert list(table.columns) == list(learn.recorder.metric_names)
    for col in EAT_COLUMNS:
        assert same(table[col][0], row[col]), col
    with learn.added_cbs(cbs):
        log_robust_result(learn, result())
        log_robust_result(learn, result(), prefix='original')
        log_robust_result(learn, result())      # logged again: replaced, not repeated
    side = pd.read_csv(robust_csv_path(cbs[0], learn))
    assert side['metric'].is_unique and len(side) == 2 * len(robust_scalars(result()))
    assert dict(zip(side['metric'], side['value'])) == {**robust_scalars(result()), **robust_scalars(result(), 'original')}
    assert pd.read_csv(tmp_path / 'run.csv').equals(table)   # the epoch table is untouched


def test_tensorboard_gets_the_columns_and_the_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    cbs = tracker_callbacks('tensorboard', tmp_path, 'ramp')
    row = fit(learn, 'ramp', cbs)
    with learn.added_cbs(cbs):
        log_robust_result(learn, result())
    events = EventAccumulator(str(tmp_path / 'tensorboard' / 'ramp'))
    events.Reload()
    tags = events.Tags()['scalars']
    for col in RAMP_COLUMNS + ['valid_loss', 'accuracy']:
        (point,) = events.Scalars(col)
        assert same(point.value, row[col]) and point.step == learn.train_iter, col
    for tag, value in robust_scalars(result()).items():
        assert tag in tags and events.Scalars(tag)[-1].value == pytest.approx(value), tag


def read_wandb(run_dir, timeout=60):
    """(history rows, summary) of a finished offline W&B run, once its exit record is written (W&B's
    service writes after `finish` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        history, summary, finished = read_wandb_file(run_dir)
        if finished or time.monotonic() > deadline:
            assert finished, 'the W&B run has no exit record'
            return history, summary
        time.sleep(0.2)


def read_wandb_file(run_dir):
    """(history rows, summary, finished) of an offline W&B run, read from its .wandb file: the LevelDB log
    format (blocks of 32 KiB, records with a 7-byte header, split across blocks) of W&B's `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb
    (path,) = run_dir.glob('*.wandb')
    data = path.read_bytes()
    assert data[:4] == b':W&B'
    history, summary, finished, pos, parts = [], {}, False, 7, b''
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:                    # a block's tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):   # the end, or a record still being written
            break
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):                         # 1: a whole record, 4: the last part of a split one
            continue
        record = pb.Record()
        record.ParseFromString(parts)
        parts = b''
        kind_of = record.WhichOneof('record_type')
        if kind_of == 'history':
            history.append({i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind_of == 'summary':
            summary.update({i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        finished = finished or kind_of == 'exit'
    return history, summary, finished


def test_wandb_offline_run_gets_the_columns_and_the_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    with tracking(learn, 'wandb', tmp_path, 'eat', config={'seed': 0, 'out': tmp_path}) as cbs:
        row = fit(learn, 'eat', [])
        log_robust_result(learn, result())
    assert [type(cb).__name__ for cb in cbs] == ['WandbCallback'] and cbs[0] not in learn.cbs
    (run_dir,) = (tmp_path / 'wandb').glob('offline-run-*')
    history, summary = read_wandb(run_dir)
    epoch_row = next(h for h in history if 'valid_loss' in h)
    for col in EAT_COLUMNS + ['valid_loss', 'accuracy']:
        assert same(epoch_row[col], row[col]), col
    for key, value in robust_scalars(result()).items():
        assert summary[key] == pytest.approx(value), key


def test_tracking_refuses_unknown_trackers_and_is_a_no_op_without_any(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    with pytest.raises(ValueError, match="unknown tracker.*'mlflow'.*tensorboard, wandb, csv"):
        tracker_callbacks(['csv', 'mlflow'], tmp_path, 'x')
    n = len(learn.cbs)
    with tracking(learn, [], tmp_path, 'x') as cbs:
        assert cbs == [] and len(learn.cbs) == n
    assert log_robust_result(learn, result()) == robust_scalars(result())   # no tracker: nothing written
    assert list(tmp_path.iterdir()) == [] and TRACKERS == ('tensorboard', 'wandb', 'csv')


def test_eatai_imports_without_tensorboard_and_wandb():
    """Both are optional (eatai[track]): with neither importable, eatai and its recipes still import. (timm
    imports wandb on its own where it is installed, so 'not imported' cannot be asked of eatai.)"""
    code = ('import sys; sys.modules.update(wandb=None, tensorboard=None); '
            'import eatai, eatai.all, eatai.recipes, eatai.callbacks.tracking; print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_recipe_log_flag_tracks_each_run(tmp_path, monkeypatch, capsys):
    """`--log csv tensorboard wandb`: per run, the epoch table, its TensorBoard events and an offline W&B run,
    each with the run's evaluation and the original one."""
    from test_recipes import REPO, load
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    slug = 'cifar_multinorm_finetune'
    load(REPO / 'recipes' / f'{slug}.py').main(['--smoke', '--out-dir', str(tmp_path), '--log', 'csv', 'tensorboard',
                                                '--log', 'wandb'])
    results = json.loads((tmp_path / f'{slug}.json').read_text())
    assert results['args']['log'] == ['csv', 'tensorboard', 'wandb']
    (run,) = [name for name in results['results'] if name != 'original']
    name = f'{slug}_e_at_ft'
    saved = {k: RobustResult.from_json(json.dumps(v)) for k, v in results['results'].items()}
    expected = {**robust_scalars(saved[run]), **robust_scalars(saved['original'], 'original')}
    table = pd.read_csv(tmp_path / f'{name}.csv')
    assert set(EAT_COLUMNS) <= set(table.columns) and len(table) == 1
    side = pd.read_csv(tmp_path / f'{name}_robust.csv')
    assert dict(zip(side['metric'], side['value'])) == pytest.approx(expected)
    events = EventAccumulator(str(tmp_path / 'tensorboard' / name))
    events.Reload()
    assert set(EAT_COLUMNS) | set(expected) <= set(events.Tags()['scalars'])
    (run_dir,) = (tmp_path / 'wandb').glob('offline-run-*')
    history, summary = read_wandb(run_dir)
    assert any(set(EAT_COLUMNS) <= set(h) for h in history)
    assert {k: summary[k] for k in expected} == pytest.approx(expected)
