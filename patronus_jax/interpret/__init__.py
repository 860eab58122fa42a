"""Interpretation of trained Patronus models: what prototypes show, where and when they appear,
and which learned correlations (shortcuts) editing them reveals. The `--mode=interpret`
orchestration that calls these is `patronus_jax.tasks.patronus.interpret_mode`.

  core:        Engine: jitted, chunked encode / DDIM invert / regenerate / trace / classify
  visualize:   prototype visualisation (plausible maximum, inversion, receptive-field box)
  semantics:   reconstruction and variation, extrapolation, interpolation, manipulation
  emergence:   s and attribute predictions of x0_hat along trajectories; emergence steps
  diagnosis:   paired raise/lower edits judged by an attribute classifier; suspected correlations
  stats:       observed ranges, emergence/settling steps, associations, bootstrap and normal CIs
  figures:     the matplotlib figures
  config:      the `config.interpret` section
"""
