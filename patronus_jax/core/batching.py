"""Applying a jitted function to many rows in fixed-size batches (`padded_map`), and spread
over all devices (`batched_apply`).

Every batch has the same shape (the last one is padded), so a network compiles once whatever
the number of rows. `batched_apply` shards the batch axis over a one-axis device mesh and
replicates the parameters: feature extraction scales with the devices of the host.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
  """A mesh over all local devices with one 'data' axis."""
  return Mesh(np.asarray(jax.local_devices()), ('data',))


def check_images(images: np.ndarray, name: str = 'images', channels: tuple[int, ...] = ()) -> np.ndarray:
  """Returns `images` as an array after checking it is NHWC (and has one of `channels`)."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'{name} must be NHWC (4 dimensions), got shape {images.shape}')
  if channels and images.shape[-1] not in channels:
    raise ValueError(f'{name} must have {" or ".join(map(str, channels))} channels (NHWC), '
                     f'got shape {images.shape}')
  return images


def pad_rows(x: np.ndarray, size: int, pad: Optional[str] = 'zeros') -> np.ndarray:
  """`x` with its leading axis filled up to `size`: zeros, 'edge' (its last row repeated) or None (as is)."""
  missing = size - x.shape[0]
  if pad is None or missing <= 0:
    return x
  fill = np.zeros((missing,) + x.shape[1:], x.dtype) if pad == 'zeros' else np.repeat(x[-1:], missing, 0)
  return np.concatenate([x, fill])


def padded_map(fn: Callable[..., Any], inputs: Any, batch_size: int, *, pad: Optional[str] = 'zeros',
               progress: Optional[Callable[[int], None]] = None) -> Any:
  """`fn(index, *batches)` over the rows of `inputs` (an array or a tuple of arrays) in batches.

  Every batch has `batch_size` rows (the last one padded by `pad_rows`, so a jitted `fn`
  compiles once). The outputs (a pytree, batch axis first) are cut to the real rows and
  concatenated as numpy arrays. With `progress` (called with the rows done) each output is
  copied to the host as soon as it is ready; without, at the end, so that the next batch is
  dispatched while this one computes.
  """
  arrays = inputs if isinstance(inputs, tuple) else (inputs,)
  n = arrays[0].shape[0]
  outputs = []
  for index, start in enumerate(range(0, n, batch_size)):
    valid = min(n - start, batch_size)
    out = fn(index, *(pad_rows(a[start:start + valid], batch_size, pad) for a in arrays))
    if progress is not None:
      out = jax.tree.map(lambda x, v=valid: np.asarray(x)[:v], out)
      progress(start + valid)
    outputs.append((out, valid))
  if not outputs:
    raise ValueError('padded_map got no inputs (an empty array)')
  host = [jax.tree.map(lambda x, v=valid: np.asarray(x)[:v], out) for out, valid in outputs]
  return jax.tree.map(lambda *xs: np.concatenate(xs), *host)


def batched_apply(fn: Callable[[Any, jax.Array], Any], params: Any, inputs: np.ndarray,
                  batch_size: int, mesh: Mesh | None = None) -> Any:
  """Computes `fn(params, batch)` over `inputs` in batches spread over the devices; numpy outputs (a pytree).

  `fn` must be a jitted function of (params, batch) whose outputs have the batch as leading
  axis. The batch size is rounded up to a multiple of the device count.
  """
  inputs = np.asarray(inputs)
  n = inputs.shape[0]
  mesh = data_mesh() if mesh is None else mesh
  num_devices = mesh.devices.size
  # Fewer inputs than a batch: the next power of two, so that few shapes get compiled.
  batch_size = max(1, min(batch_size, 1 << max(n - 1, 0).bit_length()))
  batch_size = -(-batch_size // num_devices) * num_devices
  data_sharding = NamedSharding(mesh, PartitionSpec('data'))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  return padded_map(lambda _, batch: fn(params, jax.device_put(batch, data_sharding)), inputs, batch_size)
