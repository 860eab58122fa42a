r"""How fast could the U-Net go on this backend? Its convolutions, each timed alone, against the whole.

  python benchmarks/conv_ceiling.py --config=configs/celeba.py --batch_size=16

Traces the denoiser forward and the full stage-1 training step (prototype encoder + U-Net,
loss, gradients, AdamW, EMA) to jaxprs, collects every `conv_general_dilated` in them (the
forward convolutions and, in the step, the input- and kernel-gradient convolutions autodiff
made), compiles and times each one alone with its exact shapes, strides, padding, dilations and
dimension numbers, and prints

  - the sum of those isolated times (the time the step would take if everything that is not a
    convolution were free and every convolution ran as fast as it does alone), and
  - the measured time of the whole compiled program,

with the achieved GFLOP/s of each. Both are the fastest of --repeats runs: on a shared machine
noise only ever adds time, and the question is how fast each piece can run. The difference is
what the rest of the graph costs (norms, concatenations, layout copies, the optimizer). If the
convolution sum alone exceeds a target, no change outside the convolution kernels can meet it on
this backend.
"""

from __future__ import annotations

import collections
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax import experiment

# The flags of every script (patronus_jax/experiment.py): --config=FILE[:variant] with
# --config.<field>=<value> overrides.
config_flags.DEFINE_config_file('config', 'configs/celeba.py', 'Config file[:variant] of the model.',
                                lock_config=True)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs of each program; the fastest counts.')
_TOP = flags.DEFINE_integer('top', 8, 'Also list the N costliest kinds of convolution.')


def _subjaxprs(eqn):
  for value in eqn.params.values():
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def conv_equations(jaxpr) -> list:
  """Every conv_general_dilated in a jaxpr and its sub-jaxprs (custom VJPs, pjit, remat, scan)."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(eqn)
    for sub in _subjaxprs(eqn):
      found.extend(conv_equations(sub))
  return found


def conv_flops(eqn) -> float:
  """2 * output elements * (kernel window * input features per group)."""
  lhs, rhs = (v.aval for v in eqn.invars)
  out = eqn.outvars[0].aval
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  window = int(np.prod([rhs.shape[d] for d in rhs_spec[2:]]))
  in_per_group = rhs.shape[rhs_spec[1]]
  del lhs
  return 2.0 * float(np.prod(out.shape)) * window * in_per_group


def _key(eqn):
  p = eqn.params
  return (tuple(v.aval.shape for v in eqn.invars), str(eqn.invars[0].aval.dtype), p['window_strides'],
          tuple(map(tuple, p['padding'])), p['lhs_dilation'], p['rhs_dilation'], str(p['dimension_numbers']),
          p['feature_group_count'], p['batch_group_count'])


def time_alone(eqn, repeats: int) -> float:
  p = dict(eqn.params)
  lhs_aval, rhs_aval = (v.aval for v in eqn.invars)
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.standard_normal(lhs_aval.shape).astype(lhs_aval.dtype))
  rhs = jnp.asarray(rng.standard_normal(rhs_aval.shape).astype(rhs_aval.dtype))
  return time_program(lambda a, b: jax.lax.conv_general_dilated_p.bind(a, b, **p), (lhs, rhs), repeats)


def time_program(fn, args, repeats: int) -> float:
  compiled = jax.jit(fn).lower(*args).compile()
  return min(experiment.timed(compiled, *args, repeats=repeats, warmup=1))


def analyse(name: str, fn, args, repeats: int) -> dict:
  eqns = conv_equations(jax.make_jaxpr(fn)(*args).jaxpr)
  groups = collections.defaultdict(list)
  for eqn in eqns:
    groups[_key(eqn)].append(eqn)
  conv_s = conv_flop = 0.0
  per_kind = []
  for same in groups.values():
    t = time_alone(same[0], repeats)
    conv_s += t * len(same)
    conv_flop += conv_flops(same[0]) * len(same)
    per_kind.append({'count': len(same), 'seconds': t * len(same), 'gflop': conv_flops(same[0]) * len(same) / 1e9,
                     'describe': describe(same[0])})
  whole_s = time_program(fn, args, repeats)
  per_kind.sort(key=lambda r: -r['seconds'])
  return {'program': name, 'convolutions': len(eqns), 'distinct': len(groups), 'conv_gflop': conv_flop / 1e9,
          'conv_alone_s': conv_s, 'whole_s': whole_s, 'per_kind': per_kind}


def describe(eqn) -> str:
  p = eqn.params
  (lhs, rhs), dn = (v.aval.shape for v in eqn.invars), p['dimension_numbers']
  role = 'forward/dx' if dn.lhs_spec[0] == 0 else 'dW'  # autodiff's kernel gradient puts batch in a feature slot
  keys = ('window_strides', 'lhs_dilation', 'rhs_dilation')
  extra = ''.join(f' {k}={p[k]}' for k in keys if any(v != 1 for v in p[k]))
  return f'{role} lhs{list(lhs)} rhs{list(rhs)}{extra}'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = config_lib.validate(flags.FLAGS.config)
  batch_size, repeats, top = _BATCH_SIZE.value, _REPEATS.value, _TOP.value
  task, state, batch, step = experiment.training_setup(config, batch_size)
  model = task.model
  size = config.data.image_size
  t = jnp.full((batch_size,), 500, jnp.int32)
  s = jnp.zeros((batch_size, config.model.num_prototypes))
  forward = lambda v, x, t, s: model.apply(v, x, t, s, method=model.denoise)
  print(f'# {experiment.config_filename()}: batch {batch_size}, {size}x{size}, base {config.model.base_channels}, '
        f'mults {tuple(config.model.channel_mults)}; {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{os.cpu_count()} CPUs, jax {jax.__version__}, {time.strftime("%Y-%m-%d")}; fastest of {repeats}')
  rows = [analyse('denoiser forward', forward, (state.inference_variables(), batch['image'], t, s), repeats),
          analyse('training step', step, (state, batch), repeats)]
  head = (f'{"program":>17} {"convs":>6} {"distinct":>8} {"conv GFLOP":>10} {"convs alone s":>13} '
          f'{"GFLOP/s":>8} {"whole s":>8} {"GFLOP/s":>8} {"convs/whole":>11}')
  print(head)
  print('-' * len(head))
  for r in rows:
    print(f'{r["program"]:>17} {r["convolutions"]:>6} {r["distinct"]:>8} {r["conv_gflop"]:>10.1f} '
          f'{r["conv_alone_s"]:>13.3f} {r["conv_gflop"] / r["conv_alone_s"]:>8.0f} {r["whole_s"]:>8.3f} '
          f'{r["conv_gflop"] / r["whole_s"]:>8.0f} {r["conv_alone_s"] / r["whole_s"]:>11.0%}')
  for r in rows:
    print(f'\n# {r["program"]}: the {top} costliest kinds of convolution (time alone x count)')
    for k in r['per_kind'][:top]:
      print(f'{k["seconds"]:8.3f} s {k["count"]:>3}x {k["gflop"] / k["seconds"]:>6.0f} GFLOP/s  {k["describe"]}')


if __name__ == '__main__':
  experiment.run_app(main)
