"""Evaluation: FID (pytorch-fid's InceptionV3 in Flax), fd_classifier, attribute probes, TAD, DCI.

Functions take plain numpy arrays and return dicts of Python numbers (JSON-ready); everything
random follows from an explicit seed. The heavy parts (Flax networks) are imported lazily by
their modules, so `patronus_jax.evaluate.config` stays cheap to import.
"""

from patronus_jax.evaluate.classifier import (AttributeClassifier, features as classifier_features,
                                              load_classifier, predict as classifier_predict,
                                              save_classifier, train_attribute_classifier)
from patronus_jax.evaluate.disentanglement import dci_from_importance, dci_score, tad_details, tad_score
from patronus_jax.evaluate.fid import (cached_statistics, feature_statistics, frechet_distance,
                                       frechet_distance_from_features, frechet_distance_to_statistics,
                                       load_statistics, network_fingerprint, save_statistics,
                                       statistics_key, statistics_path)
from patronus_jax.evaluate.inception import (FIDInceptionV3, inception_features, load_inception_variables,
                                             variables_from_state_dict)
from patronus_jax.evaluate.probes import attribute_probe, auroc_matrix
