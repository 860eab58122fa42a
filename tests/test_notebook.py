"""The Colab quickstart notebook runs top to bottom (at tiny size)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'notebooks', 'quickstart.ipynb')


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  workdir = tmp_path / 'run'
  monkeypatch.setenv('PATRONUS_NOTEBOOK_CONFIG', 'configs/shapes.py:tiny')
  monkeypatch.setenv('PATRONUS_NOTEBOOK_WORKDIR', str(workdir))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': ROOT}})
  client.execute()
  outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
  assert 'unconditional.png' in outputs and 'reconstruction.png' in outputs
  for name in ('samples/unconditional.png', 'samples/reconstruction.png', 'interpret/report.json', 'metrics.json'):
    assert (workdir / name).exists(), name
