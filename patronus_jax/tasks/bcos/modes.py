"""The B-cos modes: `train` (the Task through the shared loop), `explain` (exact explanations of
generations -> workdir/explain/) and `evaluate` (prompt adherence -> metrics.json)."""

from __future__ import annotations

import os
import time

from absl import logging
import jax
import numpy as np

from patronus_jax import data
from patronus_jax.core import files as pio
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.training import LoopSettings, run_training
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir
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
  """`--mode=evaluate`: prompt adherence of generations (attribute classifier) -> metrics.json."""
  del mesh
  task, params, variables, step = load_trained(config, workdir)
  if task.conditioning != 'text':
    raise ValueError("the B-cos evaluate mode measures prompt adherence: it needs bcos.conditioning='text'")
  info = data.get_info(config.data)
  task.info = info
  t0 = time.time()
  n = min(config.evaluate.num_samples, info.num_examples.get(config.data.eval_split, config.evaluate.num_samples))
  arrays = data.load_arrays(config.data, config.data.eval_split, max_examples=n)
  ids = task.encode_prompts(task.captions(arrays))
  images = generate(task, params, variables, ids, seed=config.seed, batch_size=config.evaluate.batch_size)
  classifier = _classifier(config, workdir)
  metrics = dict(step=step, prompt_adherence=prompt_adherence(
      clf_lib.predict(classifier, images), arrays['attributes'], info.attribute_names),
      sample_steps=config.diffusion.sample_steps, seconds=time.time() - t0)
  pio.save_image_grid(os.path.join(workdir, 'samples', 'bcos_eval.png'), images[:64])
  pio.write_json(os.path.join(workdir, 'metrics.json'), metrics)
  logging.info('B-cos prompt adherence: %s', metrics['prompt_adherence'])
  return metrics
