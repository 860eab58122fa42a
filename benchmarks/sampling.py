r"""Sampling speed vs faithfulness to the conditioning: the table for choosing a step count.

  python benchmarks/sampling.py --workdir=runs/quickstart [--num=64] [--ddim_steps=25,50,100,250,1000]
      [--ddpm=1|0] [--json=OUT.json]

For a trained workdir: takes the prototype activations s of held-out images, generates one image
per s with DDPM (all T-1 steps) and with DDIM at each step count (eta=0), and reports
  - images/s (median over repeats of one compiled program: the whole loop is one lax.scan),
  - s-faithfulness: the Pearson correlation between the s used for conditioning and the s
    re-encoded from the generated images (1.0 = the images carry exactly the requested
    prototype activations), and its mean per-image variant,
  - the speed-up over the 1000-step samplers.
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
from patronus_jax import experiment
from patronus_jax import data
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import sample as sample_lib

# The flags of every script (patronus_jax/experiment.py); the config is the workdir's own.
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (stage 1).', required=True)
_NUM = flags.DEFINE_integer('num', 64, 'Images per sampler (one batch).')
_DDIM_STEPS = flags.DEFINE_string('ddim_steps', '25,50,100,250,1000', 'Comma-separated DDIM step counts.')
_DDPM = flags.DEFINE_integer('ddpm', 1, 'Also DDPM with every step (1/0).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed runs per sampler (the median is reported).')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')


def faithfulness(s_target: np.ndarray, s_generated: np.ndarray) -> tuple[float, float]:
  """(pooled Pearson r over all entries, mean per-image Pearson r)."""
  pooled = float(np.corrcoef(s_target.ravel(), s_generated.ravel())[0, 1])
  a = s_target - s_target.mean(1, keepdims=True)
  b = s_generated - s_generated.mean(1, keepdims=True)
  per = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)
  return pooled, float(per.mean())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir, num = _WORKDIR.value, _NUM.value
  config = config_lib.load_workdir_config(workdir)
  model, variables, step = loading.load_stage1_variables(config, workdir)
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=num)['image']
  s = sample_lib.encode(model, variables, jnp.asarray(real))
  x_T = jax.random.normal(jax.random.PRNGKey(0), real.shape)
  settings = [('ddim', int(n)) for n in _DDIM_STEPS.value.split(',')]
  if _DDPM.value:
    settings.append(('ddpm', config.diffusion.timesteps))
  print(f'# {workdir}: {config.name}, stage-1 step {step}, {num} images of '
        f'{real.shape[1]}x{real.shape[2]}, T={config.diffusion.timesteps}')
  print(f'# device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, '
        f'jax {jax.__version__}, {time.strftime("%Y-%m-%d")}')
  rows = []
  for sampler, steps in settings:
    spec = sample_lib.SamplerSpec.images(config.diffusion, sampler=sampler, num_steps=steps, eta=0.0)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    compiled = sample_lib.generate.lower(model, variables, s, x_T, key, spec).compile()
    compile_s = time.perf_counter() - t0
    times, images = [], None
    for _ in range(_REPEATS.value):
      t = time.perf_counter()
      images = jax.block_until_ready(compiled(variables, s, x_T, key))
      times.append(time.perf_counter() - t)
    s_gen = np.asarray(sample_lib.encode(model, variables, images))
    pooled, per_image = faithfulness(np.asarray(s), s_gen)
    med = statistics.median(times)
    rows.append({'sampler': sampler, 'steps': steps, 'model_calls': steps - 1 if sampler == 'ddpm' else steps,
                 'images_per_s': num / med, 'seconds': med, 'compile_s': compile_s,
                 's_faithfulness': pooled, 's_faithfulness_per_image': per_image})
    print(f'# done {sampler} {steps}', flush=True)
  ref = {r['sampler']: r for r in rows if r['steps'] == config.diffusion.timesteps}
  head = (f'{"sampler":>8} {"steps":>6} {"images/s":>9} {"s-faithfulness":>15} {"per-image r":>11} '
          f'{"x DDIM-1000":>11} {"x DDPM":>7}')
  print(head)
  print('-' * len(head))
  for r in rows:
    up = lambda k: f'{ref[k]["seconds"] / r["seconds"]:.1f}' if k in ref else 'n/a'
    r['speedup_vs_ddim1000'] = ref['ddim']['seconds'] / r['seconds'] if 'ddim' in ref else None
    r['speedup_vs_ddpm'] = ref['ddpm']['seconds'] / r['seconds'] if 'ddpm' in ref else None
    print(f'{r["sampler"]:>8} {r["steps"]:>6} {r["images_per_s"]:>9.2f} {r["s_faithfulness"]:>15.4f} '
          f'{r["s_faithfulness_per_image"]:>11.4f} {up("ddim"):>11} {up("ddpm"):>7}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  experiment.run_app(main)
