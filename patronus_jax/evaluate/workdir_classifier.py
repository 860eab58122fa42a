"""The attribute classifier of a workdir's dataset, trained once and cached in the workdir.

`classifier_for_workdir(config, workdir)` is what every mode that judges generated images by
their attributes calls (evaluate: fd_classifier; interpret: shortcut diagnosis; B-cos: prompt
adherence). The classifier is trained on the train split's images and attributes with the
`config.evaluate.classifier_*` settings and saved under `<workdir>/classifier/` (or
`evaluate.classifier_dir`) together with what it was trained for: the data config fields
that define the training images, the classifier settings and the seed. A later call loads it
when these match and retrains otherwise.

Two modes may call this at the same time (e.g. `interpret` and `evaluate` in two shells): an
advisory lock file serialises them, so the second waits and loads what the first saved, and
the file itself is written to a temporary name and renamed (never half written).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Iterator

try:
  import fcntl
except ImportError:  # not POSIX
  fcntl = None

from absl import logging
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax import data as data_lib
from patronus_jax.core import files as pio
from patronus_jax.data import bias as bias_lib
from patronus_jax.data.config import without_planted_bias
import jax
import numpy as np

DIRNAME = 'classifier'
# config.data fields that only change how data is read, not which images the classifier sees.
_DATA_FIELDS_IGNORED = ('data_dir', 'num_workers', 'worker_buffer_size', 'read_threads',
                        'prefetch_buffer_size', 'strict', 'eval_split')
# config.evaluate.classifier_* fields that do not change the trained classifier.
_CLASSIFIER_FIELDS_IGNORED = ('classifier_dir',)
# Below this held-out accuracy much of what the classifier judges of an attribute is its own error.
JUDGE_MIN_ACCURACY = 0.9
# Fewer held-out examples of a rare combination say too little for a note.
RARE_MIN_EXAMPLES = 10


def weak_judge_note(accuracy: dict[str, float], rare: dict | None = None) -> str | None:
  """A sentence naming the attributes whose held-out accuracy (`metrics['accuracy']` of the
  classifier) is below JUDGE_MIN_ACCURACY, and the attributes it reads below it on held-out images of
  combinations rare in its training data (`metrics['rare_combinations']`, at least RARE_MIN_EXAMPLES of
  them); None when there are none: keep rates, edit success, the diagnosis and fd_classifier see those
  attributes through it."""
  notes = []
  weak = sorted((v, k) for k, v in accuracy.items() if v < JUDGE_MIN_ACCURACY)
  if weak:
    listed = ', '.join(f'{k} {v:.2f}' for v, k in weak)
    notes.append(f'the attribute classifier reads {listed} right in fewer than {JUDGE_MIN_ACCURACY:.0%} of held-out '
                 'real images, and keep rates, edit success, the diagnosis and fd_classifier judge these attributes '
                 'through it: their numbers are partly its errors (more config.evaluate.classifier_num_steps usually '
                 'helps)')
  tied = [(v, name, pair) for pair, entry in sorted((rare or {}).items())
          if entry.get('num_examples', 0) >= RARE_MIN_EXAMPLES for name, v in entry.get('accuracy', {}).items()
          if v < JUDGE_MIN_ACCURACY]
  if tied:
    listed = ', '.join(f'{name} {v:.2f} ({pair})' for v, name, pair in tied)
    notes.append(f'on held-out images whose combination of two attributes is rare in its training data the '
                 f'attribute classifier reads {listed} right in fewer than {JUDGE_MIN_ACCURACY:.0%}: it partly reads '
                 'one attribute from the other, and the diagnosis counts that as the model moving both (train it with '
                 "config.evaluate.classifier_training='rebalanced', or 'unplanted' for a planted bias)")
  return '; '.join(notes) or None


def classifier_dir(config, workdir: str) -> str:
  """Where the workdir's classifier lives: `evaluate.classifier_dir` or `<workdir>/classifier`."""
  return config.evaluate.classifier_dir or os.path.join(workdir, DIRNAME)


def trained_for(config) -> dict[str, Any]:
  """What defines the classifier: the training data, the classifier settings and the seed."""
  data = json.loads(config.data.to_json_best_effort())
  for field in _DATA_FIELDS_IGNORED:
    data.pop(field, None)
  settings = {k: v for k, v in json.loads(config.evaluate.to_json_best_effort()).items()
              if k.startswith('classifier_') and k not in _CLASSIFIER_FIELDS_IGNORED}
  if settings.get('classifier_training') == 'as_is':  # classifiers saved before the field existed stay valid
    del settings['classifier_training']
  return json.loads(json.dumps(dict(data=data, classifier=settings, seed=int(config.seed))))


@contextlib.contextmanager
def _exclusive(directory: str) -> Iterator[None]:
  """Holds an advisory lock on `<directory>/.lock` (no-op where flock is unavailable)."""
  os.makedirs(directory, exist_ok=True)
  if fcntl is None:  # not POSIX: atomic writes still keep the file whole
    yield
    return
  with open(os.path.join(directory, '.lock'), 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # e.g. some network file systems
      yield
      return
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _load_if_matching(directory: str, wanted: dict[str, Any]):
  if not os.path.exists(os.path.join(directory, clf_lib.FILENAME)):
    return None
  try:
    classifier, metrics = clf_lib.load_classifier(directory)
  except (ValueError, KeyError, OSError) as e:
    logging.warning('attribute classifier in %s is unreadable (%s); retraining', directory, e)
    return None
  if metrics.get('trained_for') != wanted:
    logging.info('attribute classifier in %s was trained for another data config or other '
                 'classifier settings; retraining', directory)
    return None
  return classifier, metrics


def train_for_config(config):
  """Trains the classifier on the train split of `config.data`; returns (classifier, metrics)."""
  ev = config.evaluate
  info = data_lib.get_info(config.data)
  if not info.attribute_names:
    raise data_lib.DataError(
        f'dataset {config.data.name!r} has no attribute labels, so no attribute classifier can '
        'be trained (image folders need a labels CSV: config.data.folder.labels_csv)')
  max_examples = None if ev.classifier_max_examples == -1 else ev.classifier_max_examples
  t0 = time.time()
  data_cfg = without_planted_bias(config.data) if ev.classifier_training == 'unplanted' else config.data
  arrays = data_lib.load_arrays(data_cfg, config.data.train_split, max_examples)
  # uint8 keeps a quarter of the memory; the classifier maps uint8 to [-1, 1] itself.
  images = pio.to_uint8(arrays.pop('image'))
  attributes = np.asarray(arrays['attributes'])
  cardinalities = [len(v) for v in info.attribute_values]
  training = {'data': ev.classifier_training}
  weights = None
  pairs = bias_lib.dependent_pairs(attributes, cardinalities)  # what the judge could read one from the other
  if ev.classifier_training == 'rebalanced':
    weights = bias_lib.independence_weights(attributes, pairs, cardinalities) if pairs else None
    training.update(pairs=[[info.attribute_names[a], info.attribute_names[b]] for a, b in pairs],
                    max_weight=float(weights.max()) if pairs else 1.0)
  logging.info('attribute classifier: training on %d %s images of %s (%d steps, attributes %s, training data %s); '
               'data read in %.1fs', images.shape[0], config.data.train_split, config.data.name,
               ev.classifier_num_steps, ', '.join(info.attribute_names), training, time.time() - t0)
  t0 = time.time()
  classifier, metrics = clf_lib.train_attribute_classifier(
      images, attributes, cardinalities, seed=int(config.seed),
      num_steps=ev.classifier_num_steps, batch_size=ev.classifier_batch_size,
      learning_rate=ev.classifier_learning_rate, weight_decay=ev.classifier_weight_decay,
      holdout_fraction=ev.classifier_holdout_fraction, widths=tuple(ev.classifier_widths),
      feature_dim=ev.classifier_feature_dim, attribute_names=info.attribute_names, sample_weights=weights,
      check_pairs=pairs)
  metrics['train_seconds'] = round(time.time() - t0, 2)
  metrics['training'] = training
  metrics['dataset'] = config.data.name
  metrics['split'] = config.data.train_split
  logging.info('attribute classifier: trained in %.1fs; held-out accuracy %s', time.time() - t0,
               ', '.join(f'{k} {v:.3f}' for k, v in metrics['accuracy'].items()))
  return classifier, metrics


def classifier_for_workdir(config, workdir: str):
  """The attribute classifier of `config.data`, loaded from the workdir or trained and saved there.

  Args:
    config: the run's config (`config.data`, `config.evaluate.classifier_*`, `config.seed`).
    workdir: the experiment directory; the classifier is cached in `<workdir>/classifier/`
      (`evaluate.classifier_dir` overrides it).

  Returns:
    (classifier, metrics): an `AttributeClassifier` (apply it with
    `patronus_jax.evaluate.classifier_predict` / `classifier_features`) and a JSON-ready dict
    with `accuracy` (held-out accuracy per attribute), `mean_accuracy`, `chance_accuracy`,
    `final_loss`, `num_train`, `num_holdout`, `train_seconds`, `dataset`, `split`,
    `trained_for` (what the cache is keyed on) and `path` (the saved file).
  """
  directory = classifier_dir(config, workdir)
  wanted = trained_for(config)
  path = os.path.join(directory, clf_lib.FILENAME)
  with _exclusive(directory):
    loaded = _load_if_matching(directory, wanted)
    if loaded is not None:
      classifier, metrics = loaded
      logging.info('attribute classifier: loaded %s (held-out mean accuracy %.3f)', path,
                   metrics.get('mean_accuracy', float('nan')))
    else:
      classifier, metrics = train_for_config(config)
      metrics['trained_for'] = wanted
      if jax.process_index() == 0:
        clf_lib.save_classifier(classifier, directory, metrics)
        logging.info('attribute classifier: saved %s', path)
  note = weak_judge_note(metrics.get('accuracy') or {}, metrics.get('rare_combinations'))
  if note:
    logging.warning('%s', note)
  return classifier, dict(metrics, path=path)
