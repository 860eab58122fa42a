"""Interpretation of trained Patronus models: what prototypes show, where and when they appear,
and which learned correlations (shortcuts) editing them reveals.

  core:        Engine: jitted, chunked encode / DDIM invert / regenerate / trace / classify
  visualize:   prototype visualisation (plausible maximum, inversion, receptive-field box)
  semantics:   reconstruction and variation, extrapolation, interpolation, manipulation
  emergence:   s and attribute predictions of x0_hat along trajectories; emergence steps
  diagnosis:   paired raise/lower edits judged by an attribute classifier; suspected correlations
  stats:       observed ranges, emergence/settling steps, associations, bootstrap and normal CIs
  figures:     the matplotlib figures
  mode:        `--mode=interpret` (interpret_mode), skipping parts already done
  config:      the `config.interpret` section

`import patronus_jax.interpret` is cheap (the config schema imports `interpret.config`):
everything else is imported on first use.
"""

import importlib

_LAZY = {'interpret_mode': ('mode', 'interpret_mode'), 'Engine': ('core', 'Engine')}
__all__ = sorted(_LAZY)


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attr = _LAZY[name]
  value = getattr(importlib.import_module(f'{__name__}.{module}'), attr)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
