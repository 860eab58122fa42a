r"""B-cos diffusion on the shapes dataset: train, then measure adherence, explanations and the comparison
with a vanilla U-Net.

  python experiments/bcos_shapes.py --workdir=runs/bcos_shapes [--config=configs/bcos_shapes.py] \
      [--config.train.num_steps=3000] [--num_adherence=256] [--num_explain=16] [--vanilla] [--only_evaluate]

  # the poster's two practical claims (README, B-cos results):
  python experiments/bcos_shapes.py --config=configs/bcos_shapes.py:compare --workdir=runs/bcos_compare \
      --vanilla --only_evaluate

1. Trains the B-cos U-Net on (image, caption) batches through the shared training loop
   (`tasks/bcos/modes.train_mode`: the Task protocol, AdamW, EMA, checkpoints; resumes if stopped).
2. Prompt adherence: generates one image per test-split caption (deterministic DDIM) and
   classifies it with the attribute classifier of the workdir (trained on the real training
   images if missing); reports the accuracy of every attribute against the prompt's labels,
   in particular colour and shape.
3. Explanations: for `num_explain` test prompts, explains every DDIM step of the generation
   (x̂0 as the output, one linearisation per step) and the final image over the whole DDIM
   chain, and reports for both the largest completeness error and the mean token relevance
   S_i of content words (colour, shape) against the function words ("a", "on").

4. With --vanilla: trains the vanilla baseline (the same config with bcos.vanilla=True, same data,
   steps and sampler) into <workdir>/vanilla and runs `--mode=evaluate` (tasks/bcos/modes.py):
   fd_classifier, prompt adherence and time per DDIM step of both models on the same prompts and
   noise (`vanilla_comparison`), and how well low token relevance flags the prompt words a
   generation misses (`relevance_adherence_auroc`). --only_evaluate skips 2 and 3.

Writes <workdir>/bcos_shapes_results.json (and the usual explain/ reports) and prints it.
"""

from __future__ import annotations

import os

from absl import flags
from absl import logging
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax import data
from patronus_jax import experiment
from patronus_jax.core import files as pio
from patronus_jax.core import sharding
from patronus_jax.core import timing
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir
from patronus_jax.tasks.bcos import explain as explain_lib
from patronus_jax.tasks.bcos import modes as bcos_modes
from patronus_jax.tasks.bcos import task as bcos_task
from patronus_jax.tasks.bcos import tokenizer as text

experiment.define_config_flags(experiment.repo_config(__file__, 'bcos_shapes.py'), 'B-cos config file.')
FLAGS = flags.FLAGS
_NUM_ADHERENCE = flags.DEFINE_integer('num_adherence', 256, 'Test prompts generated for prompt adherence.')
_NUM_EXPLAIN = flags.DEFINE_integer('num_explain', 16, 'Test prompts whose generations are explained.')
_SKIP_TRAIN = flags.DEFINE_bool('skip_train', False, 'Only measure (the workdir holds a trained model).')
_VANILLA = flags.DEFINE_bool('vanilla', False, 'Also train the vanilla U-Net into <workdir>/vanilla and compare.')
_ONLY_EVALUATE = flags.DEFINE_bool('only_evaluate', False, 'Skip the adherence and explanation measurements; '
                                   'only train and run --mode=evaluate.')

CONTENT = {'colour': ('red', 'green', 'blue', 'yellow'), 'shape': ('circle', 'square', 'triangle')}
FUNCTION = ('a', 'on')


def word_relevance(reports: list[dict], whole: bool = False) -> dict:
  """Mean relevance per token of colour words, shape words, 'a' and 'on' over prompts
  (per-step explanations averaged over steps, or with `whole` the whole-generation one)."""
  groups = {'colour': [], 'shape': [], 'a': [], 'on': [], 'all_content': [], 'all_function': []}
  for r in reports:
    for w, s in zip(r['tokens'], r['generation']['relevance'] if whole else r['relevance']):
      if w in CONTENT['colour']:
        groups['colour'].append(s)
      if w in CONTENT['shape']:
        groups['shape'].append(s)
      if w in FUNCTION:
        groups[w].append(s)
      groups['all_function' if w in text.FUNCTION_WORDS else 'all_content'].append(s)
  out = {k: float(np.mean(v)) if v else None for k, v in groups.items()}
  out['uniform_share'] = float(np.mean([1.0 / len(r['tokens']) for r in reports]))
  return out


SWAP_SHAPE = {'circle': 'square', 'square': 'triangle', 'triangle': 'circle'}
SWAP_COLOUR = {'red': 'green', 'green': 'blue', 'blue': 'yellow', 'yellow': 'red'}


def swap_effect(task, params, variables, prompts, ids, whole, seed, table, explain_lib) -> dict:
  """How much of a word's effect runs through its explained (linear) path.

  Regenerates from the same x_T with the word replaced (`table`). If the dynamic factors did
  not change, x_0 would change by exactly the two words' contribution maps, so
  ||Δx_0||_1 <= mass(old word) + mass(new word); a ratio above 1 is effect that runs through
  the factors an explanation holds fixed (attention weights, |cos| scales, norm statistics).
  """
  swapped = [' '.join(table.get(t, t) for t in p.split()) for p in prompts]
  ids_s = task.encode_prompts(swapped)
  w_s = explain_lib.explain_whole_generation(
      task, params, variables, {'token_ids': jnp.asarray(ids_s)},
      explain_lib.prompt_noise(task.config, len(prompts), seed), token_maps=True)
  change, mass = [], []
  for b in range(len(prompts)):
    slots = [i for i, t in enumerate(task.tokenizer.tokens(ids[b])) if t in table]
    if not slots:
      continue
    change.append(float(np.abs(w_s['samples'][b] - whole['samples'][b]).sum()))
    mass.append(float(np.abs(whole['token_maps'][b, slots[0]]).sum()
                      + np.abs(w_s['token_maps'][b, slots[0]]).sum()))
  ratio = [c / max(m, 1e-12) for c, m in zip(change, mass)]
  return dict(num_prompts=len(change), mean_l1_change_of_x0=float(np.mean(change)),
              mean_contribution_mass_of_both_words=float(np.mean(mass)),
              mean_ratio=float(np.mean(ratio)),
              mean_l1_of_x0=float(np.abs(whole['samples']).sum(axis=(1, 2, 3)).mean()))


def main(argv):
  del argv
  config = config_lib.validate(FLAGS.config)
  workdir = FLAGS.workdir
  os.makedirs(workdir, exist_ok=True)
  timings = {}
  mesh = sharding.make_mesh(config.mesh)
  with timing.timed(timings, 'train_s'):
    if not _SKIP_TRAIN.value:
      bcos_modes.train_mode(config, workdir, mesh)
      if _VANILLA.value:
        bcos_modes.train_mode(_vanilla(config), os.path.join(workdir, 'vanilla'), mesh)
  results = dict(config=_config_summary(config), timings=timings)
  if not _ONLY_EVALUATE.value:
    results.update(_adherence_and_explanations(config, workdir, timings))
  if _VANILLA.value or _ONLY_EVALUATE.value:
    with timing.timed(timings, 'evaluate_s'):
      metrics = bcos_modes.evaluate_mode(config, workdir, mesh)
    results['evaluate'] = {k: metrics[k] for k in ('step', 'prompt_adherence', 'fd_classifier',
                                                   'fd_classifier_real_baseline', 'time_per_step',
                                                   'relevance_adherence_auroc', 'vanilla_comparison')
                           if k in metrics}
  pio.write_json(os.path.join(workdir, 'bcos_shapes_results.json'), results)
  logging.info('results: %s', results)
  print(pio.json.dumps(pio._jsonable(results), indent=2))  # pylint: disable=protected-access


def _vanilla(config):
  """The same config with the vanilla U-Net (written to <workdir>/vanilla/config.json, which
  `--mode=evaluate` checks against the B-cos run's)."""
  vanilla = config.copy_and_resolve_references()
  vanilla.bcos.vanilla = True
  workdir_lib.check_and_write_config(os.path.join(FLAGS.workdir, 'vanilla'), vanilla)
  return vanilla


def _config_summary(config) -> dict:
  return dict(name=config.name, prediction=config.diffusion.prediction,
              sample_steps=config.diffusion.sample_steps, num_steps=config.train.num_steps,
              batch_size=config.train.batch_size, base_channels=config.bcos.base_channels,
              channel_mults=list(config.bcos.channel_mults), b=config.bcos.b, max_out=config.bcos.max_out)


def _adherence_and_explanations(config, workdir, timings) -> dict:
  """Prompt adherence of `--num_adherence` test captions and explanations of `--num_explain`."""
  with timing.timed(timings, 'generate_s'):
    task, params, variables, step = bcos_task.load_trained(config, workdir)
    info = data.get_info(config.data)
    task.info = info
    test = data.load_arrays(config.data, config.data.eval_split, max_examples=_NUM_ADHERENCE.value)
    captions = task.captions(test)
    images = bcos_task.generate(task, params, variables, task.encode_prompts(captions),
                                seed=config.seed, batch_size=64)
  pio.save_image_grid(os.path.join(workdir, 'samples', 'adherence_first64.png'), images[:64])
  pio.save_image_grid(os.path.join(workdir, 'samples', 'adherence_real_first64.png'), test['image'][:64])
  with timing.timed(timings, 'classify_s'):
    classifier, clf_metrics = classifier_for_workdir(config, workdir)
    adherence = _adherence(classifier, clf_metrics, images, test, info)
  with timing.timed(timings, 'explain_s'):
    explanations = _explanations(config, workdir, task, params, variables, captions[:_NUM_EXPLAIN.value],
                                 classifier, info)
  return dict(step=step, prompt_adherence=adherence, explanations=explanations)


def _adherence(classifier, clf_metrics, images, test, info) -> dict:
  """How often the classifier finds the prompt's colour and shape in the generations."""
  adherence = bcos_task.prompt_adherence(clf_lib.predict(classifier, images), test['attributes'],
                                         info.attribute_names)
  real = bcos_task.prompt_adherence(clf_lib.predict(classifier, test['image']), test['attributes'],
                                    info.attribute_names)
  return dict(
      color_accuracy=adherence['accuracy']['color'], shape_accuracy=adherence['accuracy']['shape'],
      color_and_shape=adherence['color_and_shape'], all_attributes=adherence['accuracy'],
      num_prompts=adherence['num_prompts'],
      chance={'color': 0.25, 'shape': 1 / 3},
      real_images_through_classifier=real['accuracy'],
      classifier_holdout_accuracy=clf_metrics.get('accuracy'))


def _beats(r) -> bool:
  """Colour and shape words each carry more relevance than 'a' and 'on'."""
  return bool(r['colour'] is not None and r['shape'] is not None and
              min(r['colour'], r['shape']) > max(r['a'] or 0.0, r['on'] or 0.0))


def _explanations(config, workdir, task, params, variables, prompts, classifier, info) -> dict:
  """Per-step and whole-generation explanations of `prompts`: exactness, relevance, word swaps."""
  report, pngs, raw = explain_lib.explain_prompts(
      task, params, variables, prompts, seed=config.seed + 1, steps='all', target='x0',
      classifier=classifier, attribute_names=info.attribute_names,
      attribute_values=info.attribute_values, whole=True, token_maps=True)
  out_dir = os.path.join(workdir, 'explain')
  os.makedirs(out_dir, exist_ok=True)
  for i, png in enumerate(pngs):
    pio.save_png(os.path.join(out_dir, f'prompt_{i}.png'), png)
  pio.write_json(os.path.join(out_dir, 'report.json'), report)
  relevance = word_relevance(report['prompts'])
  whole = report['summary']['generation']
  whole_relevance = word_relevance(report['prompts'], whole=True)
  w = raw['generation']
  ids = task.encode_prompts(prompts)
  swaps = {name: swap_effect(task, params, variables, prompts, ids, w, config.seed + 1, table, explain_lib)
           for name, table in (('shape', SWAP_SHAPE), ('colour', SWAP_COLOUR))}
  return dict(
      completeness_error_max=report['summary']['completeness_error'],
      sum_error_max=report['summary']['sum_error'],
      num_prompts=len(prompts), steps_per_generation=len(report['summary']['explained_steps']),
      relevance=relevance,
      content_beats_function=_beats(relevance),
      mean_relevance_by_word=report['summary']['mean_relevance_by_word'],
      input_shares=report['summary']['input_shares'],
      whole_generation=dict(
          completeness_error_max=whole['completeness_error'], sum_error_max=whole['sum_error'],
          relevance=whole_relevance, content_beats_function=_beats(whole_relevance),
          pixel_mass_share=_pixel_mass_relevance(report, w),
          word_swaps=swaps,
          mean_relevance_by_word=whole['mean_relevance_by_word'],
          input_shares=whole['input_shares']))


def _pixel_mass_relevance(report, w) -> dict:
  """Is a word's small S_i a cancellation inside the signed sum over pixels? Its share of the
  pixel-wise contribution mass sum_hwc |contribution| answers that (same generations)."""
  mass = np.abs(w['token_maps']).sum(axis=(2, 3, 4))
  mass_reports = []
  for b, r in enumerate(report['prompts']):
    m = mass[b][np.asarray(w['token_mask'][b], bool)]
    mass_reports.append(dict(tokens=r['tokens'], generation=dict(relevance=(m / m.sum()).tolist())))
  return word_relevance(mass_reports, whole=True)


if __name__ == '__main__':
  experiment.run_app(main)
