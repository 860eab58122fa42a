r"""Emergence-guided edits against edits from x_T, per prototype (the paper's open question: does
emergence tell where an edit can start?).

  python experiments/emergence_edits.py --workdir=runs/quickstart [--num_images=16]
      [--num_trajectories=32] [--margin=1] [--sampler=dpmpp2m --steps=15] [--json=OUT.json]

For a trained workdir with its attribute classifier (shapes: `--mode=evaluate` or `interpret`
trains it): traces `num_trajectories` deterministic trajectories (the workdir's
interpret.sampler and interpret.sample_steps) to find each prototype's median emergence step,
then edits `num_images` held-out images per prototype, moving s_j to the far end of its observed
range, (a) from x_T: full inversion and regeneration, 2K calls, (b) guided: inversion and
regeneration only from `margin` steps before the prototype's emergence. Prints per prototype
the attribute it carries (eta^2 on held-out data), the calls of each and, for each, the
fraction of images whose attribute class the classifier sees change (the intended edit) and the
fraction of other attributes kept, each against the same path's unedited regeneration.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax import data
from patronus_jax import experiment
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir
from patronus_jax.interpret import core
from patronus_jax.interpret import guided_edits
from patronus_jax.interpret import stats
from patronus_jax.tasks.patronus import loading

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (stage 1 + attribute classifier).', required=True)
_NUM_IMAGES = flags.DEFINE_integer('num_images', 16, 'Held-out images edited per prototype.')
_NUM_TRAJ = flags.DEFINE_integer('num_trajectories', 32, 'Trajectories of the emergence steps.')
_MARGIN = flags.DEFINE_integer('margin', 1, 'Regenerate from this many steps before the emergence step.')
_SAMPLER = flags.DEFINE_string('sampler', '', "Deterministic sampler ('': the workdir's interpret.sampler).")
_STEPS = flags.DEFINE_integer('steps', 0, "Its steps K (0: the workdir's interpret.sample_steps).")
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  config = config_lib.load_workdir_config(workdir)
  ic = config.interpret
  model, variables, step = loading.load_stage1_variables(config, workdir)
  clf, _ = classifier_for_workdir(config, workdir)
  spec = core.deterministic_spec(config.diffusion, _STEPS.value or ic.sample_steps, _SAMPLER.value or ic.sampler)
  engine = core.Engine(model, variables, spec, batch_size=max(_NUM_IMAGES.value, _NUM_TRAJ.value), classifier=clf)
  arrays = data.load_arrays(config.data, ic.eval_split or config.data.eval_split,
                            max_examples=max(ic.num_eval_images, _NUM_IMAGES.value + _NUM_TRAJ.value))
  images = np.asarray(arrays['image'], np.float32)
  s = engine.encode(images)['s']
  observed = stats.observed_range(s, ic.low_quantile, ic.high_quantile)
  info = data.get_info(config.data)
  names = list(info.attribute_names)
  association = stats.association_matrix(s, np.asarray(arrays['attributes']), [len(v) for v in info.attribute_values])
  attribute_of = {j: int(np.argmax(association[:, j])) for j in range(s.shape[1])}

  n_img, n_traj = _NUM_IMAGES.value, _NUM_TRAJ.value
  x_T = np.random.default_rng(config.seed + 37).standard_normal((n_traj,) + images.shape[1:]).astype(np.float32)
  traj = engine.trajectory(s[n_img:n_img + n_traj], x_T, what='emergence trajectories')
  steps = stats.emergence_steps(traj['s_traj'], ic.emergence_tolerance * observed['spread'])  # (N, P)
  median_step = np.median(steps, 0)

  classify = lambda x: tuple(np.asarray(p) for p in core.classify_batch(clf, jnp.asarray(x)))
  rows = guided_edits.edit(model, variables, spec, classify, images[:n_img], s[:n_img], range(s.shape[1]),
                           median_step, attribute_of, observed['low'], observed['high'], margin=_MARGIN.value)
  for r in rows:
    a = r['attribute']
    r.update(attribute_name=names[a], eta2=float(association[a, r['prototype']]))
  print(f'# {workdir}: {config.name}, stage-1 step {step}; {spec.sampler} {spec.num_steps} steps '
        f'(spacing {spec.spacing}); {n_img} images per prototype, emergence from {n_traj} trajectories, '
        f'margin {_MARGIN.value}')
  head = (f'{"proto":>5} {"attribute":>10} {"eta2":>5} {"emerge":>6} {"start":>5} | {"calls":>5} {"changed":>7} '
          f'{"kept":>5} {"shift":>5} | {"calls":>5} {"changed":>7} {"kept":>5} {"shift":>5} {"saved":>5}')
  print(f'{"":>36}| {"from x_T":^26} | {"emergence-guided":^32}')
  print(head)
  print('-' * len(head))
  for r in sorted(rows, key=lambda r: r['emergence_step']):
    f, g = r['from_x_T'], r['guided']
    print(f'{r["prototype"]:>5} {r["attribute_name"]:>10} {r["eta2"]:>5.2f} {r["emergence_step"]:>6.1f} '
          f'{r["start_step"]:>5} | {f["calls"]:>5} {f["target_changed"]:>7.2f} {f["others_kept"]:>5.2f} '
          f'{f["target_shift"]:>5.2f} | {g["calls"]:>5} {g["target_changed"]:>7.2f} {g["others_kept"]:>5.2f} '
          f'{g["target_shift"]:>5.2f} {r["calls_saved"]:>5.1f}')
  if _JSON.value:
    with open(_JSON.value, 'w') as fh:
      json.dump({'sampler': spec.sampler, 'steps': spec.num_steps, 'rows': rows}, fh, indent=2)


if __name__ == '__main__':
  experiment.run_app(main)
