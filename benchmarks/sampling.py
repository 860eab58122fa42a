r"""Samplers side by side: speed, quality and inversion per step count, the table for choosing one.

  python benchmarks/sampling.py --workdir=runs/quickstart [--num=64] [--num_invert=32]
      [--settings=ddim:10,20,50,100;dpmpp2m:10,15,20,25] [--ddpm=0|1]
      [--latent_settings=ddim:10,20,50,100;dpmpp2m:5,10,15,20] [--json=OUT.json]

For a trained workdir, every row generates one image per s of `num` held-out images from the
same x_T (paired across rows) and reports
  - images/s: median over `repeats` runs of one compiled program (the loop is one lax.scan),
  - network_calls: U-Net evaluations per image (DDIM and DPM-Solver++(2M): one per step),
  - s_faithfulness: Pearson r between the s conditioned on and the s re-encoded from the images,
    pooled over all entries (1.0 = exactly the requested activations) and mean per image,
  - fd_classifier: the Frechet distance of the attribute classifier's features of the images to
    those of the held-out real images (lower is better; the first comment line gives the value of
    `num` real images, the floor at this sample size),
  - inversion_mse: the round trip of `num_invert` held-out images: invert with the row's sampler
    and step count, regenerate with the same s, mean squared error to the image (DDIM rows: DDIM
    inversion; DDPM has none),
  - ode_mse: mean squared distance of the images to those of a 500-step dpmpp2m run from the same
    x_T (the solver's own error; median over images, as a few trajectories switch mode).
Latent rows (`model`: latent) sample `num_latent` s from the latent model with each setting and
report fd_s, the Frechet distance of those s to the held-out images' s (lower is better), in the
same columns (images_per_s counts s vectors; s_faithfulness and fd_classifier are None).
The --json rows have at least sampler, steps, network_calls, images_per_s, s_faithfulness,
fd_classifier; the same script runs on CPU and on an accelerator, so rows compare.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax import data
from patronus_jax import experiment
from patronus_jax.evaluate import classifier as clf_lib
from patronus_jax.evaluate import fid as fid_lib
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import sample as sample_lib

# The flags of every script (patronus_jax/experiment.py); the config is the workdir's own.
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (both stages).', required=True)
_NUM = flags.DEFINE_integer('num', 64, 'Images per setting (one batch).')
_NUM_INVERT = flags.DEFINE_integer('num_invert', 32, 'Held-out images of the inversion round trip (0: skip).')
_NUM_REAL = flags.DEFINE_integer('num_real', 500, 'Held-out real images of the fd_classifier reference.')
_SETTINGS = flags.DEFINE_string('settings', 'ddim:10,20,50,100;dpmpp2m:10,15,20,25',
                                'Image samplers and step counts: sampler:n,n;sampler:n,...')
_DDPM = flags.DEFINE_integer('ddpm', 0, 'Also DDPM with every step (1/0; T calls per image).')
_LATENT = flags.DEFINE_string('latent_settings', 'ddim:10,20,50,100;dpmpp2m:5,10,15,20',
                              "Latent samplers and step counts ('': no latent rows).")
_NUM_LATENT = flags.DEFINE_integer('num_latent', 1024, 's vectors per latent setting.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed runs per setting (the median is reported).')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')

REFERENCE_STEPS = 500  # dpmpp2m steps of the ode_mse reference


def faithfulness(s_target: np.ndarray, s_generated: np.ndarray) -> tuple[float, float]:
  """(pooled Pearson r over all entries, mean per-image Pearson r)."""
  pooled = float(np.corrcoef(s_target.ravel(), s_generated.ravel())[0, 1])
  a = s_target - s_target.mean(1, keepdims=True)
  b = s_generated - s_generated.mean(1, keepdims=True)
  per = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)
  return pooled, float(per.mean())


def parse_settings(text: str) -> list[tuple[str, int]]:
  """'ddim:10,20;dpmpp2m:15' -> [('ddim', 10), ('ddim', 20), ('dpmpp2m', 15)]."""
  out = []
  for part in filter(None, text.split(';')):
    sampler, steps = part.split(':')
    out += [(sampler.strip(), int(n)) for n in steps.split(',')]
  return out


def _timed(fn, repeats: int):
  """(last output, median seconds, compile seconds) of a jitted call."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return out, statistics.median(times), max(compile_s - statistics.median(times), 0.0)


def image_rows(config, workdir: str, settings, num: int, num_invert: int, repeats: int) -> list[dict]:
  model, variables, _ = loading.load_stage1_variables(config, workdir)
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=max(num, _NUM_REAL.value))['image']
  s = sample_lib.encode(model, variables, jnp.asarray(real[:num]))
  x_T = jax.random.normal(jax.random.PRNGKey(0), (num,) + real.shape[1:])
  key = jax.random.PRNGKey(1)
  clf, _ = classifier_for_workdir(config, workdir)
  real_feats = clf_lib.features(clf, real)
  print(f'# fd_classifier of {num} held-out real images (those conditioned on) vs all {len(real)}: '
        f'{fid_lib.frechet_distance_from_features(real_feats[:num], real_feats):.3f}', flush=True)
  spec_of = lambda sampler, n: sample_lib.SamplerSpec.images(config.diffusion, sampler=sampler, num_steps=n, eta=0.0)
  reference = np.asarray(sample_lib.generate(model, variables, s, x_T, key, spec_of('dpmpp2m', REFERENCE_STEPS)))
  inv_images = jnp.asarray(real[:num_invert])
  inv_s = s[:num_invert]
  rows = []
  for sampler, steps in settings:
    spec = spec_of(sampler, steps)
    images, seconds, compile_s = _timed(lambda: sample_lib.generate(model, variables, s, x_T, key, spec), repeats)
    images = np.clip(np.asarray(images), -1.0, 1.0)
    pooled, per_image = faithfulness(np.asarray(s), np.asarray(sample_lib.encode(model, variables, images)))
    fd = fid_lib.frechet_distance_from_features(clf_lib.features(clf, images), real_feats)
    ode = float(np.median(((images - np.clip(reference, -1, 1)) ** 2).reshape(num, -1).mean(1)))
    row = {'model': 'image', 'sampler': sampler, 'steps': steps,
           'network_calls': steps - 1 if sampler == 'ddpm' else steps, 'images_per_s': num / seconds,
           'seconds': seconds, 'compile_s': compile_s, 's_faithfulness': pooled,
           's_faithfulness_per_image': per_image, 'fd_classifier': fd, 'ode_mse': ode, 'inversion_mse': None}
    if num_invert and sampler != 'ddpm':
      x_inv = sample_lib.invert(model, variables, inv_s, inv_images, spec)
      back = np.clip(np.asarray(sample_lib.generate(model, variables, inv_s, x_inv, key, spec)), -1.0, 1.0)
      per = ((back - real[:num_invert]) ** 2).reshape(num_invert, -1).mean(1)
      row.update(inversion_mse=float(per.mean()), inversion_mse_median=float(np.median(per)),
                 inversion_calls=2 * steps)
    rows.append(row)
    print(f'# done image {sampler} {steps}', flush=True)
  return rows


def latent_rows(config, workdir: str, settings, num: int, repeats: int) -> list[dict]:
  stage1, variables, _ = loading.load_stage1_variables(config, workdir)
  lmodel, lvars, stats, _ = loading.load_latent(config, workdir)
  stats = {k: jnp.asarray(v) for k, v in stats.items()}
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=_NUM_REAL.value)['image']
  s_real = np.asarray(sample_lib.encode(stage1, variables, jnp.asarray(real)), np.float64)
  key = jax.random.PRNGKey(2)
  rows = []
  for sampler, steps in settings:
    spec = sample_lib.SamplerSpec.latent(config.latent, sampler=sampler, num_steps=steps, eta=0.0)
    s, seconds, compile_s = _timed(lambda: sample_lib.sample_activations(lmodel, lvars, stats, key, num, spec),
                                   repeats)
    rows.append({'model': 'latent', 'sampler': sampler, 'steps': steps, 'network_calls': steps,
                 'images_per_s': num / seconds, 'seconds': seconds, 'compile_s': compile_s,
                 's_faithfulness': None, 'fd_classifier': None,
                 'fd_s': fid_lib.frechet_distance_from_features(np.asarray(s, np.float64), s_real)})
  real_half = fid_lib.frechet_distance_from_features(s_real[: len(s_real) // 2], s_real[len(s_real) // 2:])
  print(f'# latent: fd_s of {num} sampled s vs the s of {len(s_real)} held-out images; two halves of those '
        f'real s: {real_half:.3f}', flush=True)
  return rows


def _ratio(value, ref):
  return f'{value / ref:.2f}' if value is not None and ref else 'n/a'


def print_tables(rows: list[dict]) -> None:
  image = [r for r in rows if r['model'] == 'image']
  if image:
    ref = next((r for r in image if r['sampler'] == 'ddim' and r['steps'] == 100), image[-1])
    head = (f'{"sampler":>8} {"steps":>5} {"calls":>5} {"images/s":>9} {"s-faith r":>9} {"per-image":>9} '
            f'{"fd_clf":>7} {"fd/ref":>6} {"ode_mse":>8} {"inv_mse":>8} {"inv_med":>8}')
    print(f'\n# image sampler (fd/ref: fd_classifier relative to {ref["sampler"]}-{ref["steps"]})')
    print(head)
    print('-' * len(head))
    for r in image:
      inv = f'{r["inversion_mse"]:8.2e} {r["inversion_mse_median"]:8.2e}' if r['inversion_mse'] is not None else \
          f'{"n/a":>8} {"n/a":>8}'
      print(f'{r["sampler"]:>8} {r["steps"]:>5} {r["network_calls"]:>5} {r["images_per_s"]:>9.2f} '
            f'{r["s_faithfulness"]:>9.4f} {r["s_faithfulness_per_image"]:>9.4f} {r["fd_classifier"]:>7.3f} '
            f'{_ratio(r["fd_classifier"], ref["fd_classifier"]):>6} {r["ode_mse"]:>8.2e} {inv}')
  latent = [r for r in rows if r['model'] == 'latent']
  if latent:
    ref = next((r for r in latent if r['sampler'] == 'ddim' and r['steps'] == 100), latent[-1])
    head = f'{"sampler":>8} {"steps":>5} {"calls":>5} {"s/s":>9} {"fd_s":>7} {"fd/ref":>6}'
    print(f'\n# latent sampler (fd/ref: fd_s relative to {ref["sampler"]}-{ref["steps"]})')
    print(head)
    print('-' * len(head))
    for r in latent:
      print(f'{r["sampler"]:>8} {r["steps"]:>5} {r["network_calls"]:>5} {r["images_per_s"]:>9.0f} '
            f'{r["fd_s"]:>7.3f} {_ratio(r["fd_s"], ref["fd_s"]):>6}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  config = config_lib.load_workdir_config(workdir)
  settings = parse_settings(_SETTINGS.value)
  if _DDPM.value:
    settings.append(('ddpm', config.diffusion.timesteps))
  print(f'# {workdir}: {config.name}, {_NUM.value} images of {config.data.image_size}x{config.data.image_size} per '
        f'setting, T={config.diffusion.timesteps} ({config.diffusion.schedule}, {config.diffusion.prediction}), '
        f'dpmpp2m spacing {config.diffusion.spacing}; {_NUM_INVERT.value} inverted')
  print(f'# device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, '
        f'jax {jax.__version__}, {time.strftime("%Y-%m-%d")}', flush=True)
  rows = image_rows(config, workdir, settings, _NUM.value, _NUM_INVERT.value, _REPEATS.value) if settings else []
  if _LATENT.value:
    rows += latent_rows(config, workdir, parse_settings(_LATENT.value), _NUM_LATENT.value, _REPEATS.value)
  print_tables(rows)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  experiment.run_app(main)
