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

metrics.json holds every number, the feature networks, sample counts, timings and the config
fields used; `status/evaluate.json` records the checkpoints and evaluate config it came from,
so a second run with the same ones returns the existing metrics without recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.evaluate import workdir_classifier
from patronus_jax import data as data_lib
from patronus_jax.tasks.patronus import sample as sample_lib
from patronus_jax.core import files as pio
from patronus_jax.tasks.patronus import loading
from patronus_jax.core.training import metric_writer
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax.evaluate import disentanglement
from patronus_jax.evaluate import fid as fid_lib
from patronus_jax.evaluate import probes
from patronus_jax.evaluate import inception

METRICS_FILENAME = 'metrics.json'
OUTPUT_DIR = 'evaluate'  # sample grids
PROGRESS_SECONDS = 10.0
GENERATE_BLOCK = 2048  # generated images per block (rounded to a multiple of evaluate.batch_size)
# How categorical attributes enter TAD, which is defined for binary attributes only.
TAD_BINARISATION = 'one-vs-rest indicator per value of each attribute with more than 2 values'


class MissingCheckpointError(FileNotFoundError):
  """A checkpoint the evaluation needs is not in the workdir; the message names the mode."""


# ----------------------------------------------------------------------------- checks


def _latest_step(workdir: str, stage: str) -> Optional[int]:
  directory = ckpt_lib.stage_dir(workdir, stage)
  if not os.path.isdir(directory):
    return None
  checkpointer = ckpt_lib.Checkpointer(directory, asynchronous=False)
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
  for name in ('probe', 'tad', 'dci'):
    if name in wanted:
      if has_attributes:
        representation[name] = True
      else:
        skipped[name] = 'the dataset has no attribute labels'
  samples = tuple(ev.samples) if (fid or fd_classifier) else ()
  return dict(fid=fid, fd_classifier=fd_classifier, samples=samples,
              classifier=fd_classifier, skipped=skipped, **{k: True for k in representation})


def _config_fields(config) -> dict[str, Any]:
  """The config fields the metrics depend on (also the key that decides to skip)."""
  d = config.diffusion
  lt = config.latent
  return dict(
      evaluate=json.loads(config.evaluate.to_json_best_effort()),
      data=workdir_classifier.trained_for(config)['data'],
      image_sampler=dict(sampler=d.sampler, sample_steps=d.sample_steps, eta=d.eta,
                         schedule=d.schedule, timesteps=d.timesteps, prediction=d.prediction),
      latent_sampler=dict(sample_steps=lt.sample_steps, eta=lt.eta, schedule=lt.schedule,
                          timesteps=lt.timesteps),
      seed=int(config.seed),
  )


def _fingerprint(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- passes over data


class _Progress:
  """Logs `label: done/total` at most every PROGRESS_SECONDS (and at the end)."""

  def __init__(self, label: str, total: Optional[int], unit: str = 'images'):
    self.label, self.total, self.unit = label, total, unit
    self.t0 = self.last = time.time()

  def __call__(self, done: int) -> None:
    now = time.time()
    if now - self.last >= PROGRESS_SECONDS or (self.total and done >= self.total):
      self.last = now
      logging.info('%s: %d/%s %s (%.1f %s/s)', self.label, done, self.total or '?', self.unit,
                   done / max(now - self.t0, 1e-9), self.unit)


def _split_size(info, split: str) -> Optional[int]:
  return info.num_examples.get(split)


def _limit(max_examples: int, size: Optional[int]) -> Optional[int]:
  """-1 (all) -> the split size (None if unknown); otherwise the smaller of the two."""
  if max_examples == -1:
    return size
  return max_examples if size is None else min(max_examples, size)


def _pass_over_split(config, split: str, num: Optional[int], batch_size: int, *,
                     encode: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                     features: Optional[dict[str, Callable[[np.ndarray], np.ndarray]]] = None,
                     num_features: Optional[int] = None, label: str = '') -> dict[str, np.ndarray]:
  """One in-order pass over the first `num` images of a split (all when None).

  Returns 'attributes', 's' (when `encode`), and per `features` entry the features of the
  first `num_features` images (all when None). Images are never held all at once.
  """
  features = features or {}
  it = data_lib.make_iterator(config.data, split, global_batch_size=batch_size, seed=0, shuffle=False,
                              num_epochs=1, drop_remainder=False, process_index=0, process_count=1)
  out = {'attributes': [], 's': []}
  out.update({name: [] for name in features})
  done = 0
  progress = _Progress(label or f'reading {split}', num)
  for batch in it:
    images = batch['image']
    if num is not None:
      images = images[:num - done]
    if len(images) == 0:
      break
    out['attributes'].append(np.asarray(batch['attributes'][:len(images)]))
    if encode is not None:
      out['s'].append(encode(images))
    for name, fn in features.items():
      keep = len(images) if num_features is None else max(0, min(len(images), num_features - done))
      if keep:
        out[name].append(fn(images[:keep]))
    done += len(images)
    progress(done)
    if num is not None and done >= num:
      break
  result = {}
  for name, parts in out.items():
    if parts:
      result[name] = np.concatenate(parts)
  result['num_examples'] = done
  return result


def _padded_encoder(model, variables, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
  """s of a batch of images, padded to `batch_size` so that one program is compiled."""

  def encode(images: np.ndarray) -> np.ndarray:
    n = images.shape[0]
    parts = []
    for a in range(0, n, batch_size):
      x = np.asarray(images[a:a + batch_size], np.float32)
      m = x.shape[0]
      if m < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)])
      parts.append(np.asarray(sample_lib.encode(model, variables, jnp.asarray(x)))[:m])
    return np.concatenate(parts).astype(np.float32)

  return encode


def _in_blocks(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, block: int, label: str):
  """fn over `images` in blocks of `block` (progress lines); concatenated outputs (a pytree)."""
  progress = _Progress(label, images.shape[0])
  outs = []
  for a in range(0, images.shape[0], block):
    outs.append(fn(images[a:a + block]))
    progress(min(images.shape[0], a + block))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


# ----------------------------------------------------------------------------- sampling


def _generate(config, model, variables, s: np.ndarray, key, label: str) -> np.ndarray:
  """Images from s with `sample.generate_batched`, in blocks kept as 8-bit when `fid_quantize`.

  Blocks bound the float copies in memory (10k samples of 256x256 would be 8 GB as float32).
  """
  ev = config.evaluate
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  spec = sample_lib.SamplerSpec.images(config.diffusion)
  block = ev.batch_size * max(1, GENERATE_BLOCK // ev.batch_size)
  num_blocks = -(-s.shape[0] // block)
  out = []
  for j, a in enumerate(range(0, s.shape[0], block)):
    images = sample_lib.generate_batched(
        model, variables, s[a:a + block], jax.random.fold_in(key, j), spec, shape, ev.batch_size,
        label=label if num_blocks == 1 else f'{label} (block {j + 1}/{num_blocks})')
    out.append(_quantized(images, ev))
  return np.concatenate(out)


def _conditional_samples(config, model, variables, s_source: np.ndarray, num: int, key):
  index = np.arange(num) % s_source.shape[0]  # fewer eval images than samples: reuse s, new noise
  images = _generate(config, model, variables, s_source[index], key, 'evaluate: conditional samples')
  return images, index


def _unconditional_samples(config, model, variables, latent, num: int, key):
  ev = config.evaluate
  latent_model, latent_vars, stats = latent
  stats = {k: jnp.asarray(v) for k, v in stats.items()}
  spec = sample_lib.SamplerSpec.latent(config.latent)
  parts, progress = [], _Progress('evaluate: s from the latent model', num, 'activations')
  for i, a in enumerate(range(0, num, ev.batch_size)):
    b = min(num, a + ev.batch_size)
    parts.append(np.asarray(sample_lib.sample_activations(
        latent_model, latent_vars, stats, jax.random.fold_in(key, 10_000 + i), ev.batch_size, spec))[:b - a])
    progress(b)
  s = np.concatenate(parts)
  images = _generate(config, model, variables, s, jax.random.fold_in(key, 1), 'evaluate: unconditional samples')
  return images, s


# ----------------------------------------------------------------------------- metrics


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


def _s_consistency(s_wanted: np.ndarray, s_got: np.ndarray) -> dict[str, float]:
  """How faithfully generated images carry their conditioning s (s re-encoded from them)."""
  pooled = float(np.corrcoef(s_wanted.ravel(), s_got.ravel())[0, 1])
  per_dim = []
  for j in range(s_wanted.shape[1]):
    if s_wanted[:, j].std() > 0 and s_got[:, j].std() > 0:
      per_dim.append(float(np.corrcoef(s_wanted[:, j], s_got[:, j])[0, 1]))
  return dict(pearson_pooled=pooled, pearson_per_prototype_mean=float(np.mean(per_dim)) if per_dim else float('nan'),
              mean_abs_error=float(np.mean(np.abs(s_wanted - s_got))))


def _scalars(tree: Any, prefix: str = '') -> dict[str, float]:
  """Flat {'a/b/c': number} of the finite numbers in nested dicts (lists left out)."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_scalars(v, f'{prefix}/{k}' if prefix else str(k)))
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and np.isfinite(tree):
    out[prefix] = float(tree)
  return out


def _write_tensorboard(workdir: str, step: int, metrics: dict) -> None:
  sections = ('fid', 'fd_classifier', 'samples', 'probe', 'tad', 'dci')
  scalars = {f'evaluate/{k}': v for k, v in _scalars({s: metrics[s] for s in sections if s in metrics}).items()
             if not k.startswith('dci/importance')}
  writer = metric_writer(workdir)
  writer.write_scalars(step, scalars)
  writer.flush()
  writer.close()


# ----------------------------------------------------------------------------- the mode


def evaluate_mode(config, workdir: str, mesh=None) -> dict[str, Any]:
  """`--mode=evaluate`: FID / fd_classifier of samples, probes, TAD, DCI -> `<workdir>/metrics.json`.

  Returns the metrics (also when they were up to date and only read back). Raises
  MissingCheckpointError (naming the mode that produces it) when a checkpoint is missing.
  """
  del mesh  # feature networks spread their batches over the local devices themselves
  t_start = time.time()
  ev = config.evaluate
  metrics_path = os.path.join(workdir, METRICS_FILENAME)

  steps = check_checkpoints(config, workdir)
  fields = _config_fields(config)
  status = dict(steps, config_fingerprint=_fingerprint(fields))
  if workdir_lib.read_status(workdir, 'evaluate') == status and os.path.exists(metrics_path):
    logging.info('evaluate: %s is up to date for these checkpoints (stage1 step %s, latent step %s) '
                 'and evaluate config; skipping.', metrics_path, steps['stage1_step'], steps['latent_step'])
    return pio.read_json(metrics_path)
  if ev.inception_weights and not os.path.exists(ev.inception_weights):
    raise FileNotFoundError(f'config.evaluate.inception_weights={ev.inception_weights!r} does not exist '
                            '(see patronus_jax/evaluate/README.md for how to get the weights)')

  info = data_lib.get_info(config.data)
  names, values = tuple(info.attribute_names), tuple(info.attribute_values)
  plan = _plan(config, bool(names))
  timings: dict[str, float] = {}
  metrics: dict[str, Any] = dict(
      workdir=os.path.abspath(workdir), name=config.name, dataset=config.data.name,
      checkpoints=dict(steps), attributes={n: list(v) for n, v in zip(names, values)})
  notes = []
  for metric, reason in plan['skipped'].items():
    notes.append(reason if metric == 'fid' else f'{metric} not computed: {reason}')
    logging.warning('evaluate: %s', notes[-1])
  if 'fid' in plan['skipped']:
    metrics['fid_not_computed'] = plan['skipped']['fid']

  t0 = time.time()
  model, variables, _ = loading.load_stage1_variables(config, workdir)
  latent = None
  if 'unconditional' in plan['samples']:
    latent_model, latent_vars, stats, _ = loading.load_latent(config, workdir)
    latent = (latent_model, latent_vars, stats)
  timings['load_checkpoints'] = time.time() - t0

  # Feature networks.
  classifier = None
  networks: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
  feature_networks = {}
  if plan['classifier']:
    t0 = time.time()
    classifier, clf_metrics = workdir_classifier.classifier_for_workdir(config, workdir)
    timings['attribute_classifier'] = time.time() - t0
    clf_fp = fid_lib.network_fingerprint(classifier.params)
    feature_networks['fd_classifier'] = dict(
        name=f'attribute_classifier-{clf_fp}',
        description=(f'the attribute classifier (CNN widths {list(classifier.widths)}, penultimate '
                     f'{classifier.feature_dim}-d ReLU features) trained on {config.data.name} '
                     f'{clf_metrics.get("split", config.data.train_split)}'),
        path=clf_metrics.get('path'), held_out_accuracy=clf_metrics.get('accuracy'),
        held_out_mean_accuracy=clf_metrics.get('mean_accuracy'))
    networks['fd_classifier'] = lambda x: clf_lib.features(classifier, _quantized(x, ev), ev.batch_size)
  inception_vars = None
  if plan['fid']:
    t0 = time.time()
    inception_vars = inception.load_inception_variables(ev.inception_weights)
    inc_fp = fid_lib.network_fingerprint(inception_vars)
    timings['load_inception'] = time.time() - t0
    feature_networks['fid'] = dict(
        name=f'inception_pool3-{inc_fp}',
        description="pytorch-fid's InceptionV3 (FID weights), pool3 2048-d features",
        path=os.path.abspath(ev.inception_weights), quantize=bool(ev.fid_quantize))
    networks['fid'] = lambda x: inception.inception_features(inception_vars, x, ev.batch_size, ev.fid_quantize)
  metrics['feature_networks'] = feature_networks

  # Real statistics of fid_split, cached in the workdir (one pass for every missing one).
  stats_dir = ev.fid_stats_dir or os.path.join(workdir, 'fid_stats')
  real_stats, stats_keys = {}, {}
  if networks:
    size = _split_size(info, ev.fid_split)
    num_real = _limit(ev.fid_num_real, size)
    for metric in networks:
      stats_keys[metric] = fid_lib.statistics_key(
          network=feature_networks[metric]['name'], dataset=config.data.name, split=ev.fid_split,
          image_size=config.data.image_size, num_examples=num_real if num_real is not None else -1,
          data=_fingerprint(fields['data']), quantize=bool(ev.fid_quantize))
      loaded = fid_lib.load_statistics(fid_lib.statistics_path(stats_dir, stats_keys[metric]), stats_keys[metric])
      if loaded is not None:
        real_stats[metric] = loaded
        logging.info('evaluate: real %s statistics of %s read from the cache', metric, ev.fid_split)
    missing = [m for m in networks if m not in real_stats]
    t0 = time.time()
    if missing:
      passed = _pass_over_split(config, ev.fid_split, num_real, ev.batch_size,
                                features={m: networks[m] for m in missing},
                                label=f'evaluate: real {ev.fid_split} features ({", ".join(missing)})')
      for m in missing:
        real_stats[m] = fid_lib.feature_statistics(passed[m])
        if jax.process_index() == 0:
          fid_lib.save_statistics(fid_lib.statistics_path(stats_dir, stats_keys[m]), real_stats[m], stats_keys[m])
    timings['real_statistics'] = time.time() - t0

  # s (+ attributes) of the eval images: conditioning of the conditional samples, probes, TAD, DCI.
  t0 = time.time()
  encode = _padded_encoder(model, variables, ev.batch_size)
  representation = [m for m in ('probe', 'tad', 'dci') if plan.get(m)]
  caps = {'probe': ev.probe_max_examples, 'tad': ev.tad_max_examples, 'dci': ev.dci_max_examples}
  repr_num = None if any(caps[m] == -1 for m in representation) else max([caps[m] for m in representation] or [0])
  eval_split = config.data.eval_split
  cond_num = ev.num_samples if 'conditional' in plan['samples'] else 0
  real_eval_num = ev.num_samples if plan['samples'] else 0  # real eval images: the baseline distance
  passes = {}
  eval_networks = dict(networks)
  if classifier is not None:  # the classifier's reading of the real eval images: its own reference
    eval_networks['predicted_attributes'] = lambda x: _predicted_labels(classifier, _quantized(x, ev), ev.batch_size)
  want_eval = max(cond_num, real_eval_num)
  if representation and ev.probe_split == eval_split:
    num = None if repr_num is None else max(repr_num, want_eval)
    passes[eval_split] = _pass_over_split(
        config, eval_split, _limit(-1 if num is None else num, _split_size(info, eval_split)), ev.batch_size,
        encode=encode, features=eval_networks, num_features=want_eval, label=f'evaluate: encoding {eval_split}')
  else:
    if representation:
      passes[ev.probe_split] = _pass_over_split(
          config, ev.probe_split, _limit(-1 if repr_num is None else repr_num, _split_size(info, ev.probe_split)),
          ev.batch_size, encode=encode, label=f'evaluate: encoding {ev.probe_split}')
    if want_eval:
      passes[eval_split] = _pass_over_split(
          config, eval_split, _limit(want_eval, _split_size(info, eval_split)), ev.batch_size, encode=encode,
          features=eval_networks, label=f'evaluate: encoding {eval_split}')
  timings['encode_real'] = time.time() - t0

  # Generated images and their distances.
  key = jax.random.PRNGKey(config.seed + 3)
  sample_counts = {}
  if plan['samples']:
    ref = passes[eval_split]
    n_eval = min(ref['num_examples'], want_eval)
    real_eval_attrs = ref['attributes'][:n_eval]
    baseline = {}
    for m in networks:
      baseline[m] = fid_lib.frechet_distance_to_statistics(ref[m], real_stats[m])
    metrics['samples'] = {}
    for kind_index, kind in enumerate(plan['samples']):
      t0 = time.time()
      kind_key = jax.random.fold_in(key, kind_index)
      if kind == 'conditional':
        images, index = _conditional_samples(config, model, variables, ref['s'][:n_eval], ev.num_samples, kind_key)
      else:
        images, s_uncond = _unconditional_samples(config, model, variables, latent, ev.num_samples, kind_key)
      timings[f'sample_{kind}'] = time.time() - t0
      sample_counts[kind] = int(images.shape[0])
      if jax.process_index() == 0:
        pio.save_image_grid(os.path.join(workdir, OUTPUT_DIR, f'{kind}.png'), images[:64], nrow=8)
      t0 = time.time()
      images_q = images  # 8-bit when fid_quantize
      del images
      kind_metrics: dict[str, Any] = dict(num_samples=int(images_q.shape[0]))
      for m, fn in networks.items():
        feats = _in_blocks(fn, images_q, 10 * ev.batch_size, f'evaluate: {m} features of {kind} samples')
        metrics.setdefault(m, {})[kind] = fid_lib.frechet_distance_to_statistics(feats, real_stats[m])
      if classifier is not None:
        probs = _in_blocks(lambda x: clf_lib.predict(classifier, x, ev.batch_size), images_q,
                           10 * ev.batch_size, f'evaluate: attributes of {kind} samples')
        if kind == 'conditional':
          source = real_eval_attrs[index]
          kind_metrics['attribute_agreement'] = {
              n: float(np.mean(np.argmax(probs[n], -1) == source[:, a])) for a, n in enumerate(names)}
          kind_metrics['attribute_agreement_mean'] = float(np.mean(list(kind_metrics['attribute_agreement'].values())))
          real_pred = ref['predicted_attributes'][:n_eval]
          kind_metrics['attribute_accuracy_on_real'] = {
              n: float(np.mean(real_pred[:, a] == real_eval_attrs[:, a])) for a, n in enumerate(names)}
        else:
          freq = _attribute_frequencies(probs)
          real_pred = ref['predicted_attributes'][:n_eval]
          real_freq = {n: np.bincount(real_pred[:, a], minlength=len(values[a])) / n_eval
                       for a, n in enumerate(names)}
          kind_metrics['attribute_frequencies_real'] = {n: real_freq[n].tolist() for n in names}
          kind_metrics['attribute_frequencies'] = {n: freq[n].tolist() for n in names}
          kind_metrics['attribute_total_variation'] = {
              n: float(0.5 * np.abs(freq[n] - real_freq[n]).sum()) for n in names}
          kind_metrics['attribute_total_variation_mean'] = float(
              np.mean(list(kind_metrics['attribute_total_variation'].values())))
      s_got = _in_blocks(lambda x: encode(_to_unit_range(x)), images_q, 10 * ev.batch_size,
                         f'evaluate: s of {kind} samples')
      if kind == 'conditional':
        kind_metrics['s_consistency'] = _s_consistency(ref['s'][:n_eval][index], s_got)
      else:
        kind_metrics['s_consistency'] = _s_consistency(s_uncond, s_got)
      metrics['samples'][kind] = kind_metrics
      timings[f'metrics_{kind}'] = time.time() - t0
    for m in networks:
      metrics[m]['real_eval_baseline'] = baseline[m]
      metrics[m]['network'] = feature_networks[m]['name']
      metrics[m]['reference'] = dict(split=ev.fid_split, num_examples=int(real_stats[m]['n']),
                                     cache=fid_lib.statistics_path(stats_dir, stats_keys[m]))
      metrics[m]['num_samples'] = dict(sample_counts, real_eval_baseline=int(n_eval))
    if classifier is not None:
      metrics['samples']['attribute_classifier'] = feature_networks['fd_classifier']['name']
    if n_eval < ev.num_samples and 'conditional' in plan['samples']:
      notes.append(f'the {eval_split} split has {n_eval} images, fewer than num_samples={ev.num_samples}: '
                   'conditional samples reuse their s with new noise')
  metrics['sample_counts'] = sample_counts

  # Representation metrics on s.
  if representation:
    rep = passes[ev.probe_split]
    s, attrs = rep['s'], rep['attributes']
    metrics['representation'] = dict(split=ev.probe_split, num_examples=int(s.shape[0]),
                                     num_prototypes=int(s.shape[1]), standardised='per fold (probes)')
    progress = lambda line: logging.info('evaluate: %s', line)
    if plan.get('probe'):
      t0 = time.time()
      metrics['probe'] = probes.attribute_probe(
          s, attrs, folds=ev.probe_folds, seed=config.seed, max_examples=ev.probe_max_examples,
          C=ev.probe_C, max_iter=ev.probe_max_iter, attribute_names=names, progress=progress)
      timings['probe'] = time.time() - t0
    if plan.get('tad'):
      t0 = time.time()
      binary, binary_names = _binarised_attributes(attrs, names, values)
      metrics['tad'] = disentanglement.tad_score(
          s, binary, folds=ev.tad_folds, seed=config.seed, max_examples=ev.tad_max_examples,
          auroc_threshold=ev.tad_auroc_threshold, entropy_threshold=ev.tad_entropy_threshold,
          attribute_names=binary_names)
      if len(binary_names) != len(names):
        metrics['tad']['binarisation'] = TAD_BINARISATION
      timings['tad'] = time.time() - t0
    if plan.get('dci'):
      t0 = time.time()
      metrics['dci'] = disentanglement.dci_score(
          s, attrs, test_fraction=ev.dci_test_fraction, seed=config.seed, max_examples=ev.dci_max_examples,
          num_estimators=ev.dci_num_estimators, max_depth=ev.dci_max_depth,
          learning_rate=ev.dci_learning_rate, factor_names=names, progress=progress)
      timings['dci'] = time.time() - t0

  timings['total'] = time.time() - t_start
  metrics['notes'] = notes
  metrics['timings_seconds'] = {k: round(v, 2) for k, v in timings.items()}
  metrics['config'] = fields
  metrics['device'] = dict(platform=jax.default_backend(), devices=jax.device_count(),
                           processes=jax.process_count())
  if jax.process_index() == 0:
    pio.write_json(metrics_path, metrics)
    _write_tensorboard(workdir, steps['stage1_step'], metrics)
    workdir_lib.write_status(workdir, 'evaluate', status)
  logging.info('evaluate: %s', _summary(metrics))
  logging.info('evaluate: wrote %s in %.1fs', metrics_path, timings['total'])
  return pio.read_json(metrics_path) if jax.process_index() == 0 else metrics


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
  return '; '.join(parts) or 'no metrics'
