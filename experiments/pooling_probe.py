r"""Where is an attribute lost between the encoder and s? Linear probes at each stage.

  python experiments/pooling_probe.py --workdir=runs/quickstart [--num_examples=500] [--folds=5]
      [--capacity_steps=1000] [--json=OUT.json]

s_j is the best match of prototype j over all patches (a min over the feature map). A factor that
a single patch can show (a colour, a texture) survives that pooling; a factor that lies in the
arrangement of patches (a silhouette) may not. For a trained Patronus workdir whose data has
attribute labels, this prints per attribute the 5-fold cross-validated accuracy of a logistic
regression (standardised inputs) reading the attribute from
  s                  the P prototype activations (what the U-Net gets);
  distance map       the distance of every patch to every prototype (h x w x P);
  features, max      the encoder's channels, each at its largest over patches (C);
  features, mean     the same, averaged over patches (C);
  feature map        the encoder's whole output (h x w x C);
and the majority-class rate (chance). High on the maps and low on s and the pooled features:
the trained encoder holds the attribute only as an arrangement of patches, which no single patch
prototype matches.

Whether that is a limit of the architecture or of the training signal, the last column
('supervised s') answers: a fresh prototype network of the workdir's architecture (encoder, P
prototypes, the min over patches, the same activation) is trained for --capacity_steps with a
linear head per attribute on s, on the training split's labels, and its held-out accuracy is
printed. Near 1.0 there: P pooled patch similarities *can* carry the attribute, and a model whose
s lacks it was not asked for it by its loss. --capacity_steps=0 skips it (the probes alone take
under a minute on 2 CPU cores; the check at 1,000 steps adds about 2.5 minutes).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from patronus_jax import config as config_lib
from patronus_jax import data
from patronus_jax import experiment
from patronus_jax.core.errors import ConfigError
from patronus_jax.models.unet import patronus_from_config
from patronus_jax.tasks.patronus import loading

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained Patronus workdir whose data has attribute labels.',
                               required=True)
_NUM = flags.DEFINE_integer('num_examples', 500, 'Held-out images probed (the eval split).')
_FOLDS = flags.DEFINE_integer('folds', 5, 'Cross-validation folds.')
_BATCH = flags.DEFINE_integer('batch_size', 100, 'Images per encoder call.')
_CAPACITY = flags.DEFINE_integer('capacity_steps', 1000, 'Steps of the supervised capacity check (0: skip).')
_TRAIN = flags.DEFINE_integer('capacity_train_examples', 4000, 'Training images of the capacity check.')
_JSON = flags.DEFINE_string('json', '', 'Also write the table to this JSON file.')


def stages(model, variables, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """(N, features) per representation, from s back to the encoder's feature map."""
  @jax.jit
  def run(x):
    out, state = model.apply(variables, x, method=model.encode, capture_intermediates=True)
    return out.activations, out.distances, state['intermediates']['prototypes']['encoder']['__call__'][0]

  parts = [tuple(np.asarray(a) for a in run(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
  s, distances, z = (np.concatenate(p) for p in zip(*parts))
  n = len(images)
  return {'s': s, 'distance map': distances.reshape(n, -1), 'features, max': z.max((1, 2)),
          'features, mean': z.mean((1, 2)), 'feature map': z.reshape(n, -1)}


def supervised_capacity(config, train: dict, test: dict, num_classes: list[int], steps: int,
                        batch_size: int = 32, seed: int = 0) -> np.ndarray:
  """Held-out accuracy per attribute of a fresh prototype network trained with linear heads on s.

  One network for all attributes (they share s, as in the model); Adam, lr 2e-3, cross-entropy
  summed over attributes. Only the prototype network of `config`'s model is used.
  """
  model = patronus_from_config(config, dtype='float32')
  heads = [nn.Sequential([nn.LayerNorm(), nn.Dense(k)]) for k in num_classes]
  key = jax.random.PRNGKey(seed)
  x_train, y_train = train['image'], train['attributes']
  init = model.init({'params': key}, x_train[:1], method=model.encode)  # the prototype network alone
  rest = {k: v for k, v in init.items() if k != 'params'}
  s0 = jnp.zeros((1, config.model.num_prototypes))
  params = {'prototypes': init['params']['prototypes'],
            'heads': [h.init(jax.random.fold_in(key, i), s0)['params'] for i, h in enumerate(heads)]}

  def logits(p, x):
    s = model.apply({'params': {'prototypes': p['prototypes']}, **rest}, x, method=model.encode).activations
    return [h.apply({'params': hp}, s) for h, hp in zip(heads, p['heads'])]

  def loss(p, x, y):
    return sum(optax.softmax_cross_entropy_with_integer_labels(o, y[:, i]).mean()
               for i, o in enumerate(logits(p, x)))

  opt = optax.adam(2e-3)

  @jax.jit
  def step(p, state, x, y):
    grads = jax.grad(loss)(p, x, y)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(p, updates), state

  state = opt.init(params)
  rng = np.random.RandomState(seed)
  for _ in range(steps):
    idx = rng.randint(0, len(x_train), batch_size)
    params, state = step(params, state, x_train[idx], y_train[idx])
  predict = jax.jit(lambda p, x: jnp.stack([jnp.argmax(o, -1) for o in logits(p, x)], 1))
  x_test, y_test = test['image'], test['attributes']
  pred = np.concatenate([np.asarray(predict(params, x_test[i:i + 250])) for i in range(0, len(x_test), 250)])
  return (pred == y_test).mean(0)


def probe_accuracy(x: np.ndarray, y: np.ndarray, folds: int, seed: int = 0) -> float:
  """Mean cross-validated accuracy of a logistic regression on standardised x."""
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
  cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  return float(cross_val_score(clf, x, y, cv=cv).mean())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  config = config_lib.load_workdir_config(workdir)
  if config.model_type != 'patronus':
    raise ConfigError(f'{workdir} holds a {config.model_type!r} model; this probes a Patronus encoder')
  info = data.get_info(config.data)
  if not info.attribute_names:
    raise ConfigError(f'{workdir}: its data ({config.data.name}) has no attribute labels to probe')
  model, variables, step = loading.load_stage1_variables(config, workdir)
  arrays = data.load_arrays(config.data, config.data.eval_split, max_examples=_NUM.value)
  images, labels = np.asarray(arrays['image'], np.float32), np.asarray(arrays['attributes'])
  reps = stages(model, variables, images, _BATCH.value)
  columns = list(reps)
  capacity = None
  if _CAPACITY.value > 0:
    train = data.load_arrays(config.data, config.data.train_split, max_examples=_TRAIN.value)
    train = {'image': np.asarray(train['image'], np.float32), 'attributes': np.asarray(train['attributes'])}
    capacity = supervised_capacity(config, train, {'image': images, 'attributes': labels},
                                   [len(v) for v in info.attribute_values], _CAPACITY.value)
    columns.append('supervised s')
  rows = []
  for a, name in enumerate(info.attribute_names):
    y = labels[:, a]
    counts = np.bincount(y)
    folds = min(_FOLDS.value, int(counts[counts > 0].min()))
    row = {'attribute': name, 'chance': float(counts.max() / len(y))}
    if len(counts[counts > 0]) < 2 or folds < 2:
      row['not_probed'] = 'fewer than 2 examples of some class'
    else:
      row.update({k: probe_accuracy(x, y, folds) for k, x in reps.items()})
    if capacity is not None:
      row['supervised s'] = float(capacity[a])
    rows.append(row)

  shapes = {k: v.shape[1] for k, v in reps.items()}
  print(f'# {workdir}: {config.name}, stage-1 step {step}; {len(images)} held-out images, '
        f'{_FOLDS.value}-fold logistic-regression accuracy; feature sizes {shapes}')
  head = f'{"attribute":>12} {"chance":>6} ' + ' '.join(f'{k:>14}' for k in columns)
  print(head)
  print('-' * len(head))
  for r in rows:
    cells = ' '.join(f'{r[k]:>14.2f}' if k in r else f'{"-":>14}' for k in columns)
    print(f'{r["attribute"]:>12} {r["chance"]:>6.2f} {cells}')
  if _JSON.value:
    with open(_JSON.value, 'w') as fh:
      json.dump({'workdir': workdir, 'step': step, 'num_examples': len(images), 'rows': rows}, fh, indent=2)


if __name__ == '__main__':
  experiment.run_app(main)
