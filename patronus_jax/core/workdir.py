"""One workdir per experiment: the resolved config, what each mode has done, where files go.

  DIR/config.json          the resolved config of the run that created the workdir
  DIR/checkpoints/<stage>  Orbax checkpoints (stage1, latent, bcos)
  DIR/tensorboard/         clu metric writer events
  DIR/samples/ DIR/interpret/ DIR/explain/ DIR/metrics.json   outputs of the later modes
  DIR/status/<mode>.json   what a finished mode computed from (to skip it when nothing changed)

A later run may change how long or how much it does (steps, sample counts, logging), but
not what the trained model *is*: a different architecture, dataset or diffusion process in
an existing workdir stops the run with the list of differing fields.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional, Sequence

import ml_collections

from patronus_jax.core import files
from patronus_jax.core.errors import WorkdirError

# Fields that define the trained models; everything else may differ between runs.
FROZEN_PREFIXES = (
    'model_type', 'model.', 'diffusion.timesteps', 'diffusion.schedule', 'diffusion.prediction',
    'data.name', 'data.image_size', 'data.channels', 'data.crop', 'data.bias.', 'data.shapes.',
    'data.train_split', 'data.folder.path', 'bcos.',
    'latent.base_channels', 'latent.channel_mults', 'latent.num_res_blocks', 'latent.timesteps',
    'latent.schedule', 'latent.skip_connections', 'latent.normalize', 'seed',
    'train.s_decorrelation_memory',  # the shape of a stage-1 train state (its memory of earlier s)
)
# Inside frozen sections, fields that only change how a run executes.
MUTABLE_EXCEPTIONS = ('model.remat', 'bcos.explain_', 'bcos.num_', 'data.num_workers')


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def _flatten(d: Any, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def _frozen(name: str) -> bool:
  if any(name.startswith(p) for p in MUTABLE_EXCEPTIONS):
    return False
  return any(name == p or (p.endswith('.') and name.startswith(p)) for p in FROZEN_PREFIXES)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


# Builds the whole schema with its defaults; patronus_jax.config registers its base_config, so that
# every comparison of configs (runs, views, imports, baselines) knows the defaults of new fields.
_schema_defaults: Optional[Callable[[], ml_collections.ConfigDict]] = None


def register_schema_defaults(build: Callable[[], ml_collections.ConfigDict]) -> None:
  global _schema_defaults
  _schema_defaults = build


def differences(old: dict, new: dict, frozen_only: bool = True) -> list[tuple[str, Any, Any]]:
  """(field, old, new) that differ. A field added to the schema after `old` was written is no
  difference while `new` keeps its default (the registered schema's): the old run used the default
  behaviour."""
  defaults = config_to_dict(_schema_defaults()) if _schema_defaults is not None else {}
  a, b, d = _flatten(old), _flatten(new), _flatten(defaults)
  keys = sorted(set(a) | set(b))
  diffs = [(k, a.get(k), b.get(k)) for k in keys
           if a.get(k) != b.get(k) and not (k not in a and k in d and b.get(k) == d[k])]
  return [d for d in diffs if _frozen(d[0])] if frozen_only else diffs


class ConfigConflict(WorkdirError):
  """The workdir holds a model trained with a different architecture/data/diffusion."""


def check_and_write_config(workdir: str, config: ml_collections.ConfigDict) -> list:
  """Writes DIR/config.json; if one exists, fails on frozen differences and returns the others."""
  os.makedirs(workdir, exist_ok=True)
  path = config_path(workdir)
  new = config_to_dict(config)
  if os.path.exists(path):
    old = files.read_json(path)
    frozen = differences(old, new, frozen_only=True)
    if frozen:
      lines = '\n'.join(f'  {k}: workdir has {a!r}, this run has {b!r}' for k, a, b in frozen)
      raise ConfigConflict(
          f'{workdir} holds a run with a different model/data/diffusion config; the '
          f'differing fields are:\n{lines}\nUse a new --workdir, or the same values.')
    others = differences(old, new, frozen_only=False)
    if others:
      files.write_json(os.path.join(workdir, 'config_previous.json'), old)
    files.write_json(path, new)
    return others
  files.write_json(path, new)
  return []


def read_config_values(workdir: str) -> dict:
  """The values of a workdir's config.json (WorkdirError when it is missing or unreadable)."""
  path = config_path(workdir)
  if not os.path.exists(path):
    raise WorkdirError(f'{path} not found: is {workdir} a patronus_jax workdir?')
  try:
    return files.read_json(path)
  except ValueError as e:
    raise WorkdirError(f'{path} is not valid JSON ({e}); restore it or use a new --workdir') from e


def assign_values(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Writes config.json values into a schema ConfigDict (tuples and floats restored)."""
  _assign(config, values, '')
  return config


def _assign(config, values: dict, prefix: str) -> None:
  for k, v in values.items():
    if k not in config:
      raise ValueError(f"unknown config field '{prefix}{k}' in the workdir's config.json")
    if isinstance(v, dict):
      _assign(config[k], v, f'{prefix}{k}.')
    else:
      default = config[k]
      config[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else (
          float(v) if isinstance(default, float) and isinstance(v, int) else v)


def status_path(workdir: str, mode: str) -> str:
  return os.path.join(workdir, 'status', f'{mode}.json')


def read_status(workdir: str, mode: str) -> Optional[dict]:
  path = status_path(workdir, mode)
  return files.read_json(path) if os.path.exists(path) else None


def write_status(workdir: str, mode: str, status: dict) -> None:
  files.write_json(status_path(workdir, mode), status)


# A mode records what it computed from in DIR/status/<mode>.json; a mode made of independent
# parts records one entry per part: {'parts': {part: {'key': status, **details}}}.


def is_done(workdir: str, mode: str, status: Any, outputs: Sequence[str] = (), part: Optional[str] = None) -> bool:
  """Whether `mode` (or its `part`) was recorded done from exactly `status` and all `outputs` exist."""
  recorded = read_status(workdir, mode)
  if part is not None:
    recorded = (recorded or {}).get('parts', {}).get(part, {}).get('key')
  return recorded == status and all(os.path.exists(path) for path in outputs)


def record_done(workdir: str, mode: str, status: Any, part: Optional[str] = None, **details) -> None:
  """Records `mode` (or its `part`, with `details` beside its key) as done from `status`."""
  if part is None:
    write_status(workdir, mode, status)
    return
  parts = (read_status(workdir, mode) or {}).get('parts', {})
  parts[part] = {'key': status, **details}
  write_status(workdir, mode, {'parts': parts})
