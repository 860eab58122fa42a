"""patronus_jax: Patronus and B-cos interpretable diffusion in JAX/Flax."""

import os as _os

__version__ = '0.1.0'


def _xla_cpu_defaults() -> None:
  """Routes XLA:CPU convolutions to Eigen instead of YNNPACK (must precede backend start-up).

  On x86 CPUs, YNNPACK computes the kernel gradient of the U-Net's convolutions 3-5x slower
  than Eigen and than PyTorch's oneDNN, and makes compiles slower; forward speed is the same.
  Measured on the paper's U-Net (benchmarks/RESULTS.md). Only XLA:CPU reads this flag.
  Set PATRONUS_JAX_XLA_DEFAULTS=0, or put your own ynn flag in XLA_FLAGS, to opt out.
  """
  if _os.environ.get('PATRONUS_JAX_XLA_DEFAULTS', '1') == '0':
    return
  flags = _os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    _os.environ['XLA_FLAGS'] = (flags + ' --xla_cpu_experimental_ynn_fusion_type=-individual_convolution').strip()


_xla_cpu_defaults()
