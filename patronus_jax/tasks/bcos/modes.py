"""The B-cos modes: `train` (the Task through the shared loop), `explain` (exact explanations of
generations -> workdir/explain/) and `evaluate` (-> metrics.json).

`evaluate` generates one image per eval-split caption (deterministic DDIM) and reports, with the
attribute classifier: prompt adherence per attribute, `fd_classifier` (Fréchet distance of the
classifier's features of the generations to those of the prompts' real images; lower is better,
`fd_classifier_real_baseline` is real training images against the same real images) and the
seconds of one denoiser call (a DDIM step). For a B-cos model it adds
`relevance_adherence_auroc` (adherence.py: does low relevance flag a missed prompt word?), and
when `<workdir>/vanilla` holds the vanilla baseline (`bcos.vanilla=True`, same config otherwise)
`vanilla_comparison`: the same numbers for it, with the same prompts, noise and classifier.
"""

from __future__ import annotations

import os
import statistics
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data
from patronus_jax.core import files as pio
from patronus_jax.core.errors import ConfigError, WorkdirError
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.training import LoopSettings, run_training
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax.evaluate import fid as fid_lib
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir
from patronus_jax.tasks.bcos import adherence as adherence_lib
from patronus_jax.tasks.bcos import explain as explain_lib
from patronus_jax.tasks.bcos.task import BcosTask, generate, load_trained, prompt_adherence, vocabulary_path


def train_mode(config, workdir: str, mesh):
  """`--mode=train` for model_type='bcos': the Task through the shared training loop."""
  info = data.get_info(config.data)
  data.check_image_shape(config.data, info)
  task = BcosTask(config, info=info)
  if task.tokenizer is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    task.tokenizer.save(vocabulary_path(workdir))
  sample_fn = None
  if config.train.sample_every and task.conditioning == 'text':
    arrays = data.load_arrays(config.data, config.data.eval_split,
                              max_examples=config.train.num_sample_images)
    ids = task.encode_prompts(task.captions(arrays))

    def sample_fn(state):
      params = jax.device_get(state.ema_params if config.train.ema_decay > 0 else state.params)
      gen = generate(task, params, jax.device_get(state.variables), ids, seed=config.seed + 1,
                     batch_size=len(ids))
      return np.concatenate([arrays['image'], gen], axis=0)

  batches = data.training_iterator_factory(config.data, config.train.batch_size, config.seed)
  return run_training(task, LoopSettings.from_section(config.train), workdir, batches, seed=config.seed,
                      mesh=mesh, meta={'config': workdir_lib.config_to_dict(config)}, sample_fn=sample_fn)


def _classifier(config, workdir: str):
  return classifier_for_workdir(config, workdir)[0]


def explain_mode(config, workdir: str, mesh):
  """`--mode=explain`: exact explanations of generations -> workdir/explain/."""
  del mesh
  if config.bcos.vanilla:
    raise ConfigError("--mode=explain needs a B-cos model: the vanilla U-Net (bcos.vanilla=True) is not W(x) x")
  task, params, variables, step = load_trained(config, workdir)
  classifier = _classifier(config, workdir) if config.data.name == 'patronus_shapes' else None
  report = explain_lib.explain_workdir(config, workdir, params, variables, classifier=classifier,
                                       task=task)
  s = report['summary']
  logging.info('explain (step %d): completeness error %.2e (%s), relevance content %.3f vs function %.3f',
               step, s['completeness_error'], 'ok' if s['completeness_ok'] else 'ABOVE TOLERANCE',
               s['content_word_relevance'] or float('nan'), s['function_word_relevance'] or float('nan'))
  if 'generation' in s:
    g = s['generation']
    logging.info('explain, whole generation: completeness error %.2e, relevance content %.3f vs '
                 'function %.3f', g['completeness_error'], g['content_word_relevance'] or float('nan'),
                 g['function_word_relevance'] or float('nan'))
  return report


def evaluate_mode(config, workdir: str, mesh):
  """`--mode=evaluate`: prompt adherence, fd_classifier, time per DDIM step; for B-cos also relevance as an
  adherence detector and the comparison with `<workdir>/vanilla` -> metrics.json."""
  del mesh
  if config.bcos.conditioning != 'text':
    raise ConfigError("the B-cos evaluate mode measures prompt adherence: it needs bcos.conditioning='text', "
                      f'got {config.bcos.conditioning!r}')
  vanilla_config = None if config.bcos.vanilla else _vanilla_config(config, workdir)
  t0 = time.time()
  task, params, variables, step = load_trained(config, workdir)
  info = data.get_info(config.data)
  task.info = info
  ev = config.evaluate
  n = min(ev.num_samples, info.num_examples.get(config.data.eval_split, ev.num_samples))
  arrays = data.load_arrays(config.data, config.data.eval_split, max_examples=n)
  prompts = task.captions(arrays)
  ids = task.encode_prompts(prompts)
  classifier = _classifier(config, workdir)
  real = _real_features(config, classifier, arrays['image'])
  metrics = _model_metrics(task, params, variables, step, ids, arrays, classifier, real, info)
  images = metrics.pop('images')
  metrics.update(fd_classifier_real_baseline=real['baseline'], sample_steps=config.diffusion.sample_steps)
  pio.save_image_grid(os.path.join(workdir, 'samples', 'bcos_eval.png'), images[:64])
  if not config.bcos.vanilla and config.bcos.explain_adherence:
    metrics.update(_relevance_adherence(config, workdir, task, params, variables, ids, prompts, images,
                                        arrays['attributes'], classifier, info))
  if vanilla_config is not None:
    metrics['vanilla_comparison'] = _vanilla_comparison(vanilla_config, _vanilla_dir(workdir), metrics, ids,
                                                        arrays, classifier, real, info)
  metrics['seconds'] = time.time() - t0
  pio.write_json(os.path.join(workdir, 'metrics.json'), metrics)
  logging.info('B-cos evaluate (step %d): prompt adherence %s; fd_classifier %.2f (real baseline %.2f)', step,
               metrics['prompt_adherence']['accuracy'], metrics['fd_classifier'], real['baseline'])
  return metrics


def _vanilla_dir(workdir: str) -> str:
  return os.path.join(workdir, 'vanilla')


def _vanilla_config(config, workdir: str):
  """The config of the vanilla baseline in `<workdir>/vanilla` (None when there is none); it must be
  this config with bcos.vanilla=True, or the comparison would not be at equal settings."""
  path = workdir_lib.config_path(_vanilla_dir(workdir))
  if not os.path.exists(path):
    return None
  vanilla = config.copy_and_resolve_references()
  vanilla.bcos.vanilla = True
  old = workdir_lib.read_config_values(_vanilla_dir(workdir))
  diffs = workdir_lib.differences(old, workdir_lib.config_to_dict(vanilla))
  if diffs:
    lines = '; '.join(f'{k}: vanilla has {a!r}, this run has {b!r}' for k, a, b in diffs)
    raise WorkdirError(f'{_vanilla_dir(workdir)} holds a vanilla model trained with other settings ({lines}); '
                       'train it with this config and --config.bcos.vanilla=True, or remove it')
  return vanilla


def _quantized(images: np.ndarray) -> np.ndarray:
  """Images as a PNG would store them (8 bits), so that real and generated images are read alike."""
  return np.round((np.clip(images, -1, 1) + 1) * 127.5) / 127.5 - 1


def _real_features(config, classifier, eval_images: np.ndarray) -> dict:
  """Classifier features of the prompts' real images, and fd_classifier of as many real training images
  to them (what a perfect generator would score at this sample size)."""
  ev = config.evaluate
  real = clf_lib.features(classifier, _quantized(eval_images), ev.batch_size)
  train = data.load_arrays(config.data, config.data.train_split, max_examples=len(eval_images))['image']
  baseline = fid_lib.frechet_distance_from_features(
      clf_lib.features(classifier, _quantized(train), ev.batch_size), real)
  return dict(features=real, baseline=float(baseline))


def _median_seconds(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _step_seconds(task, params, variables, ids: np.ndarray) -> dict:
  """Median seconds (after compilation; this machine under its current load) of one denoiser call
  on `evaluate.batch_size` images: one DDIM step. Training throughput is in the train log."""
  config = task.config
  b, size, c = config.evaluate.batch_size, config.data.image_size, config.data.channels
  ids = jnp.asarray(np.resize(ids, (b, ids.shape[1])))
  x = jax.random.normal(jax.random.PRNGKey(0), (b, size, size, c))
  t = jnp.full((b,), config.diffusion.timesteps // 2, jnp.int32)
  call = jax.jit(lambda p, v, x, t, ids: task.apply(p, v, x, t, {'token_ids': ids}))
  return dict(seconds_per_denoiser_call=_median_seconds(call, params, variables, x, t, ids), batch_size=int(b))


def _model_metrics(task, params, variables, step, ids, arrays, classifier, real, info) -> dict:
  """Generations of `ids` (seed config.seed) and their adherence, fd_classifier and step times."""
  config = task.config
  t0 = time.time()
  images = generate(task, params, variables, ids, seed=config.seed, batch_size=config.evaluate.batch_size)
  generate_s = time.time() - t0
  fd = fid_lib.frechet_distance_from_features(
      clf_lib.features(classifier, _quantized(images), config.evaluate.batch_size), real['features'])
  return dict(step=step, model='vanilla' if config.bcos.vanilla else 'bcos', images=images,
              prompt_adherence=prompt_adherence(clf_lib.predict(classifier, images), arrays['attributes'],
                                                info.attribute_names),
              fd_classifier=float(fd), generate_seconds=generate_s,
              time_per_step=_step_seconds(task, params, variables, ids))


def _relevance_adherence(config, workdir, task, params, variables, ids, prompts, images, labels, classifier,
                         info) -> dict:
  """relevance_adherence_auroc per attribute (adherence.py) and the figure of the best- and worst-
  explained misses (explain/relevance_misses.png)."""
  t0 = time.time()
  relevance = adherence_lib.whole_generation_relevance(task, params, variables, ids, seed=config.seed,
                                                       batch_size=config.evaluate.batch_size)
  predicted = {k: np.argmax(v, axis=-1) for k, v in clf_lib.predict(classifier, images).items()}
  tokens = [task.tokenizer.tokens(row[row != 0]) for row in np.asarray(ids)]
  records = adherence_lib.word_records(tokens, relevance, labels, predicted, info.attribute_names,
                                       info.attribute_values)
  out = dict(relevance_adherence_auroc=adherence_lib.relevance_auroc(records, seed=config.seed))
  pio.write_json(os.path.join(workdir, 'explain', 'relevance_adherence.json'), dict(prompts=prompts, records=records))
  shown = [a for a in ('color', 'shape') if a in info.attribute_names] or list(info.attribute_names)
  figure = adherence_lib.misses_figure(images, prompts, records, shown)
  if figure is not None:
    path = os.path.join(workdir, 'explain', 'relevance_misses.png')
    pio.save_png(path, figure)
    out['relevance_misses_figure'] = os.path.relpath(path, workdir)
  out['relevance_adherence_seconds'] = time.time() - t0
  logging.info('relevance as a missed-word detector (AUROC): %s',
               {k: v['auroc'] for k, v in out['relevance_adherence_auroc'].items()})
  return out


def _vanilla_comparison(vanilla_config, vanilla_dir, bcos, ids, arrays, classifier, real, info):
  """The vanilla baseline evaluated like the B-cos model (same prompts, x_T, classifier, real
  features), and the ratios B-cos / vanilla."""
  task, params, variables, step = load_trained(vanilla_config, vanilla_dir)
  vanilla = _model_metrics(task, params, variables, step, ids, arrays, classifier, real, info)
  del vanilla['images']
  keys = ('step', 'fd_classifier', 'prompt_adherence', 'time_per_step', 'generate_seconds')
  ratio = bcos['fd_classifier'] / max(vanilla['fd_classifier'], 1e-12)
  return dict(
      workdir=vanilla_dir, vanilla={k: vanilla[k] for k in keys}, bcos={k: bcos[k] for k in keys},
      equal_steps=bcos['step'] == vanilla['step'], fd_classifier_ratio=ratio,
      fd_classifier_within_25_percent=bool(ratio <= 1.25),
      adherence_difference={k: bcos['prompt_adherence']['accuracy'][k] - v
                            for k, v in vanilla['prompt_adherence']['accuracy'].items()},
      denoiser_call_time_ratio=(bcos['time_per_step']['seconds_per_denoiser_call']
                                / vanilla['time_per_step']['seconds_per_denoiser_call']))
