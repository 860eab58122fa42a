"""`--mode=evaluate`: the paper's numbers for a trained workdir, written to `<workdir>/metrics.json`.

  1. s of the eval images (the trained prototype network), with their attributes.
  2. Generated images, `evaluate.num_samples` of each kind in `evaluate.samples`:
       conditional    s of real eval images, new noise
       unconditional  s from the latent diffusion model
  3. Image metrics against real statistics of `evaluate.fid_split` (cached in the workdir):
       FID            pytorch-fid's InceptionV3 pool3, when `evaluate.inception_weights` is set
       fd_classifier  the same Fréchet distance on the attribute classifier's features,
                      computed instead of FID without Inception weights (never called FID)
     plus, from the attribute classifier: how often a conditional sample shows the attributes
     of the image its s came from, and how far the attribute frequencies of unconditional
     samples are from those of real images.
  4. Representation metrics on s of `evaluate.probe_split`: attribute probes (AUROC, 5-fold CV
     on standardised s), TAD and DCI with the dataset's attributes.
  5. The semantics scorecard (evaluate/semantics.py): single-prototype AUROCs, alive and
     duplicate prototypes on s of `probe_split`; keep rates against chance and edit success from
     `semantics_images` eval images regenerated from their s, read by the attribute classifier.

metrics.json holds every number, the feature networks, sample counts, timings and the config
fields used; `status/evaluate.json` records the checkpoints and evaluate config it came from,
so a second run with the same ones returns the existing metrics without recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import jax
import numpy as np

from patronus_jax import data as data_lib
from patronus_jax.core import batching
from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core import files as pio
from patronus_jax.core import timing
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.errors import CheckpointError, ConfigError
from patronus_jax.core.training import metric_writer
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax.evaluate import disentanglement
from patronus_jax.evaluate import fid as fid_lib
from patronus_jax.evaluate import inception
from patronus_jax.evaluate import probes
from patronus_jax.evaluate import semantics
from patronus_jax.evaluate import workdir_classifier
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import sample as sample_lib
from patronus_jax.tasks.patronus import training

METRICS_FILENAME = 'metrics.json'
OUTPUT_DIR = 'evaluate'  # sample grids
GENERATE_BLOCK = 2048  # generated images per block (rounded to a multiple of evaluate.batch_size)
# How categorical attributes enter TAD, which is defined for binary attributes only.
TAD_BINARISATION = 'one-vs-rest indicator per value of each attribute with more than 2 values'
REPRESENTATION_METRICS = ('probe', 'tad', 'dci', 'semantics')


class MissingCheckpointError(CheckpointError):
  """A checkpoint the evaluation needs is not in the workdir; the message names the mode."""


class _Models(NamedTuple):
  model: Any
  variables: Any
  latent: Optional[tuple]  # (latent model, its variables, s statistics), for unconditional samples


class _Networks(NamedTuple):
  """The feature networks of the image metrics (by metric name) and the attribute classifier."""
  fns: dict[str, Callable[[np.ndarray], np.ndarray]]
  descriptions: dict[str, dict]
  classifier: Any


# ----------------------------------------------------------------------------- checks


def _latest_step(workdir: str, stage: str) -> Optional[int]:
  directory = ckpt_lib.stage_dir(workdir, stage)
  if not os.path.isdir(directory):
    return None
  checkpointer = ckpt_lib.Checkpointer(directory, asynchronous=False, writer=False)
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


def check_checkpoints(config, workdir: str) -> dict[str, Optional[int]]:
  """{'stage1_step', 'latent_step'} of the checkpoints evaluation reads; raises when one is missing.

  The latent model is needed only for unconditional samples (`evaluate.samples`) when a
  metric on samples is requested.
  """
  needs_latent = 'unconditional' in config.evaluate.samples and _needs_samples(config)
  steps = {'stage1_step': _latest_step(workdir, 'stage1'),
           'latent_step': _latest_step(workdir, 'latent') if needs_latent else None}
  missing = []
  if steps['stage1_step'] is None:
    missing.append(f'  the stage-1 model (prototype network + U-Net): no checkpoint in '
                   f'{ckpt_lib.stage_dir(workdir, "stage1")}; it is written by --mode=train')
  if needs_latent and steps['latent_step'] is None:
    missing.append(f'  the latent diffusion model (unconditional samples): no checkpoint in '
                   f'{ckpt_lib.stage_dir(workdir, "latent")}; it is written by --mode=train_latent '
                   "(or evaluate conditional samples only: --config.evaluate.samples='(\"conditional\",)')")
  if missing:
    raise MissingCheckpointError(
        f'--mode=evaluate cannot run on {workdir}; missing:\n' + '\n'.join(missing) +
        '\nTrained weights of the official code can be imported with python -m patronus_jax.convert.')
  return steps


def _needs_samples(config) -> bool:
  return bool(set(config.evaluate.metrics) & {'fid', 'fd_classifier'})


def _plan(config, has_attributes: bool) -> dict[str, Any]:
  """Which metrics run, and why the others do not."""
  ev = config.evaluate
  wanted = set(ev.metrics)
  skipped = {}
  fid = 'fid' in wanted and bool(ev.inception_weights)
  fd_classifier = 'fd_classifier' in wanted
  if 'fid' in wanted and not ev.inception_weights:
    skipped['fid'] = ('FID not computed: no Inception weights (config.evaluate.inception_weights '
                      "is ''); fd_classifier (the Fréchet distance on the attribute classifier's "
                      'features, not comparable to FID) is reported instead. See '
                      'patronus_jax/evaluate/README.md for the weights.')
    fd_classifier = True
  if fd_classifier and not has_attributes:
    skipped['fd_classifier'] = 'the dataset has no attribute labels to train the attribute classifier on'
    fd_classifier = False
  representation = {}
  for name in REPRESENTATION_METRICS:
    if name in wanted:
      if has_attributes:
        representation[name] = True
      else:
        skipped[name] = 'the dataset has no attribute labels'
  samples = tuple(ev.samples) if (fid or fd_classifier) else ()
  return dict(fid=fid, fd_classifier=fd_classifier, samples=samples,
              classifier=fd_classifier or bool(representation.get('semantics')), skipped=skipped,
              **{k: True for k in representation})


def _config_fields(config) -> dict[str, Any]:
  """The config fields the metrics depend on (also the key that decides to skip)."""
  d = config.diffusion
  lt = config.latent
  # dpmpp2m's spacing (and a non-DDIM latent sampler) enter the key only when used, so that the
  # keys of DDIM evaluations made before the sampler choice existed stay valid
  solver = lambda c: dict(sampler=c.sampler, spacing=c.spacing) if c.sampler == 'dpmpp2m' else {}
  # clipping or guiding x0_hat changes every generation; each enters only when on, for the same reason
  clip = {'clip_x0': float(d.clip_x0)} if d.clip_x0 else {}
  return dict(
      evaluate=json.loads(config.evaluate.to_json_best_effort()),
      data=workdir_classifier.trained_for(config)['data'],
      image_sampler={'sampler': d.sampler, 'sample_steps': d.sample_steps, 'eta': d.eta, 'guidance': d.guidance,
                     'schedule': d.schedule, 'timesteps': d.timesteps, 'prediction': d.prediction, **solver(d),
                     **clip, **sample_lib.sketch_consistency_key(d)},
      latent_sampler=dict(sample_steps=lt.sample_steps, eta=lt.eta, schedule=lt.schedule,
                          timesteps=lt.timesteps, **solver(lt)),
      seed=int(config.seed),
  )


def _fingerprint(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def _header(config, workdir: str, steps: dict, names, values, plan: dict) -> tuple[dict, list[str]]:
  """The first entries of metrics.json, and the notes on the metrics the plan skips."""
  metrics: dict[str, Any] = dict(
      workdir=os.path.abspath(workdir), name=config.name, dataset=config.data.name,
      checkpoints=dict(steps), attributes={n: list(v) for n, v in zip(names, values)})
  notes = []
  for metric, reason in plan['skipped'].items():
    notes.append(reason if metric == 'fid' else f'{metric} not computed: {reason}')
    logging.warning('evaluate: %s', notes[-1])
  if 'fid' in plan['skipped']:
    metrics['fid_not_computed'] = plan['skipped']['fid']
  return metrics, notes


def _load_models(config, workdir: str, plan: dict, timings: dict) -> _Models:
  with timing.timed(timings, 'load_stage1'):
    model, variables, _ = loading.load_stage1_variables(config, workdir)
  latent = None
  if 'unconditional' in plan['samples']:
    with timing.timed(timings, 'load_latent'):
      latent_model, latent_vars, stats, _ = loading.load_latent(config, workdir)
    latent = (latent_model, latent_vars, stats)
  return _Models(model, variables, latent)


def _classifier_network(config, workdir: str, timings: dict) -> tuple[Any, dict]:
  """(the workdir's attribute classifier, its description in metrics.json)."""
  with timing.timed(timings, 'attribute_classifier'):
    classifier, clf_metrics = workdir_classifier.classifier_for_workdir(config, workdir)
  description = dict(
      name=f'attribute_classifier-{fid_lib.network_fingerprint(classifier.params)}',
      description=(f'the attribute classifier (CNN widths {list(classifier.widths)}, penultimate '
                   f'{classifier.feature_dim}-d ReLU features) trained on {config.data.name} '
                   f'{clf_metrics.get("split", config.data.train_split)}'),
      path=clf_metrics.get('path'), held_out_accuracy=clf_metrics.get('accuracy'),
      held_out_mean_accuracy=clf_metrics.get('mean_accuracy'), training=clf_metrics.get('training', {'data': 'as_is'}),
      held_out_rare_combinations=clf_metrics.get('rare_combinations', {}))
  return classifier, description


def _feature_networks(config, workdir: str, plan: dict, timings: dict) -> _Networks:
  """The attribute classifier (fd_classifier) and InceptionV3 (fid), as the plan asks."""
  ev = config.evaluate
  fns, descriptions, classifier = {}, {}, None
  if plan['classifier']:
    classifier, description = _classifier_network(config, workdir, timings)
    descriptions['attribute_classifier'] = description
  if plan['fd_classifier']:
    descriptions['fd_classifier'] = description
    fns['fd_classifier'] = lambda x: clf_lib.features(classifier, _quantized(x, ev), ev.batch_size)
  if plan['fid']:
    with timing.timed(timings, 'load_inception'):
      inception_vars = inception.load_inception_variables(ev.inception_weights)
      inc_fp = fid_lib.network_fingerprint(inception_vars)
    descriptions['fid'] = dict(
        name=f'inception_pool3-{inc_fp}',
        description="pytorch-fid's InceptionV3 (FID weights), pool3 2048-d features",
        path=os.path.abspath(ev.inception_weights), quantize=bool(ev.fid_quantize))
    fns['fid'] = lambda x: inception.inception_features(inception_vars, x, ev.batch_size, ev.fid_quantize)
  return _Networks(fns, descriptions, classifier)


# ----------------------------------------------------------------------------- passes over data


def _split_size(info, split: str) -> Optional[int]:
  return info.num_examples.get(split)


def _limit(max_examples: int, size: Optional[int]) -> Optional[int]:
  """-1 (all) -> the split size (None if unknown); otherwise the smaller of the two."""
  if max_examples == -1:
    return size
  return max_examples if size is None else min(max_examples, size)


def _in_blocks(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, block: int, label: str):
  """fn over `images` in blocks of `block` (progress lines); concatenated outputs (a pytree)."""
  progress = timing.Progress(label, images.shape[0])
  return batching.padded_map(lambda _, x: fn(x), images, block, pad=None, progress=progress)


def _real_statistics(config, workdir: str, info, fields: dict, nets: _Networks,
                     timings: dict) -> tuple[dict[str, dict], dict[str, str]]:
  """({metric: statistics}, {metric: cache path}) of real `fid_split` features.

  Read from the cache in the workdir; one pass over the split computes all missing ones.
  """
  if not nets.fns:
    return {}, {}
  ev = config.evaluate
  stats_dir = ev.fid_stats_dir or os.path.join(workdir, 'fid_stats')
  num_real = _limit(ev.fid_num_real, _split_size(info, ev.fid_split))
  real_stats, keys, caches = {}, {}, {}
  for metric in nets.fns:
    keys[metric] = fid_lib.statistics_key(
        network=nets.descriptions[metric]['name'], dataset=config.data.name, split=ev.fid_split,
        image_size=config.data.image_size, num_examples=num_real if num_real is not None else -1,
        data=_fingerprint(fields['data']), quantize=bool(ev.fid_quantize))
    caches[metric] = fid_lib.statistics_path(stats_dir, keys[metric])
    loaded = fid_lib.load_statistics(caches[metric], keys[metric])
    if loaded is not None:
      real_stats[metric] = loaded
      logging.info('evaluate: real %s statistics of %s read from the cache', metric, ev.fid_split)
  missing = [m for m in nets.fns if m not in real_stats]
  with timing.timed(timings, 'real_statistics'):
    if missing:
      passed = training.pass_over_split(config, ev.fid_split, num_real, ev.batch_size,
                                        features={m: nets.fns[m] for m in missing},
                                        label=f'evaluate: real {ev.fid_split} features ({", ".join(missing)})')
      for m in missing:
        real_stats[m] = fid_lib.feature_statistics(passed[m])
        if jax.process_index() == 0:
          fid_lib.save_statistics(caches[m], real_stats[m], keys[m])
  return real_stats, caches


def _num_eval_images(config, plan: dict) -> int:
  """Real eval images the sample metrics need: conditioning s and the real baseline distance."""
  return config.evaluate.num_samples if plan['samples'] else 0


def _num_labelled_eval_images(config, plan: dict) -> int:
  """Real eval images whose classifier labels are needed (samples and the semantics scorecard)."""
  return max(_num_eval_images(config, plan), config.evaluate.semantics_images if plan.get('semantics') else 0)


def _encode_real(config, info, plan: dict, encode, nets: _Networks) -> dict[str, dict]:
  """{split: pass} with s and attributes for the representation metrics (`probe_split`) and the
  samples (`eval_split`, also with features and the classifier's labels); one pass when they agree."""
  ev, eval_split = config.evaluate, config.data.eval_split
  representation = [m for m in REPRESENTATION_METRICS if plan.get(m)]
  caps = {'probe': ev.probe_max_examples, 'tad': ev.tad_max_examples, 'dci': ev.dci_max_examples,
          'semantics': ev.probe_max_examples}
  repr_num = None if any(caps[m] == -1 for m in representation) else max([caps[m] for m in representation] or [0])
  want_eval = _num_labelled_eval_images(config, plan)
  eval_networks = dict(nets.fns)
  if nets.classifier is not None:  # the classifier's reading of the real eval images: its own reference
    eval_networks['predicted_attributes'] = lambda x: _predicted_labels(
        nets.classifier, _quantized(x, ev), ev.batch_size)
  label = lambda split: f'evaluate: encoding {split}'
  if representation and ev.probe_split == eval_split:
    num = None if repr_num is None else max(repr_num, want_eval)
    return {eval_split: training.pass_over_split(
        config, eval_split, _limit(-1 if num is None else num, _split_size(info, eval_split)), ev.batch_size,
        encode=encode, features=eval_networks, num_features=want_eval, label=label(eval_split))}
  passes = {}
  if representation:
    passes[ev.probe_split] = training.pass_over_split(
        config, ev.probe_split, _limit(-1 if repr_num is None else repr_num, _split_size(info, ev.probe_split)),
        ev.batch_size, encode=encode, label=label(ev.probe_split))
  if want_eval:
    passes[eval_split] = training.pass_over_split(
        config, eval_split, _limit(want_eval, _split_size(info, eval_split)), ev.batch_size, encode=encode,
        features=eval_networks, label=label(eval_split))
  return passes


# ----------------------------------------------------------------------------- sampling


def _generate(config, model, variables, s: np.ndarray, key, label: str,
              x_T: Optional[np.ndarray] = None) -> np.ndarray:
  """Images from s with `sample.generate_batched`, in blocks kept as 8-bit when `fid_quantize`.

  Blocks bound the float copies in memory (10k samples of 256x256 would be 8 GB as float32);
  block j uses fold_in(key, j), and x_T's rows of the block when given.
  """
  ev = config.evaluate
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  spec = sample_lib.SamplerSpec.images(config.diffusion)
  block = ev.batch_size * max(1, GENERATE_BLOCK // ev.batch_size)
  num_blocks = -(-s.shape[0] // block)

  def generate_block(j, s_j, *x_j):
    images = sample_lib.generate_batched(
        model, variables, s_j, jax.random.fold_in(key, j), spec, shape, ev.batch_size, x_T=x_j[0] if x_j else None,
        label=label if num_blocks == 1 else f'{label} (block {j + 1}/{num_blocks})')
    return _quantized(images, ev)

  return batching.padded_map(generate_block, (s,) if x_T is None else (s, x_T), block, pad=None)


def _generate_paired(config, models: _Models, blocks: np.ndarray, key) -> np.ndarray:
  """Images of (m, k, P) activations, block-major; row i of every block starts from the same x_T."""
  m, k = blocks.shape[:2]
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  x_T = np.asarray(jax.random.normal(key, (k,) + shape), np.float32)
  return _generate(config, models.model, models.variables, blocks.reshape(m * k, -1), key,
                   f'evaluate: semantics, choosing the edited prototypes ({m - 1} edits of {k} images)',
                   x_T=np.tile(x_T, (m, 1, 1, 1)))


def _sample_kind(config, kind: str, key, models: _Models, s_eval: np.ndarray):
  """(images, the s they were generated from, index of their eval image or None) of one kind."""
  num = config.evaluate.num_samples
  if kind == 'conditional':
    index = np.arange(num) % s_eval.shape[0]  # fewer eval images than samples: reuse s, new noise
    images = _generate(config, models.model, models.variables, s_eval[index], key, 'evaluate: conditional samples')
    return images, s_eval[index], index
  s = sample_lib.sample_activations_batched(
      *models.latent, key, num, config.evaluate.batch_size, sample_lib.SamplerSpec.latent(config.latent),
      label='evaluate: s from the latent model')
  images = _generate(config, models.model, models.variables, s, jax.random.fold_in(key, 1),
                     'evaluate: unconditional samples')
  return images, s, None


# ----------------------------------------------------------------------------- metrics


def _attribute_metrics(probs: dict[str, np.ndarray], index: Optional[np.ndarray], real_attrs: np.ndarray,
                       real_pred: np.ndarray, names, values) -> dict[str, Any]:
  """Conditional samples (index given): agreement with the attributes of their source images;
  unconditional: attribute frequencies against those the classifier sees in real images."""
  out: dict[str, Any] = {}
  if index is not None:
    source = real_attrs[index]
    out['attribute_agreement'] = {
        n: float(np.mean(np.argmax(probs[n], -1) == source[:, a])) for a, n in enumerate(names)}
    out['attribute_agreement_mean'] = float(np.mean(list(out['attribute_agreement'].values())))
    out['attribute_accuracy_on_real'] = {
        n: float(np.mean(real_pred[:, a] == real_attrs[:, a])) for a, n in enumerate(names)}
    return out
  freq = _attribute_frequencies(probs)
  real_freq = {n: np.bincount(real_pred[:, a], minlength=len(values[a])) / len(real_pred) for a, n in enumerate(names)}
  out['attribute_frequencies_real'] = {n: real_freq[n].tolist() for n in names}
  out['attribute_frequencies'] = {n: freq[n].tolist() for n in names}
  out['attribute_total_variation'] = {n: float(0.5 * np.abs(freq[n] - real_freq[n]).sum()) for n in names}
  out['attribute_total_variation_mean'] = float(np.mean(list(out['attribute_total_variation'].values())))
  return out


def _kind_metrics(config, kind: str, images: np.ndarray, s_wanted: np.ndarray, index, nets: _Networks,
                  real_stats: dict, real: dict, encode, names, values) -> tuple[dict, dict[str, float]]:
  """(metrics of one kind of samples, {image metric: Fréchet distance to the real statistics}).

  `real` holds the attributes and classifier labels of the eval images the samples are compared with.
  """
  ev = config.evaluate
  block = 10 * ev.batch_size
  kind_metrics: dict[str, Any] = dict(num_samples=int(images.shape[0]))
  distances = {}
  for m, fn in nets.fns.items():
    feats = _in_blocks(fn, images, block, f'evaluate: {m} features of {kind} samples')
    distances[m] = fid_lib.frechet_distance_to_statistics(feats, real_stats[m])
  if nets.classifier is not None:
    probs = _in_blocks(lambda x: clf_lib.predict(nets.classifier, x, ev.batch_size), images, block,
                       f'evaluate: attributes of {kind} samples')
    kind_metrics.update(_attribute_metrics(probs, index, real['attributes'], real['predicted_attributes'],
                                           names, values))
  s_got = _in_blocks(lambda x: encode(_to_unit_range(x)), images, block, f'evaluate: s of {kind} samples')
  kind_metrics['s_consistency'] = semantics.s_consistency(s_wanted, s_got)
  return kind_metrics, distances


def _sample_metrics(config, workdir: str, plan: dict, models: _Models, nets: _Networks, real_stats: dict,
                    ref: dict, n_eval: int, encode, names, values,
                    timings: dict) -> tuple[dict[str, Any], dict[str, int]]:
  """({'samples': per kind, image metric: {kind: distance}}, {kind: number of samples}); grids written.

  The samples are compared with the first `n_eval` real eval images of `ref`.
  """
  real = {k: ref[k][:n_eval] for k in ('attributes', 'predicted_attributes') if k in ref}
  key = jax.random.PRNGKey(config.seed + 3)
  out: dict[str, Any] = {'samples': {}}
  counts = {}
  for kind_index, kind in enumerate(plan['samples']):
    with timing.timed(timings, f'sample_{kind}'):
      images, s_wanted, index = _sample_kind(config, kind, jax.random.fold_in(key, kind_index), models,
                                             ref['s'][:n_eval])
    counts[kind] = int(images.shape[0])
    if jax.process_index() == 0:
      pio.save_image_grid(os.path.join(workdir, OUTPUT_DIR, f'{kind}.png'), images[:64], nrow=8)
    with timing.timed(timings, f'metrics_{kind}'):
      out['samples'][kind], distances = _kind_metrics(config, kind, images, s_wanted, index, nets, real_stats,
                                                      real, encode, names, values)
    for m, distance in distances.items():
      out.setdefault(m, {})[kind] = distance
  return out, counts


def _samples_section(config, workdir: str, plan: dict, models: _Models, nets: _Networks, real_stats: dict,
                     caches: dict, ref: dict, encode, names, values, timings: dict) -> tuple[dict, dict, list]:
  """(metrics.json entries of the samples and image metrics, sample counts, notes)."""
  ev = config.evaluate
  n_eval = min(ref['num_examples'], _num_eval_images(config, plan))
  out, counts = _sample_metrics(config, workdir, plan, models, nets, real_stats, ref, n_eval, encode, names, values,
                                timings)
  for m in nets.fns:
    out[m].update(
        # the first n_eval real images, as many as the samples: a Fréchet distance falls with the
        # count, and the semantics scorecard may have read more of them
        real_eval_baseline=fid_lib.frechet_distance_to_statistics(ref[m][:n_eval], real_stats[m]),
        network=nets.descriptions[m]['name'],
        reference=dict(split=ev.fid_split, num_examples=int(real_stats[m]['n']), cache=caches[m]),
        num_samples=dict(counts, real_eval_baseline=int(n_eval)))
  if nets.classifier is not None:
    out['samples']['attribute_classifier'] = nets.descriptions['fd_classifier']['name']
  notes = []
  if n_eval < ev.num_samples and 'conditional' in plan['samples']:
    notes.append(f'the {config.data.eval_split} split has {n_eval} images, fewer than num_samples={ev.num_samples}: '
                 'conditional samples reuse their s with new noise')
  return out, counts, notes


def _binarised_attributes(attributes: np.ndarray, names, values) -> tuple[np.ndarray, list[str]]:
  """Binary columns for TAD: binary attributes as they are, others one-vs-rest per value."""
  columns, column_names = [], []
  for a, name in enumerate(names):
    if len(values[a]) <= 2:
      columns.append(attributes[:, a])
      column_names.append(name)
    else:
      for v, value in enumerate(values[a]):
        columns.append((attributes[:, a] == v).astype(np.int32))
        column_names.append(f'{name}={value}')
  return np.stack(columns, 1), column_names


def _attribute_frequencies(probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {name: np.bincount(np.argmax(p, -1), minlength=p.shape[-1]) / p.shape[0] for name, p in probs.items()}


def _scalars(tree: Any, prefix: str = '') -> dict[str, float]:
  """Flat {'a/b/c': number} of the finite numbers in nested dicts (lists left out)."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_scalars(v, f'{prefix}/{k}' if prefix else str(k)))
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and np.isfinite(tree):
    out[prefix] = float(tree)
  return out


def _tad(config, s: np.ndarray, attrs: np.ndarray, names, values) -> dict:
  """TAD on binary columns of the attributes (categorical ones one-vs-rest)."""
  ev = config.evaluate
  binary, binary_names = _binarised_attributes(attrs, names, values)
  tad = disentanglement.tad_score(
      s, binary, folds=ev.tad_folds, seed=config.seed, max_examples=ev.tad_max_examples,
      auroc_threshold=ev.tad_auroc_threshold, entropy_threshold=ev.tad_entropy_threshold,
      attribute_names=binary_names)
  if len(binary_names) != len(names):
    tad['binarisation'] = TAD_BINARISATION
  return tad


def _representation_metrics(config, plan: dict, rep: dict, names, values, timings: dict) -> dict[str, Any]:
  """metrics.json entries of the probes, TAD and DCI on s of `probe_split`."""
  ev = config.evaluate
  s, attrs = rep['s'], rep['attributes']
  out: dict[str, Any] = {'representation': dict(split=ev.probe_split, num_examples=int(s.shape[0]),
                                                num_prototypes=int(s.shape[1]), standardised='per fold (probes)')}
  progress = lambda line: logging.info('evaluate: %s', line)
  if plan.get('probe'):
    with timing.timed(timings, 'probe'):
      out['probe'] = probes.attribute_probe(
          s, attrs, folds=ev.probe_folds, seed=config.seed, max_examples=ev.probe_max_examples,
          C=ev.probe_C, max_iter=ev.probe_max_iter, attribute_names=names, progress=progress)
  if plan.get('tad'):
    with timing.timed(timings, 'tad'):
      out['tad'] = _tad(config, s, attrs, names, values)
  if plan.get('dci'):
    with timing.timed(timings, 'dci'):
      out['dci'] = disentanglement.dci_score(
          s, attrs, test_fraction=ev.dci_test_fraction, seed=config.seed, max_examples=ev.dci_max_examples,
          num_estimators=ev.dci_num_estimators, max_depth=ev.dci_max_depth,
          learning_rate=ev.dci_learning_rate, factor_names=names, progress=progress)
  return out


def _semantics_section(config, models: _Models, nets: _Networks, rep: dict, ref: dict, names,
                       probe: Optional[dict], timings: dict) -> dict[str, Any]:
  """metrics.json['semantics'] (evaluate/semantics.py): s-only scores on `probe_split`, keep and edit
  rates from the first `semantics_images` eval images regenerated from their s."""
  ev = config.evaluate
  with timing.timed(timings, 'semantics_representation'):
    out = semantics.representation_scores(rep['s'], rep['attributes'], names)
  if probe is not None:
    out['probe_auroc'] = dict(probe['auroc'])
  n = min(ev.semantics_images, len(ref.get('predicted_attributes', ())))
  if n < 2:
    out['generation_not_computed'] = f'{n} labelled eval images (needs >= 2)'
    return out
  key = jax.random.PRNGKey(config.seed + 5)
  generate = lambda s, g: _generate(config, models.model, models.variables, s, jax.random.fold_in(key, g),
                                    f'evaluate: semantics images (noise {g})')
  classify = lambda images: _predicted_labels(nets.classifier, images, ev.batch_size)
  k = ev.semantics_selection_images if n - ev.semantics_selection_images >= 1 else 0
  if k:
    paired_key = jax.random.fold_in(key, ev.semantics_generations)  # noise the keep rates do not use
    with timing.timed(timings, 'semantics_selection'):
      out['controlling_prototype'], out['edit_selection'] = semantics.select_controlling(
          ref['s'][:k], rep['s'], out['prototype_auroc'], names,
          lambda blocks: _generate_paired(config, models, blocks, paired_key), classify)
  elif ev.semantics_selection_images:
    out['edit_selection'] = f'not made: {n} labelled eval images, {ev.semantics_selection_images} to choose with'
  with timing.timed(timings, 'semantics_generation'):
    out.update(semantics.generation_scores(
        ref['s'][:n], ref['predicted_attributes'][:n], rep['s'], out['controlling_prototype'], names, generate,
        classify, ev.semantics_generations, config.seed, edit_from=k))
  out['split'] = dict(representation=ev.probe_split, generation=config.data.eval_split)
  return out


# The scorecard's headline numbers (its per-prototype tables and choices are not curves to plot).
SEMANTICS_SCALARS = ('best_prototype_auroc', 'keep_rate', 'keep_rate_chance', 'edit_success', 'alive_prototypes',
                     'duplicate_pairs', 'largest_correlation')


def _write_tensorboard(workdir: str, step: int, metrics: dict) -> None:
  sections = ('fid', 'fd_classifier', 'samples', 'probe', 'tad', 'dci')
  tree = {s: metrics[s] for s in sections if s in metrics}
  if 'semantics' in metrics:
    tree['semantics'] = {k: metrics['semantics'][k] for k in SEMANTICS_SCALARS if k in metrics['semantics']}
  scalars = {f'evaluate/{k}': v for k, v in _scalars(tree).items() if not k.startswith('dci/importance')}
  writer = metric_writer(workdir)
  writer.write_scalars(step, scalars)
  writer.flush()
  writer.close()


def _write_outputs(workdir: str, metrics: dict, status: dict, step: int) -> dict:
  """metrics.json, TensorBoard scalars and the status record (process 0); the metrics as written."""
  metrics_path = os.path.join(workdir, METRICS_FILENAME)
  if jax.process_index() == 0:
    pio.write_json(metrics_path, metrics)
    _write_tensorboard(workdir, step, metrics)
    workdir_lib.record_done(workdir, 'evaluate', status)
  logging.info('evaluate: %s', _summary(metrics))
  logging.info('evaluate: wrote %s in %.1fs', metrics_path, metrics['timings_seconds']['total'])
  return pio.read_json(metrics_path) if jax.process_index() == 0 else metrics


# ----------------------------------------------------------------------------- the mode


def evaluate_mode(config, workdir: str, mesh=None) -> dict[str, Any]:
  """`--mode=evaluate`: FID / fd_classifier of samples, probes, TAD, DCI -> `<workdir>/metrics.json`.

  Returns the metrics (also when they were up to date and only read back). Raises
  MissingCheckpointError (naming the mode that produces it) when a checkpoint is missing.
  """
  del mesh  # feature networks spread their batches over the local devices themselves
  watch = timing.Stopwatch()
  ev = config.evaluate
  steps = check_checkpoints(config, workdir)
  fields = _config_fields(config)
  status = dict(steps, config_fingerprint=_fingerprint(fields))
  metrics_path = os.path.join(workdir, METRICS_FILENAME)
  if workdir_lib.is_done(workdir, 'evaluate', status, [metrics_path]):
    logging.info('evaluate: %s is up to date for these checkpoints (stage1 step %s, latent step %s) '
                 'and evaluate config; skipping.', metrics_path, steps['stage1_step'], steps['latent_step'])
    return pio.read_json(metrics_path)
  if ev.inception_weights and not os.path.exists(ev.inception_weights):
    raise ConfigError(f'config.evaluate.inception_weights={ev.inception_weights!r} does not exist '
                      '(see patronus_jax/evaluate/README.md for how to get the weights)')
  info = data_lib.get_info(config.data)
  names, values = tuple(info.attribute_names), tuple(info.attribute_values)
  plan = _plan(config, bool(names))
  metrics, notes = _header(config, workdir, steps, names, values, plan)
  timings: dict[str, float] = {}
  with timing.timed(timings, 'load_checkpoints'):
    models = _load_models(config, workdir, plan, timings)
  nets = _feature_networks(config, workdir, plan, timings)
  metrics['feature_networks'] = nets.descriptions
  if nets.classifier is not None:
    judge = nets.descriptions['attribute_classifier']
    note = workdir_classifier.weak_judge_note(judge['held_out_accuracy'] or {}, judge['held_out_rare_combinations'])
    notes += [note] if note else []
  real_stats, caches = _real_statistics(config, workdir, info, fields, nets, timings)
  encode = lambda images: sample_lib.encode_batched(models.model, models.variables, images, ev.batch_size)
  with timing.timed(timings, 'encode_real'):
    passes = _encode_real(config, info, plan, encode, nets)
  counts = {}
  if plan['samples']:
    entries, counts, sample_notes = _samples_section(config, workdir, plan, models, nets, real_stats, caches,
                                                     passes[config.data.eval_split], encode, names, values, timings)
    metrics.update(entries)
    notes += sample_notes
  metrics['sample_counts'] = counts
  if any(plan.get(m) for m in REPRESENTATION_METRICS):
    metrics.update(_representation_metrics(config, plan, passes[ev.probe_split], names, values, timings))
  if plan.get('semantics'):
    metrics['semantics'] = _semantics_section(config, models, nets, passes[ev.probe_split],
                                              passes[config.data.eval_split], names, metrics.get('probe'),
                                              timings)
  timings['total'] = watch.seconds()
  metrics.update(notes=notes, timings_seconds={k: round(v, 2) for k, v in timings.items()}, config=fields,
                 device=dict(platform=jax.default_backend(), devices=jax.device_count(),
                             processes=jax.process_count()))
  return _write_outputs(workdir, metrics, status, steps['stage1_step'])


def _predicted_labels(classifier, images: np.ndarray, batch_size: int) -> np.ndarray:
  probs = clf_lib.predict(classifier, images, batch_size)
  return np.stack([np.argmax(p, -1) for p in probs.values()], 1).astype(np.int32)


def _to_unit_range(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 127.5 - 1.0 if images.dtype == np.uint8 else images


def _quantized(images: np.ndarray, ev) -> np.ndarray:
  """8-bit images (as if saved as PNG) when `fid_quantize`, else as they are."""
  if ev.fid_quantize and images.dtype != np.uint8:
    return pio.to_uint8(images)
  return images


def _summary(metrics: dict) -> str:
  parts = []
  for m in ('fid', 'fd_classifier'):
    for kind in ('conditional', 'unconditional', 'real_eval_baseline'):
      if kind in metrics.get(m, {}):
        parts.append(f'{m}[{kind}]={metrics[m][kind]:.3f}')
  if 'probe' in metrics:
    parts.append(f'probe mean AUROC (all attributes)={metrics["probe"]["mean_auroc_all"]:.3f}')
  if 'tad' in metrics:
    parts.append(f'TAD={metrics["tad"]["tad"]:.3f} ({metrics["tad"]["num_captured"]:.1f} captured)')
  if 'dci' in metrics:
    d = metrics['dci']
    parts.append(f'DCI D={d["disentanglement"]:.3f} C={d["completeness"]:.3f} I={d["informativeness"]:.3f}')
  if 'semantics' in metrics:
    sem = metrics['semantics']
    per_attribute = lambda key: ' '.join(f'{a} {v:.2f}' for a, v in sem[key].items())
    for key in ('keep_rate', 'edit_success'):
      if key in sem:
        parts.append(f'{key}: {per_attribute(key)}')
    parts.append(f'{sem["alive_prototypes"]} of {sem["num_prototypes"]} prototypes alive, '
                 f'{sem["duplicate_pairs"]} duplicate pairs')
  return '; '.join(parts) or 'no metrics'
