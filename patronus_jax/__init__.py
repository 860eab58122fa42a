"""patronus_jax: Patronus and B-cos interpretable diffusion in JAX/Flax."""

import os as _os

__version__ = '0.1.0'


def _xla_cpu_defaults() -> None:
  """XLA:CPU flags this package needs (must precede backend start-up). Only XLA:CPU reads them.

  - no YNNPACK *reduce* fusions: for correctness. In jaxlib 0.10 such a fusion miscomputes the
    prototype layer's min over positions of ||z||^2 - 2 z.p + ||p||^2 once the squared
    norms are large (~1e4 and up, as in a trained encoder): in a jitted forward graph that
    uses only s (s alone, or image -> s -> U-Net) s came out saturated at log(1e4) = 9.21
    instead of ~0.07. (The training step, which also returns s statistics, computed the same
    loss and gradient norm with and without the fusions in our check.)
    tests/test_models.py::test_prototype_layer_is_exact_under_jit reproduces it.
  - convolutions on Eigen instead of YNNPACK: on x86 CPUs YNNPACK computes the kernel
    gradient of the U-Net's convolutions 3-5x slower than Eigen and than PyTorch's oneDNN
    (benchmarks/RESULTS.md).
  Set PATRONUS_JAX_XLA_DEFAULTS=0, or put your own ynn flag in XLA_FLAGS, to opt out.
  """
  if _os.environ.get('PATRONUS_JAX_XLA_DEFAULTS', '1') == '0':
    return
  flags = _os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    ynn = ' --xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce'
    _os.environ['XLA_FLAGS'] = (flags + ynn).strip()


_xla_cpu_defaults()
