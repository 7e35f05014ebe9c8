"""Progress fits where it goes: bars in a terminal, one line per epoch and per threat model in a file or pipe."""
import contextlib
import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eatai.all import arrays_dls, evaluate_robustness, load_sample, robust_learner
from eatai.callbacks import AdaptiveProgress
from eatai.demo import DEMO_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope='module')
def learn():
    x_train, y_train, x_valid, y_valid = load_sample()
    return robust_learner(arrays_dls(x_train[:64], y_train[:64], x_valid[:64], y_valid[:64], bs=32), DEMO_CHECKPOINT)


def printed(stream, work) -> str:
    with contextlib.redirect_stdout(stream):
        work()
    return stream.getvalue()


def test_fit_prints_table_rows_into_a_file_and_bars_into_a_terminal(learn):
    assert isinstance(learn.progress, AdaptiveProgress)
    log = printed(io.StringIO(), lambda: learn.fit(2, 1e-4))
    assert '\r' not in log
    lines = log.splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ['epoch', 'train_loss'], log   # header, one row per epoch
    assert [line.split()[0] for line in lines[1:]] == ['0', '1']
    screen = printed(FakeTerminal(), lambda: learn.fit(1, 1e-4))
    assert screen.count('\r') > 2 and '█' in screen       # fastprogress's bars, redrawn in place
    with learn.no_bar():                                    # fastai's no_bar puts back a plain ProgressCallback
        assert not hasattr(learn, 'progress')
    assert isinstance(learn.progress, AdaptiveProgress)


def test_evaluation_prints_one_line_per_threat_model_and_attack_into_a_file(learn):
    x, y = (t.as_subclass(torch.Tensor) for t in learn.dls.valid.one_batch())   # plain tensors, as robust_eval passes
    evaluate = lambda: evaluate_robustness(learn.model, x[:6], y[:6], threats=['linf:8/255', 'l1:12'], budget='quick',
                                           bs=3, progress=True)
    log = printed(io.StringIO(), evaluate)
    heads = [line.split(': ')[0] for line in log.splitlines()]
    # APGD-CE in each threat model; APGD-T only where points survived it
    assert '\r' not in log and heads[:1] == ['linf:8/255 apgd-ce'] and 'l1:12 apgd-ce' in heads, log
    assert set(heads) <= {'linf:8/255 apgd-ce', 'linf:8/255 apgd-t', 'l1:12 apgd-ce', 'l1:12 apgd-t'}, log
    assert len(heads) == len(set(heads)), log
    # how many batches depends on how many of the 6 points the model gets right (only those are attacked)
    assert all(re.fullmatch(r'\S+ apgd-(ce|t): [12] batch(es)? in \d\d:\d\d', line) for line in log.splitlines()), log
    screen = printed(FakeTerminal(), evaluate)
    assert '\r' in screen and 'linf:8/255' in screen


def test_bars_still_appear_in_a_real_terminal(tmp_path):
    """A real process on a pseudo-terminal (python's pty module): fastprogress draws its bars."""
    script = ("from eatai.all import *\nfrom eatai.demo import DEMO_CHECKPOINT\n"
              "x, y, xv, yv = load_sample()\n"
              "learn = robust_learner(arrays_dls(x[:64], y[:64], xv[:64], yv[:64], bs=32), DEMO_CHECKPOINT)\n"
              "learn.fit(1, 1e-4)\n"
              "learn.robust_eval(n=4, threats=['linf:8/255'], budget='quick', bs=2)\n")
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=child, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            env={**os.environ, 'PYTHONPATH': str(REPO)})
    os.close(child)
    out = b''
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        try:
            chunk = os.read(main, 65536) if ready else b''
        except OSError:   # EIO: the child closed the terminal
            chunk = b''
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0
    text = out.decode(errors='replace').replace('\r\n', '\n')   # the terminal turns each newline into \r\n
    assert text.count('\r') > 4 and '█' in text and 'linf:8/255' in text, text[-2000:]
