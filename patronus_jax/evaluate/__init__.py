"""Evaluation: FID (pytorch-fid's InceptionV3 in Flax), fd_classifier, attribute probes, TAD, DCI.

Functions take plain numpy arrays and return dicts of Python numbers (JSON-ready); everything
random follows from an explicit seed. Names below are imported on first use (PEP 562), so that
`patronus_jax.evaluate.config`, which the config schema imports, does not pull in Flax or
scikit-learn.

  fid:             frechet_distance, frechet_distance_from_features, frechet_distance_to_statistics,
                   feature_statistics, statistics_key, statistics_path, cached_statistics,
                   save_statistics, load_statistics, network_fingerprint
  inception:       FIDInceptionV3, inception_features, load_inception_variables,
                   variables_from_state_dict
  classifier:      AttributeClassifier, train_attribute_classifier, classifier_predict,
                   classifier_features, save_classifier, load_classifier
  probes:          attribute_probe, auroc_matrix
  disentanglement: tad_score, tad_details, dci_score, dci_from_importance
  workdir_classifier: classifier_for_workdir (the workdir's cached attribute classifier)
  run:             evaluate_mode (--mode=evaluate), check_checkpoints, MissingCheckpointError
"""

import importlib

_EXPORTS = {
    'fid': ('cached_statistics', 'feature_statistics', 'frechet_distance', 'frechet_distance_from_features',
            'frechet_distance_to_statistics', 'load_statistics', 'network_fingerprint', 'save_statistics',
            'statistics_key', 'statistics_path'),
    'inception': ('FIDInceptionV3', 'inception_features', 'load_inception_variables',
                  'variables_from_state_dict'),
    'classifier': ('AttributeClassifier', 'train_attribute_classifier', 'save_classifier', 'load_classifier'),
    'probes': ('attribute_probe', 'auroc_matrix'),
    'disentanglement': ('dci_from_importance', 'dci_score', 'tad_details', 'tad_score'),
    'workdir_classifier': ('classifier_for_workdir',),
    'run': ('MissingCheckpointError', 'check_checkpoints', 'evaluate_mode'),
}
_RENAMED = {'classifier_predict': ('classifier', 'predict'), 'classifier_features': ('classifier', 'features')}
_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names}
_WHERE.update(_RENAMED)

__all__ = sorted(_WHERE)


def __getattr__(name):
  if name not in _WHERE:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attr = _WHERE[name]
  value = getattr(importlib.import_module(f'{__name__}.{module}'), attr)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
