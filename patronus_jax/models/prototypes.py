"""The prototype network of Patronus: image -> prototype activations s.

Paper, Sec. 3.1 (following ProtoPNet): a Conv+ReLU encoder f maps an image x to a grid of
patch features z = f(x) of shape (h, w, D). Each of the P learned prototypes p_j in R^D is
compared with every patch feature by the squared L2 distance

    d_j(h, w) = ||z_hw||^2 - 2 z_hw . p_j + ||p_j||^2          (clipped at 0)

its minimum over positions d_j = min_hw d_j(h, w) (the argmin says *where* the prototype
is), and the activation

    s_j = log((d_j + 1) / (d_j + 1e-4))          ('log', the paper)   or   s_j = -d_j ('linear').

The official code computes ||z||^2 as a 1x1 convolution of z^2 with a frozen all-ones
filter bank (`proactBlock.ones`); we keep that filter bank as a buffer so that imported
checkpoints reproduce the official numbers exactly, whatever it holds.

Receptive fields follow ProtoPNet's arithmetic: each feature-map position maps to a box in
the image of size r centred at start + index * jump.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from patronus_jax.models.layers import append_coordinates

Dtype = Any

ACTIVATION_EPSILON = 1e-4


class PrototypeOutput(NamedTuple):
  """Everything the prototype layer knows about an image batch."""
  activations: jax.Array  # s, (B, P)
  min_distances: jax.Array  # d, (B, P)
  argmin: jax.Array  # row-major flat index h * w_feat + w of the closest patch, (B, P) int32
  distances: jax.Array  # the full map d_j(h, w), NHWC: (B, h, w, P)


def distance_to_activation(distances: jax.Array, activation: str = 'log') -> jax.Array:
  """s = log((d + 1) / (d + 1e-4)) for 'log', s = -d for 'linear'."""
  if activation == 'log':
    return jnp.log((distances + 1.0) / (distances + ACTIVATION_EPSILON))
  if activation == 'linear':
    return -distances
  raise ValueError(f"unknown prototype activation {activation!r}; expected 'log' or 'linear'")


def activation_to_distance(activations: jax.Array, activation: str = 'log') -> jax.Array:
  """Inverse of `distance_to_activation` (useful to reason about an edited s)."""
  if activation == 'log':
    e = jnp.exp(activations)
    return (1.0 - ACTIVATION_EPSILON * e) / (e - 1.0)
  if activation == 'linear':
    return -activations
  raise ValueError(f"unknown prototype activation {activation!r}; expected 'log' or 'linear'")


class PrototypeEncoder(nn.Module):
  """Conv+ReLU stack with per-layer kernels, strides and (symmetric integer) paddings."""
  channels: Sequence[int]
  kernels: Sequence[int]
  strides: Sequence[int]
  paddings: Sequence[int]
  dtype: Dtype = jnp.float32
  coords: bool = False  # CoordConv: (y, x) in [-1, 1] appended, so a min-pooled patch can say where it is

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.coords:
      x = append_coordinates(x)
    for i, (c, k, s, p) in enumerate(zip(self.channels, self.kernels, self.strides, self.paddings)):
      x = nn.Conv(c, (k, k), strides=(s, s), padding=((p, p), (p, p)), dtype=self.dtype,
                  kernel_init=nn.initializers.normal(0.1), name=f'conv_{i}')(x)
      x = nn.relu(x)
    return x


def _ones_init(key, shape):
  del key
  return jnp.ones(shape, jnp.float32)


def _unit(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def _squared_distances(z: jax.Array, prototypes: jax.Array, channel_weight: jax.Array,
                       learned_weights: bool) -> jax.Array:
  """sum_c w_jc (z_hwc - p_jc)^2 for patch features z (B, h, w, D) and prototypes (P, D): (B, h, w, P),
  expanded as ||z||^2_w - 2 z.p_w + ||p||^2_w, clipped at 0. Without learned weights the expansion is
  the official one, ||z||^2 weighted by its filter-bank buffer and the other two terms unweighted."""
  hp = jax.lax.Precision.HIGHEST
  weighted = channel_weight * prototypes if learned_weights else prototypes
  z_sq = jnp.einsum('bhwc,pc->bhwp', z * z, channel_weight, precision=hp)
  zp = jnp.einsum('bhwc,pc->bhwp', z, weighted, precision=hp)
  return nn.relu(z_sq - 2.0 * zp + jnp.sum(weighted * prototypes, axis=-1))


def outline_map(images: jax.Array) -> jax.Array:
  """The image's outlines without its colours, NHWC (B, H, W, 2): per pixel, |dI/dy| and |dI/dx|
  (forward differences, 0 past the last row / column) summed over the colour channels, divided by
  the image's mean of their sum. Permuting or scaling the colours changes nothing, so only the
  form (edges, corners, arcs, strokes) remains; a flat image maps to 0."""
  x = images.astype(jnp.float32)
  dy = jnp.pad(jnp.abs(jnp.diff(x, axis=1)).sum(-1), ((0, 0), (0, 1), (0, 0)))
  dx = jnp.pad(jnp.abs(jnp.diff(x, axis=2)).sum(-1), ((0, 0), (0, 0), (0, 1)))
  edges = jnp.stack([dy, dx], axis=-1)
  return edges / (jnp.mean(dy + dx, axis=(1, 2))[:, None, None, None] + 1e-6)


def centring_shifts(edges: jax.Array) -> jax.Array:
  """(B, 2) int32 (dy, dx): per image, the circular shift in whole pixels that moves the centroid of
  the outline map's mass (summed over its channels) nearest to the image centre; (0, 0) for a map
  without mass. Constant in the map's values (no gradient)."""
  b, h, w, _ = edges.shape
  mass = jax.lax.stop_gradient(edges).sum(-1)
  total = mass.sum((1, 2))
  safe = jnp.where(total > 0, total, 1.0)
  cy = jnp.where(total > 0, (mass.sum(2) * (jnp.arange(h) + 0.5)).sum(1) / safe, h / 2)
  cx = jnp.where(total > 0, (mass.sum(1) * (jnp.arange(w) + 0.5)).sum(1) / safe, w / 2)
  return jnp.round(jnp.stack([h / 2 - cy, w / 2 - cx], -1)).astype(jnp.int32)


def roll_images(images: jax.Array, shifts: jax.Array) -> jax.Array:
  """Each image (B, H, W, C) rolled circularly by its own (dy, dx) of `shifts` (B, 2)."""
  return jax.vmap(lambda x, s: jnp.roll(x, (s[0], s[1]), axis=(0, 1)))(images, shifts)


class PrototypeNetwork(nn.Module):
  """Encoder + prototype layer. `__call__(images) -> PrototypeOutput`.

  Distances are always computed in float32: s is a log of small differences of large
  squared norms, which bf16 would destroy.
  """
  num_prototypes: int
  channels: Sequence[int]
  kernels: Sequence[int]
  strides: Sequence[int]
  paddings: Sequence[int]
  activation: str = 'log'
  dtype: Dtype = jnp.float32
  # 'none' (the paper): squared L2 between raw features and prototypes; 'unit': both L2-normalised,
  # so d lies in [0, 4] where log((d+1)/(d+eps)) is steep (raw d ~ 60 leaves s nearly flat).
  distance_norm: str = 'none'
  coords: bool = False
  # Per-prototype channel weights in the distance, d_j = sum_c w_jc (z_c - p_jc)^2 with
  # w_j = D softmax(a_j) (a_j learned, 0 at init: the plain distance): a prototype can look at the
  # channels that hold one factor (an outline) and ignore another (the colour) instead of matching
  # the conjunction of every channel.
  channel_weights: bool = False
  # w_j = D softmax(k a_j): with Adam, k times the logits' learning rate, so the weights can turn
  # sharp (a prototype of a few channels) within a short run; 1 gives the plain softmax.
  channel_sharpness: float = 1.0
  # The last `outline_prototypes` prototypes compare with the patch features of a second encoder
  # (same architecture) that sees only the image's outline map (`outline_map`: gradient magnitudes,
  # colour-blind and contrast-normalised): such a prototype cannot be a conjunction of colour and
  # form, so what it can stand for is the form (a corner, an arc, a stroke).
  outline_prototypes: int = 0
  # The outline map is rolled so that its centroid sits at the image centre (`centring_shifts`, to
  # the pixel) before the outline encoder sees it: the outline prototypes then cannot tell where the
  # form is, not even its offset from the encoder's stride grid (the other prototypes can), only
  # what it is. Their argmin is mapped back to the image's own feature grid (to the nearest
  # position, clipped at its edges).
  outline_centred: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> PrototypeOutput:
    if not 0 <= self.outline_prototypes <= self.num_prototypes:
      raise ValueError(f'outline_prototypes must be in [0, {self.num_prototypes}], got {self.outline_prototypes}')
    encoder = lambda name: PrototypeEncoder(self.channels, self.kernels, self.strides, self.paddings,
                                            dtype=self.dtype, coords=self.coords, name=name)
    z = encoder('encoder')(images).astype(jnp.float32)
    dim = self.channels[-1]
    prototypes = self.param('prototype_vectors', nn.initializers.uniform(1.0),
                            (self.num_prototypes, dim))
    if self.distance_norm == 'unit':
      z = _unit(z)
      prototypes = _unit(prototypes)
    elif self.distance_norm != 'none':
      raise ValueError(f"unknown distance_norm {self.distance_norm!r}; expected 'none' or 'unit'")
    # the official all-ones filter bank (a buffer, so official checkpoints import), or the learned weights
    channel_weight = self.variable('buffers', 'ones', _ones_init, None, (self.num_prototypes, dim)).value
    if self.channel_weights:
      logits = self.param('channel_logits', nn.initializers.zeros, (self.num_prototypes, dim))
      channel_weight = dim * jax.nn.softmax(self.channel_sharpness * logits, axis=-1)
    split = self.num_prototypes - self.outline_prototypes
    distances = _squared_distances(z, prototypes[:split], channel_weight[:split], self.channel_weights)
    shifts = None
    if self.outline_prototypes:
      edges = outline_map(images)
      if self.outline_centred:
        shifts = centring_shifts(edges)
        edges = roll_images(edges, shifts)
      z_outline = encoder('outline_encoder')(edges).astype(jnp.float32)
      if self.distance_norm == 'unit':
        z_outline = _unit(z_outline)
      outline = _squared_distances(z_outline, prototypes[split:], channel_weight[split:], self.channel_weights)
      distances = jnp.concatenate([distances, outline], axis=-1)
    b, h, w, p = distances.shape
    flat = distances.reshape(b, h * w, p)
    argmin = jnp.argmin(flat, axis=1).astype(jnp.int32)  # first minimum, row-major like torch
    if shifts is not None:  # the centred frame's positions, in the image's grid
      grid = jnp.round(shifts / math.prod(self.strides)).astype(jnp.int32)
      row = jnp.clip(argmin[:, split:] // w - grid[:, :1], 0, h - 1)
      col = jnp.clip(argmin[:, split:] % w - grid[:, 1:], 0, w - 1)
      argmin = jnp.concatenate([argmin[:, :split], row * w + col], axis=1)
    min_distances = jnp.min(flat, axis=1)
    return PrototypeOutput(
        activations=distance_to_activation(min_distances, self.activation),
        min_distances=min_distances, argmin=argmin, distances=distances)


DECODER_KINDS = ('upsample', 'broadcast')


class ActivationDecoder(nn.Module):
  """A small decoder from s to a low-resolution image (not in the paper; train.s_decoder_weight).

  Stage 1's diffusion loss reaches the encoder only through what the U-Net can use, and at a short
  budget the U-Net draws most of the image from x_t, so s learns little beyond the background. This
  head's loss  ||dec(s) - avgpool(x0)||^2  asks s directly for the image's layout (where the object
  is, how big, which colour and outline) from the first step; it is dropped after training.

  kind 'upsample': a dense layer to a 4x4 grid, then nearest-neighbour upsampling and 3x3 convs.
  kind 'broadcast': the spatial broadcast decoder (Watters et al. 2019): s is copied to every pixel
  of the size x size grid next to its (y, x) coordinates, then 3x3 convs at that size. Placing an
  object needs only a few numbers of s compared with the coordinates, rather than a template per
  place, which leaves the rest of s for what the object looks like.
  """
  size: int  # output side in pixels; a power of two >= 4
  channels: int
  width: int = 64
  kind: str = 'upsample'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s: jax.Array) -> jax.Array:
    h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm')(s)
    if self.kind == 'broadcast':
      h = append_coordinates(jnp.broadcast_to(h[:, None, None, :], (s.shape[0], self.size, self.size, s.shape[-1])))
      for i in range(3):
        h = nn.silu(nn.Conv(self.width, (3, 3), dtype=self.dtype, name=f'conv_{i}')(h))
    elif self.kind == 'upsample':
      h = nn.silu(nn.Dense(4 * 4 * self.width, dtype=self.dtype, name='dense')(h))
      h = h.reshape(s.shape[0], 4, 4, self.width)
      for i in range(int(math.log2(self.size // 4))):
        h = jax.image.resize(h, (h.shape[0], 2 * h.shape[1], 2 * h.shape[2], self.width), 'nearest')
        h = nn.silu(nn.Conv(self.width, (3, 3), dtype=self.dtype, name=f'conv_{i}')(h))
    else:
      raise ValueError(f'unknown decoder kind {self.kind!r}; expected one of {DECODER_KINDS}')
    return nn.Conv(self.channels, (3, 3), dtype=self.dtype, name='out')(h).astype(jnp.float32)


class ReceptiveField(NamedTuple):
  """ProtoPNet's [n_out, jump, size, start] of the prototype layer (input pixels)."""
  n: int  # feature-map side
  jump: float  # pixels between neighbouring feature positions
  size: float  # receptive-field side in pixels
  start: float  # centre of position 0 (pixel-centre convention: first pixel is at 0.5)


def receptive_field(image_size: int, kernels: Sequence[int], strides: Sequence[int],
                    paddings: Sequence[int], prototype_kernel: int = 1) -> ReceptiveField:
  """Receptive field of the prototype layer after the encoder, as in ProtoPNet."""
  n, jump, size, start = image_size, 1.0, 1.0, 0.5
  layers = list(zip(kernels, strides, paddings)) + [(prototype_kernel, 1, 0)]
  for k, s, p in layers:
    n = math.floor((n - k + 2 * p) / s) + 1
    start = start + ((k - 1) / 2 - p) * jump
    size = size + (k - 1) * jump
    jump = jump * s
  if n <= 0:
    raise ValueError(f'the prototype encoder reduces a {image_size}px image to nothing '
                     f'(kernels {list(kernels)}, strides {list(strides)}, paddings {list(paddings)})')
  return ReceptiveField(int(n), jump, size, start)


def patch_box(rf: ReceptiveField, row: int, col: int, image_size: int) -> tuple[int, int, int, int]:
  """Image box (y0, y1, x0, x1), end-exclusive and clipped, of feature position (row, col)."""
  if not (0 <= row < rf.n and 0 <= col < rf.n):
    raise ValueError(f'feature position ({row}, {col}) outside the {rf.n}x{rf.n} prototype map')
  cy, cx = rf.start + row * rf.jump, rf.start + col * rf.jump
  y0, y1 = max(int(cy - rf.size / 2), 0), min(int(cy + rf.size / 2), image_size)
  x0, x1 = max(int(cx - rf.size / 2), 0), min(int(cx + rf.size / 2), image_size)
  return y0, y1, x0, x1


def argmin_box(rf: ReceptiveField, flat_index: int, image_size: int) -> tuple[int, int, int, int]:
  """Box of a row-major flat argmin index of the prototype map."""
  row, col = divmod(int(flat_index), rf.n)
  return patch_box(rf, row, col, image_size)


def batch_correlation(x: jax.Array, y: jax.Array, eps: float = 1e-6) -> jax.Array:
  """(p, q) correlations over the batch between the columns of x (n, p) and y (n, q); a column that
  does not vary has correlation 0 with everything."""
  ones = jnp.ones((x.shape[0],), x.dtype)
  xs, _, _ = weighted_moments(x, ones, eps)
  ys, _, _ = weighted_moments(y, ones, eps)
  return xs.T @ ys / x.shape[0]


def weighted_moments(x: jax.Array, weights: jax.Array,
                     eps: float = 1e-6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(standardised x, std per column, weights summing to 1) over the rows of x (n, p), row i counting
  weights[i] (>= 0); equal weights give the batch's mean and (population) std."""
  w = weights / jnp.sum(weights)
  centred = x - w @ x
  std = jnp.sqrt(w @ centred ** 2)
  return centred / (std + eps), std, w


def with_memory(s: jax.Array, memory: Optional[dict]) -> tuple[jax.Array, jax.Array]:
  """(rows, weights): the batch's s followed by the memory's activations of earlier batches (no
  gradient; slots not filled yet weigh 0), or the batch alone."""
  weights = jnp.ones((s.shape[0],), s.dtype)
  if memory is None:
    return s, weights
  rows = jnp.concatenate([s, jax.lax.stop_gradient(memory['activations']).astype(s.dtype)])
  return rows, jnp.concatenate([weights, memory['filled'].astype(s.dtype)])


def empty_memory(size: int, num_prototypes: int) -> dict:
  """Room for the s of `size` earlier examples (train.s_decorrelation_memory), none filled yet."""
  return {'activations': jnp.zeros((size, num_prototypes), jnp.float32), 'filled': jnp.zeros((size,), jnp.float32)}


def remember(memory: dict, s: jax.Array) -> dict:
  """The memory after a batch: its s first (without gradient), the oldest rows dropped."""
  size = memory['filled'].shape[0]
  s = jax.lax.stop_gradient(s).astype(jnp.float32)
  return {'activations': jnp.concatenate([s, memory['activations']])[:size],
          'filled': jnp.concatenate([jnp.ones((s.shape[0],), jnp.float32), memory['filled']])[:size]}


def decorrelation_loss(s: jax.Array, threshold: float = 0.0, memory: Optional[dict] = None) -> jax.Array:
  """Mean over the P (P - 1) ordered pairs of distinct prototypes of their squared correlation over
  the batch (train.s_decorrelation_weight): 0 when no two prototypes co-vary, 1 when all are copies.

  threshold > 0 (train.s_decorrelation_threshold) counts only the excess of |corr| over it,
  (relu(|corr| - threshold) / (1 - threshold))^2: near-copies pay (a copy still 1), prototypes that
  merely share some of a factor do not. With `memory` (train.s_decorrelation_memory) the correlation
  is over the batch and the s of earlier batches: at a batch of 8 a correlation's noise is ~0.35,
  over 264 rows ~0.06, so a low threshold then charges real dependence, not noise."""
  p = s.shape[1]
  if p < 2:
    return jnp.zeros((), s.dtype)
  standardised, _, w = weighted_moments(*with_memory(s, memory))
  corr = (standardised * w[:, None]).T @ standardised * (1.0 - jnp.eye(p, dtype=s.dtype))
  excess = jax.nn.relu(jnp.abs(corr) - threshold) / (1.0 - threshold)
  return jnp.sum(excess ** 2) / (p * (p - 1))


def spread_loss(s: jax.Array, floor: float, memory: Optional[dict] = None) -> jax.Array:
  """Mean over prototypes of relu(1 - std_j / (floor x the largest std))^2 (train.s_spread_weight):
  a prototype whose spread over the batch (and the memory) falls below `floor` of the widest one's
  pays, so that a penalty on dependence cannot be met by silencing prototypes (VICReg's variance
  term, relative to the widest prototype since s has no fixed scale)."""
  _, std, _ = weighted_moments(*with_memory(s, memory))
  reference = jax.lax.stop_gradient(jnp.max(std)) * floor
  return jnp.mean(jax.nn.relu(1.0 - std / (reference + 1e-12)) ** 2)


def hessian_penalty(fn, s: jax.Array, key: jax.Array, step: float = 0.1, num_directions: int = 2) -> jax.Array:
  """Peebles et al. (2020)'s Hessian penalty of fn (s -> array) at s (train.s_decoder_hessian_weight).

  For a Rademacher vector v, v^T H v = sum_j v_j^2 H_jj + sum_{j != k} v_j v_k H_jk: the diagonal
  part is the same for every v, so the variance over v of v^T H v is 2 sum_{j != k} H_jk^2 per output
  element, the squared off-diagonal Hessian, 0 exactly when every input's effect on that output is
  independent of the others'. v^T H v is the central second difference along v; each prototype's
  step is `step` x its std over the batch, so the penalty is in units of s's own spread. Returned:
  that unbiased variance over `num_directions` directions, averaged over the batch and fn's outputs.
  s enters without its gradient: the penalty shapes fn, not the s it is given.
  """
  if num_directions < 2:
    raise ValueError(f'the Hessian penalty needs at least 2 directions for a variance, got {num_directions}')
  s = jax.lax.stop_gradient(s)
  h = step * (jnp.std(s, axis=0, keepdims=True) + 1e-6)
  v = jax.random.rademacher(key, (num_directions,) + s.shape, dtype=s.dtype) * h
  points = jnp.concatenate([s[None], s[None] + v, s[None] - v]).reshape((-1,) + s.shape[1:])
  out = fn(points).reshape((2 * num_directions + 1, s.shape[0]) + (-1,))
  centre, plus, minus = out[0], out[1:1 + num_directions], out[1 + num_directions:]
  second = (plus - 2.0 * centre[None] + minus) / step ** 2
  return jnp.mean(jnp.var(second, axis=0, ddof=1))


def edit_cycle_loss(s: jax.Array, key: jax.Array, picture_of, activations_of) -> jax.Array:
  """The edit-cycle loss (train.edit_cycle_weight): an edited s must come back from its picture.

  Each example's s gets one prototype, chosen at random, set to that prototype's value in another
  example of the batch (so it stays within the range the prototype takes); `picture_of` (s -> image)
  draws the edited s and `activations_of` (image -> s) reads the picture again. A prototype whose
  change does not show in the picture, or shows as a change of other prototypes, pays. Errors are in
  units of each prototype's batch variance; the edited prototype's error and the mean error of the
  unedited ones count half each. s is the target and enters without its gradient.
  """
  s = jax.lax.stop_gradient(s)
  b, p = s.shape
  chosen = jax.nn.one_hot(jax.random.randint(key, (b,), 0, p), p, dtype=s.dtype)
  edited = s * (1.0 - chosen) + jnp.roll(s, 1, axis=0) * chosen
  back = activations_of(picture_of(edited))
  error = (back - edited) ** 2 / (jnp.var(s, axis=0, keepdims=True) + 1e-6)
  on_edited = jnp.sum(error * chosen) / b
  on_others = jnp.sum(error * (1.0 - chosen)) / (b * max(p - 1, 1))
  return 0.5 * (on_edited + on_others)


def patch_cluster_loss(distances: jax.Array) -> jax.Array:
  """Mean over every patch of the batch of its distance to the nearest prototype
  (train.patch_cluster_weight): the k-means objective of the patches with the prototypes as
  centres. Each prototype is pulled only by the patches it is nearest to, so the prototypes spread
  over the kinds of patch that occur (an apex, a corner, an arc) instead of only what the
  diffusion loss asks for; `distances` is the map d_j(h, w), (B, h, w, P)."""
  return jnp.mean(jnp.min(distances, axis=-1))


def prototype_distinct_loss(prototypes: jax.Array, margin: float = 0.2) -> jax.Array:
  """Mean over prototypes of relu(margin - min_{k!=j} (1 - |cos(p_j, p_k)|)) (official, off by default)."""
  if prototypes.shape[0] < 2:
    return jnp.zeros((), prototypes.dtype)
  unit = prototypes / jnp.maximum(jnp.linalg.norm(prototypes, axis=-1, keepdims=True), 1e-12)
  distance = 1.0 - jnp.abs(unit @ unit.T)
  distance = jnp.where(jnp.eye(prototypes.shape[0], dtype=bool), jnp.inf, distance)
  return jnp.mean(nn.relu(margin - jnp.min(distance, axis=1)))
