"""Applying a jitted network to many images in fixed-size batches, spread over all devices.

Every batch has the same shape (the last one is padded), so a feature network compiles once
whatever the number of images. The batch axis is sharded over a one-axis device mesh and the
parameters are replicated: feature extraction scales with the devices of the host.
"""

from __future__ import annotations

from typing import Any, Callable

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


def batched_apply(fn: Callable[[Any, jax.Array], Any], params: Any, inputs: np.ndarray,
                  batch_size: int, mesh: Mesh | None = None) -> Any:
  """Computes `fn(params, batch)` over `inputs` in batches; returns numpy arrays (a pytree).

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
  outputs = []
  for start in range(0, n, batch_size):
    batch = inputs[start:start + batch_size]
    valid = batch.shape[0]
    if valid < batch_size:
      pad = np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    # Dispatch is asynchronous: keep device arrays and copy to the host at the end, so that
    # the next batch is transferred while this one computes.
    outputs.append((fn(params, jax.device_put(batch, data_sharding)), valid))
  if not outputs:
    raise ValueError('batched_apply got no inputs (an empty array)')
  host = [jax.tree.map(lambda x, v=valid: np.asarray(x)[:v], out) for out, valid in outputs]
  return jax.tree.map(lambda *xs: np.concatenate(xs), *host)
