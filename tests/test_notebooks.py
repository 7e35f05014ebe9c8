"""Every notebook in nbs/ runs top to bottom (on a reduced budget) and keeps its outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / 'nbs').glob('*.ipynb'))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    saved = nbformat.read(path, as_version=4)
    code = [c for c in saved.cells if c.cell_type == 'code']
    assert code and all(c.get('outputs') for c in code if c.source.strip()), "commit the notebook with its outputs"
    monkeypatch.setenv('EATAI_NB_FAST', '1')
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors
