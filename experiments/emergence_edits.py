r"""Emergence-guided edits against edits from x_T, per attribute (the paper's open question: does
emergence tell where an edit can start?).

  python experiments/emergence_edits.py --workdir=runs/quickstart [--num_images=32]
      [--num_trajectories=64] [--first_image=0] [--tolerance=0.5] [--margin=2]
      [--sampler=dpmpp2m --steps=15 --spacing=logsnr] [--carry_picture=auto|no|edit|both] [--curve] [--json=OUT.json]

For a trained workdir with its attribute classifier (shapes: `--mode=evaluate` or `interpret`
trains it). Per attribute, the edit is the scorecard's (`evaluate/semantics.py`): one prototype is
moved to the far end of its held-out range, by default the scorecard's `controlling_prototype`
(the one whose edit changed the attribute alone most often; read from the workdir's metrics.json,
so run `--mode=evaluate` first), with `--prototype=reading` the one that reads it best. The edit starts
  from x_T          full inversion and regeneration, 2K calls;
  x0_hat emergence  `margin` steps before the step from which x0_hat's label of the attribute is
                    final (median over `num_trajectories` sampled trajectories; Patronus's reading);
  commitment        `margin` steps before the step from which switching s to the edited s mid-
                    trajectory stops changing the attribute (`interpret/guided_edits.py`), measured
                    on the same sampled trajectories, no held-out image.
`--carry_picture=edit` (what `auto`, the default, picks for a model with the decoder of s): a start
after x_T also moves its state by the change of the decoder's picture of s, so the edit reaches the
coarse layout that x_t has already fixed (`interpret/guided_edits.py`); `both`: the switch curve
carries it too, so the commitment is that of the carried switch; `no`: neither (the rows in
benchmarks/RESULTS.md before 2026-12-06's fifth session).
Each edit of `num_images` held-out images (disjoint from the trajectories' s) is judged against
the same path's unedited regeneration: `success` = the attribute's label changed and every other
attribute's stayed (the scorecard's edit_success), `changed` = the attribute's label changed.
`--curve` also edits the held-out images from every start step (what each start would give).
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax import data
from patronus_jax import experiment
from patronus_jax.core import files as pio
from patronus_jax.evaluate import semantics
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir
from patronus_jax.interpret import core
from patronus_jax.interpret import figures
from patronus_jax.interpret import guided_edits
from patronus_jax.tasks.patronus import evaluate_mode
from patronus_jax.tasks.patronus import loading

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (stage 1 + attribute classifier).', required=True)
_NUM_IMAGES = flags.DEFINE_integer('num_images', 32, 'Held-out images edited per attribute.')
_NUM_TRAJ = flags.DEFINE_integer('num_trajectories', 64, 'Sampled trajectories for both emergence readings.')
_FIRST_IMAGE = flags.DEFINE_integer('first_image', 0, "Edit the held-out images from this index on (after the "
                                    "trajectories' s): a disjoint set checks a tolerance and margin chosen on another.")
_TOLERANCE = flags.DEFINE_float('tolerance', 0.5, 'Committed once a switch changes the attribute in less '
                                'than (1 - tolerance) of the trajectories a switch at step 0 changes.')
_MIN_EFFECT = flags.DEFINE_float('min_effect', 0.25, 'Read no commitment (start from x_T) for an edit whose switch '
                                 'at step 0 changes the attribute in fewer trajectories than this.')
# 2: on the 16,000-step quickstart model, starting 1 step before commitment lost edit success
# (stripes 0.55 -> 0.47 on 96 held-out images), 2 steps before kept it (benchmarks/RESULTS.md)
_MARGIN = flags.DEFINE_integer('margin', 2, 'Start this many steps before the emergence step.')
_SAMPLER = flags.DEFINE_string('sampler', '', "Deterministic sampler ('': the workdir's interpret.sampler).")
_STEPS = flags.DEFINE_integer('steps', 0, "Its steps K (0: the workdir's interpret.sample_steps).")
_SPACING = flags.DEFINE_enum('spacing', '', ['', 'time', 'logsnr'], "dpmpp2m's timestep grid ('': the workdir's).")
_CURVE = flags.DEFINE_bool('curve', False, 'Also edit the held-out images from every start step.')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')
_PROTOTYPE = flags.DEFINE_enum('prototype', 'effect', ['effect', 'reading'],
                               "Which prototype an attribute's edit moves: the scorecard's controlling_prototype "
                               "(metrics.json) or the best single reader of the attribute.")
# 'edit' by default: on the quickstart the shape edit kept its success from x_T (0.41) at 2.5x fewer
# calls with the picture carried, 0.12 without (benchmarks/RESULTS.md)
_CARRY = flags.DEFINE_enum('carry_picture', 'auto', ['auto', 'no', 'edit', 'both'],
                           "A later start also moves its state by the change of the decoder's picture of s "
                           "(`guided_edits.carry_picture`; needs the decoder of s): 'edit': in the edits, which start "
                           "where the plain switch commits; 'both': also in the switch curve, so the commitment step "
                           "is read for the carried switch; 'auto': 'edit' for a model with the decoder, else 'no'.")
_FIGURE = flags.DEFINE_string('figure', '', 'Also save a PNG of the first held-out images of each edit: the image, '
                               'its edit from x_T and its edit from the commitment start.')
_STARTS = ('from_x_T', 'x0_emergence', 'commitment')
_FIGURE_IMAGES = 3


def _edited_prototypes(workdir: str, s: np.ndarray, attributes: np.ndarray, names) -> dict:
  """Per attribute the prototype to edit (`--prototype`)."""
  if _PROTOTYPE.value == 'reading':
    return semantics.representation_scores(s, attributes, names)['reading_prototype']
  path = os.path.join(workdir, evaluate_mode.METRICS_FILENAME)
  sem = pio.read_json(path).get('semantics', {}) if os.path.exists(path) else {}
  if not isinstance(sem.get('edit_selection'), dict):
    raise app.UsageError(f'{path} has no semantics scorecard whose edits were chosen by effect: run --mode=evaluate '
                         "with 'semantics' in evaluate.metrics and semantics_selection_images > 0, or pass "
                         '--prototype=reading')
  return {n: int(sem['controlling_prototype'][n]) for n in names}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  config = config_lib.load_workdir_config(workdir)
  ic = config.interpret
  model, variables, step = loading.load_stage1_variables(config, workdir)
  clf, _ = classifier_for_workdir(config, workdir)
  spec = core.deterministic_spec(config.diffusion, _STEPS.value or ic.sample_steps, _SAMPLER.value or ic.sampler)
  spec = dataclasses.replace(spec, spacing=_SPACING.value or spec.spacing)
  n_img, n_traj, k_steps = _NUM_IMAGES.value, _NUM_TRAJ.value, spec.num_steps
  carry = _CARRY.value
  if carry == 'auto':
    carry = 'edit' if guided_edits.has_picture(model) else 'no'
  elif carry != 'no' and not guided_edits.has_picture(model):
    raise app.UsageError(f'--carry_picture={carry} needs a model with the decoder of s (train.s_decoder_weight > 0)')
  engine = core.Engine(model, variables, spec, batch_size=max(n_img, n_traj), classifier=clf)
  arrays = data.load_arrays(config.data, ic.eval_split or config.data.eval_split,
                            max_examples=max(ic.num_eval_images, n_traj + _FIRST_IMAGE.value + n_img))
  images = np.asarray(arrays['image'], np.float32)
  attributes = np.asarray(arrays['attributes'])
  s = np.asarray(engine.encode(images)['s'])
  names = list(data.get_info(config.data).attribute_names)
  controlling = _edited_prototypes(workdir, s, attributes, names)

  probs = lambda x: [np.asarray(p) for p in core.classify_batch(clf, jnp.asarray(x))]
  labels = lambda x: np.stack([np.argmax(p, -1) for p in probs(x)], 1)
  # how sure the judge is of every attribute of an image (mean over images of the least sure one): an
  # edit that leaves two objects blended reads lower than a clean drawing
  confidence = lambda x: float(np.mean(np.min(np.stack([p.max(-1) for p in probs(x)], 1), 1)))
  first = n_traj + _FIRST_IMAGE.value
  if first + n_img > len(images):
    raise app.UsageError(f'{len(images)} held-out images; --num_trajectories + --first_image + --num_images needs '
                         f'{first + n_img}')
  edited_images, s_img, s_traj = images[first:first + n_img], s[first:first + n_img], s[:n_traj]
  x_T = np.random.default_rng(config.seed + 37).standard_normal((n_traj,) + images.shape[1:]).astype(np.float32)
  probs_traj = engine.trajectory(s_traj, x_T, what='emergence trajectories')['probs_traj']
  traj_images, states = guided_edits.sample_states(model, variables, jnp.asarray(s_traj), jnp.asarray(x_T), spec)
  traj_labels = labels(np.asarray(traj_images))
  cache: dict = {}
  rows, shown = [], []
  for a, name in enumerate(names):
    j = controlling[name]
    edit = lambda x: semantics.edited_activations(x, j, s)
    judge = lambda base, edited, a=a: dict(zip(('success', 'changed'), semantics.edit_success(base, edited, a)))
    curve = guided_edits.switch_curve(model, variables, spec, labels, states, traj_labels, edit(s_traj), a,
                                      s=s_traj, carry=carry == 'both')
    emerge = {'x0_emergence': guided_edits.x0_emergence_step(probs_traj[a]),
              'commitment': guided_edits.commitment_step(curve, _TOLERANCE.value, _MIN_EFFECT.value)}
    starts = {'from_x_T': 0, **{k: guided_edits.start_step(v, _MARGIN.value) for k, v in emerge.items()}}
    def run(k):
      r = guided_edits.edit_from(model, variables, spec, labels, judge, edited_images, s_img, edit(s_img), k, cache,
                                 carry=carry != 'no', keep_images=True)
      edited, base = r.pop('edited'), r.pop('base')
      return dict(r, confidence=confidence(edited), confidence_unedited=confidence(base)), edited

    runs = {k: run(v) for k, v in starts.items()}
    row = {'attribute': name, 'prototype': int(j), **{f'{k}_step': v for k, v in emerge.items()},
           'switch_curve': curve.tolist(), **{k: r for k, (r, _) in runs.items()}}
    if _CURVE.value:
      row['held_out_curve'] = [run(k)[0] for k in range(k_steps)]
    rows.append(row)
    shown.append([edited_images[:_FIGURE_IMAGES], runs['from_x_T'][1][:_FIGURE_IMAGES],
                  runs['commitment'][1][:_FIGURE_IMAGES]])

  calibration = n_traj * (k_steps + k_steps * (k_steps + 1) // 2)
  print(f'# {workdir}: {config.name}, stage-1 step {step}; {spec.sampler} {k_steps} steps (spacing '
        f'{spec.spacing}, timesteps {spec.timesteps_used().tolist()}); {n_img} held-out images per edit; '
        f'emergence from {n_traj} trajectories; tolerance {_TOLERANCE.value}, margin {_MARGIN.value}; '
        f'picture carried: {carry}; '
        f'measuring one commitment costs {calibration} image-calls')
  head = f'{"attribute":>10} {"proto":>5} {"x0em":>4} {"commit":>6} |' + ''.join(
      f' {"start":>5} {"calls":>5} {"success":>7} {"changed":>7} {"conf":>5} |' for _ in _STARTS) + f' {"saved":>5}'
  print(f'{"":>30}|' + '|'.join(f'{k:^39}' for k in _STARTS) + '|')
  print(head)
  print('-' * len(head))
  for r in rows:
    cells = ''.join(f' {r[k]["start_step"]:>5} {r[k]["calls"]:>5} {r[k]["success"]:>7.2f} {r[k]["changed"]:>7.2f}'
                    f' {r[k]["confidence"]:>5.2f} |' for k in _STARTS)
    saved = r['from_x_T']['calls'] / r['commitment']['calls']
    print(f'{r["attribute"]:>10} {r["prototype"]:>5} {r["x0_emergence_step"]:>4.1f} {r["commitment_step"]:>6} |'
          f'{cells} {saved:>5.2f}')
  print('\nswitch curve (fraction of sampled trajectories whose attribute changes when s is switched at step k):')
  for r in rows:
    print(f'{r["attribute"]:>10} ' + ' '.join(f'{c:.2f}' for c in r['switch_curve']))
  print(f'\nconf: the judge\'s confidence in every attribute of the edited images (mean of the least sure '
        f'attribute; the unedited regenerations from x_T: {rows[0]["from_x_T"]["confidence_unedited"]:.2f})')
  if _FIGURE.value:
    cells = [[img for triple in zip(*block) for img in triple] for block in shown]
    columns = [c for i in range(_FIGURE_IMAGES) for c in (f'image {i + 1}', 'edit from x_T', 'guided edit')]
    calls = lambda r, k: f'{r[k]["calls"]} calls'
    fig = figures.image_table(
        cells, [f'{r["attribute"]} (p{r["prototype"]})\n{calls(r, "from_x_T")} / {calls(r, "commitment")}'
                for r in rows], columns,
        f'{config.name}: one prototype moved to the far end of its range; from x_T, and from the commitment '
        f'start{"" if carry == "no" else " with the picture carried"}')
    pio.save_figure(_FIGURE.value, fig)
  if _CURVE.value:
    print('\nheld-out edits from every start step k (success / changed):')
    for r in rows:
      print(f'{r["attribute"]:>10} ' + ' '.join(f'{c["success"]:.2f}/{c["changed"]:.2f}' for c in r['held_out_curve']))
  if _JSON.value:
    with open(_JSON.value, 'w') as fh:
      json.dump({'sampler': spec.sampler, 'steps': k_steps, 'tolerance': _TOLERANCE.value, 'margin': _MARGIN.value,
                 'carry_picture': carry,
                 'calibration_calls': calibration, 'rows': rows}, fh, indent=2)


if __name__ == '__main__':
  experiment.run_app(main)
