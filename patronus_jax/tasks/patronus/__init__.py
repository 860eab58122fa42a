"""Patronus: config sections, the two training tasks, loaders, sampling, and the
sample / interpret / evaluate modes.

  config          model, diffusion, train, latent and sample sections
  training        stage 1 (prototype network + U-Net) and stage 2 (latent model over s)
  loading         the trained models of a workdir; imported checkpoints
  sample          generation from s, latent sampling, `--mode=sample`
  interpret_mode  `--mode=interpret`
  evaluate_mode   `--mode=evaluate`
"""
