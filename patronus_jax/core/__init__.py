"""The bottom layer: what every model and mode shares, importing nothing above it.

  errors      the user-error family (config, data, workdir, checkpoint) and its exit statuses
  config      config machinery: field checks, overrides, helpers for section validators
  files       atomic writes, JSON, image grids
  workdir     config.json of a workdir, frozen fields, status records of finished modes
  checkpoint  Orbax checkpoints of a training stage (validated, newest readable step)
  training    the generic training loop behind the `Task` protocol, and inference loading
  diffusion   schedules, losses, DDIM/DDPM sampling and inversion (lax.scan)
  sharding    meshes, shardings, multi-host set-up
  batching    a padded, fixed-shape batch map over a jitted function
  timing      stopwatch, timed blocks and progress lines
"""
