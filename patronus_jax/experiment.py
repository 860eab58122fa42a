"""What the experiments/ scripts share: train what a workdir lacks, run some interpret parts.

    report = run_parts(config, workdir, ('visualize',))

trains stage 1 (and the latent model, when a part needs it) if the workdir has no checkpoint
of it yet, then runs `--mode=interpret` restricted to those parts (parts already done for the
same checkpoint and config are reused) and returns the report.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from absl import logging

from patronus_jax.core import files
from patronus_jax import main
import json


def _has_checkpoint(workdir: str, stage: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints', stage)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def run_parts(config, workdir: str, parts: Sequence[str], train_missing: bool = True) -> dict:
  config = config.copy_and_resolve_references()
  wants_latent = 'emergence' in parts and config.interpret.emergence_source in ('latent',)
  if train_missing:
    if not _has_checkpoint(workdir, 'stage1'):
      logging.info('%s has no stage-1 checkpoint: training %d steps first', workdir, config.train.num_steps)
      main.run(config, workdir, 'train')
    if wants_latent and not _has_checkpoint(workdir, 'latent'):
      main.run(config, workdir, 'train_latent')
  config.interpret.parts = tuple(parts)
  t0 = time.time()
  main.run(config, workdir, 'interpret')
  report = files.read_json(os.path.join(workdir, 'interpret', 'report.json'))
  report['experiment_seconds'] = round(time.time() - t0, 1)
  return report


def print_json(title: str, obj) -> None:
  print(f'\n=== {title} ===')
  print(json.dumps(obj, indent=1, default=str))
