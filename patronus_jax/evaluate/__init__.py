"""Evaluation metrics: plain numpy arrays in, dicts of Python numbers out (JSON-ready); anything
random follows from an explicit seed. The `--mode=evaluate` orchestration that calls these is
`patronus_jax.tasks.patronus.evaluate_mode`.

  fid:                Frechet distance, feature statistics and their cache
  inception:          pytorch-fid's InceptionV3 in Flax (FID features; weight conversion)
  classifier:         the attribute classifier (fd_classifier features, attribute predictions)
  workdir_classifier: the workdir's cached attribute classifier (classifier_for_workdir)
  probes:             linear attribute probes on s (AUROC), auroc_matrix
  disentanglement:    TAD and DCI
  config:             the `config.evaluate` section
"""
