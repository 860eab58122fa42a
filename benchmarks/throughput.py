r"""Stage-1 training throughput and denoiser forward latency of the Patronus U-Net.

  python benchmarks/throughput.py --config=configs/celeba.py --batch_sizes=16,64 \
      --dtypes=float32,bfloat16 [--remat=both] [--json=OUT.json]

For each (batch size, dtype[, remat]) it compiles the real jitted training step of
`patronus_jax.train` (prototype encoder + U-Net, diffusion loss, AdamW, EMA) and the U-Net
forward, warms up, excludes compilation, repeats, and prints the median and spread of
  - training images/s and ms per step,
  - denoiser forward ms per batch,
  - memory: the bytes autodiff saves for the backward pass (residuals: what `--remat` cuts),
    XLA's buffer estimate (arguments + temporaries) and, on accelerators, the device's peak
    bytes in use; on CPU the process's peak RSS,
  - FLOPs per step from XLA's cost analysis, achieved TFLOP/s, and MFU on known accelerators.
Synthetic inputs: no data loading is measured. `--compile_only` skips the runs and reports
only XLA's estimates (memory, FLOPs), e.g. for CheXpert 224x224 with and without remat.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax import experiment
from patronus_jax.core import training as training_lib

# The flags of every script (patronus_jax/experiment.py): --config=FILE[:variant] with
# --config.<field>=<value> overrides; --set FIELD=VALUE stays for the documented commands.
config_flags.DEFINE_config_file('config', 'configs/celeba.py', 'Config file[:variant] of the model.',
                                lock_config=True)
_BATCH_SIZES = flags.DEFINE_string('batch_sizes', '16', 'Comma-separated global batch sizes.')
_DTYPES = flags.DEFINE_string('dtypes', 'float32', 'Comma-separated compute dtypes (float32, bfloat16).')
_REMAT = flags.DEFINE_enum('remat', 'off', ['off', 'on', 'both'], 'Rematerialise residual blocks.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per setting (the median is reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed runs first.')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'FIELD=VALUE config override, e.g. data.folder.path=/data/chexpert (the chexpert config '
    'requires the field; inputs here are synthetic, so it is not read)')
_COMPILE_ONLY = flags.DEFINE_bool(
    'compile_only', False, "Only compile and report XLA's memory and FLOP estimates (e.g. a config too "
    'large to run here, with and without --remat).')

# Dense peak FLOP/s per chip for MFU. On GPUs JAX's default precision runs float32 convolutions
# and matmuls on TF32 tensor cores, so that (not plain fp32) is the float32 ceiling.
PEAK_TFLOPS = {
    'H100': {'bfloat16': 989.0, 'float32': 494.7},
    'H200': {'bfloat16': 989.0, 'float32': 494.7},
    'A100': {'bfloat16': 312.0, 'float32': 156.0},
    'TPU v4': {'bfloat16': 275.0, 'float32': 275.0},
    'TPU v5 lite': {'bfloat16': 197.0, 'float32': 197.0},
    'TPU v5p': {'bfloat16': 459.0, 'float32': 459.0},
}


def device_peak(dtype: str):
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peaks[dtype] * 1e12
  return None


def flops_of(fn, *args) -> float:
  """FLOPs of `fn(*args)` from XLA's cost analysis of the program lowered for the host CPU, before
  optimisation: the same count on every backend. (On GPUs the compiled program's analysis leaves
  out the cuDNN convolutions, almost all of this model, and the uncompiled one is not implemented
  for plugin backends.)"""
  try:
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, 'dtype') else x, args)
    with jax.default_device(jax.devices('cpu')[0]):
      cost = jax.jit(fn).lower(*abstract).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', float('nan')))
  except Exception:  # pylint: disable=broad-except
    return float('nan')


def memory_of(compiled) -> float:
  try:
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                 - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return float('nan')


def residual_bytes(task, state, gbatch) -> float:
  """Bytes autodiff keeps from the forward pass for the backward pass of one training step
  (shapes only, from tracing: the same on every backend; what rematerialisation reduces)."""
  loss = functools.partial(training_lib.training_loss, task=task, state=state, batch=gbatch,
                           key=jax.random.PRNGKey(0))
  leaves = jax.eval_shape(lambda p: jax.tree_util.tree_leaves(jax.vjp(loss, p, has_aux=True)[1]),
                          state.params)
  return float(sum(np.prod(x.shape) * x.dtype.itemsize for x in leaves))


def device_peak_bytes() -> float:
  try:
    stats = jax.devices()[0].memory_stats()
    return float(stats['peak_bytes_in_use']) if stats else float('nan')
  except Exception:  # pylint: disable=broad-except
    return float('nan')


def bench_one(config, batch_size: int, dtype: str, remat: bool, repeats: int, warmup: int,
              compile_only: bool = False) -> dict:
  task, state, gbatch, step_fn = experiment.training_setup(config, batch_size, dtype, remat)
  donate = (0,) if jax.default_backend() != 'cpu' else ()
  step = jax.jit(step_fn, donate_argnums=donate)
  t0 = time.perf_counter()
  step_compiled = step.lower(state, gbatch).compile()
  compile_s = time.perf_counter() - t0
  if compile_only:  # XLA's memory and FLOP analyses only: nothing runs (timings are NaN)
    step_times = fwd_times = [float('nan')]
  else:
    holder = {'state': state}

    def run_step():
      holder['state'], metrics = step_compiled(holder['state'], gbatch)
      return metrics['loss']

    step_times = experiment.timed(lambda: run_step(), repeats=repeats, warmup=warmup)
    model = task.model
    variables = holder['state'].inference_variables()
    t = jnp.full((batch_size,), 500, jnp.int32)
    s = jnp.zeros((batch_size, config.model.num_prototypes))
    fwd = jax.jit(lambda v, x, t, s: model.apply(v, x, t, s, method=model.denoise))
    fwd_compiled = fwd.lower(variables, gbatch['image'], t, s).compile()
    fwd_times = experiment.timed(fwd_compiled, variables, gbatch['image'], t, s, repeats=repeats, warmup=warmup)
  flops = flops_of(step_fn, state, gbatch)
  med = statistics.median(step_times)
  peak = device_peak(dtype)
  achieved = flops / med if flops == flops else float('nan')
  return {
      'batch_size': batch_size, 'dtype': dtype, 'remat': remat,
      'train_images_per_s': batch_size / med,
      'train_images_per_s_spread': [batch_size / max(step_times), batch_size / min(step_times)],
      'step_ms': 1e3 * med,
      'forward_ms': 1e3 * statistics.median(fwd_times),
      'forward_ms_spread': [1e3 * min(fwd_times), 1e3 * max(fwd_times)],
      'compile_s': compile_s,
      'step_flops': flops,
      'tflops_per_s': achieved / 1e12 if achieved == achieved else None,
      'mfu': achieved / peak if peak and achieved == achieved else None,
      'xla_memory_bytes': memory_of(step_compiled),
      'residual_bytes': residual_bytes(task, state, gbatch),
      'device_peak_bytes': device_peak_bytes(),
      'process_peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      'repeats': repeats,
  }


def fmt_bytes(b) -> str:
  return 'n/a' if b is None or b != b else f'{b / 2**30:.2f} GiB'


def print_table(rows: list[dict]) -> None:
  head = (f'{"batch":>5} {"dtype":>9} {"remat":>5} {"train img/s":>16} {"step ms":>9} {"fwd ms":>16} '
          f'{"TFLOP/s":>8} {"MFU":>6} {"residuals":>10} {"XLA mem":>10} {"dev peak":>10} {"RSS peak":>10} '
          f'{"compile s":>9}')
  print(head)
  print('-' * len(head))
  for r in rows:
    lo, hi = r['train_images_per_s_spread']
    flo, fhi = r['forward_ms_spread']
    mfu = f'{100 * r["mfu"]:.1f}%' if r['mfu'] else 'n/a'
    print(f'{r["batch_size"]:>5} {r["dtype"]:>9} {str(r["remat"]):>5} '
          f'{r["train_images_per_s"]:>7.2f} [{lo:.2f}-{hi:.2f}] {r["step_ms"]:>9.1f} '
          f'{r["forward_ms"]:>7.1f} [{flo:.0f}-{fhi:.0f}] '
          f'{(r["tflops_per_s"] or float("nan")):>8.2f} '
          f'{mfu:>6} {fmt_bytes(r["residual_bytes"]):>10} {fmt_bytes(r["xla_memory_bytes"]):>10} '
          f'{fmt_bytes(r["device_peak_bytes"]):>10} {fmt_bytes(r["process_peak_rss_bytes"]):>10} '
          f'{r["compile_s"]:>9.1f}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    overrides = config_lib.parse_set_flags(_SET.value)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e), exitcode=2)
  config = flags.FLAGS.config
  for dotted, text in overrides.items():
    config_lib.set_field_from_text(config, dotted, text)
  config = config_lib.validate(config)
  remats = {'off': [False], 'on': [True], 'both': [False, True]}[_REMAT.value]
  dev = jax.devices()[0]
  print(f'# {experiment.config_filename()}: {config.data.image_size}x{config.data.image_size}x{config.data.channels}, '
        f'base {config.model.base_channels}, mults {tuple(config.model.channel_mults)}, '
        f'{config.model.num_prototypes} prototypes')
  host = platform.processor() or platform.machine()
  print(f'# device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}), host {host}, '
        f'{os.cpu_count()} CPUs, jax {jax.__version__}, {time.strftime("%Y-%m-%d")}')
  rows = []
  for bs in [int(b) for b in _BATCH_SIZES.value.split(',')]:
    for dtype in _DTYPES.value.split(','):
      for remat in remats:
        rows.append(bench_one(config, bs, dtype, remat, _REPEATS.value, _WARMUP.value,
                              _COMPILE_ONLY.value))
        print(f'# done batch {bs} {dtype} remat={remat}', flush=True)
  print_table(rows)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      # Strict JSON: NaN (not measured here, e.g. device peak on CPU) becomes null.
      json.dump([{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows],
                f, indent=2)


if __name__ == '__main__':
  experiment.run_app(main)
