"""The conditional DDPM U-Net of Patronus, and the full model (prototype network + U-Net).

The denoiser is the official `Patronus_Unet` (paper Sec. 3.2, eq. for p_theta(x_{t-1} | x_t, s)),
written NHWC. Conditioning enters every residual block as per-channel offsets:

    h = Conv(SiLU(GN(x)));  h += Dense_t(SiLU(e_t)) + Dense_s(SiLU(e_s));
    h = Conv(Dropout2d(SiLU(GN(h)))) + skip(x);  [h = h + MHSA(GN(h))]

with e_t = MLP(sinusoid(t)) and e_s = MLP(s), both of width `time_mult * base`. The sinusoid
table is a frozen buffer (an `nn.Embedding.from_pretrained` in the official code) so that
imported checkpoints are reproduced exactly. Every encoder output (including the first conv
and the stride-2 downsamplings) is kept and concatenated, channels last, into the decoder
blocks in reverse order; the decoder upsamples by nearest x2 + Conv3x3.

`Patronus.__call__(x_t, t, s=None, x0=None)` covers both calls of the official model:
with s given (training on s of the clean image, and sampling), or with s computed by the
prototype network from x0 (or, when x0 is None too, from x_t itself: `model(x, t)`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.models.layers import GroupNormSiLU, append_coordinates
from patronus_jax.models.prototypes import ActivationDecoder, PrototypeNetwork, PrototypeOutput

Dtype = Any

GROUPS = 8
NORM_EPS = 1e-5  # torch.nn.GroupNorm default


def sinusoidal_table(num_steps: int, dim: int) -> np.ndarray:
  """(num_steps, dim) table: first half sin, second half cos of t * exp(-i ln(1e4) / (dim/2 - 1))."""
  half = dim // 2
  freq = np.exp(np.arange(half, dtype=np.float32) * -(math.log(10000.0) / (half - 1)))
  angles = np.arange(num_steps, dtype=np.float32)[:, None] * freq[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def _conv3(features: int, dtype: Dtype, name: str, strides: int = 1) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)),
                 dtype=dtype, name=name)


def _group_norm(dtype: Dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=GROUPS, epsilon=NORM_EPS, dtype=dtype, name=name)


def _norm_silu(dtype: Dtype, name: str) -> GroupNormSiLU:
  return GroupNormSiLU(GROUPS, NORM_EPS, dtype, name=name)


class TimestepEmbedding(nn.Module):
  """Frozen sinusoid lookup, then Dense(width), SiLU, Dense(width)."""
  num_steps: int
  dim: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    table = self.variable('buffers', 'table',
                          lambda: jnp.asarray(sinusoidal_table(self.num_steps, self.dim))).value
    h = jnp.take(table, t.astype(jnp.int32), axis=0)
    h = nn.Dense(self.width, dtype=self.dtype, name='dense_0')(h)
    return nn.Dense(self.width, dtype=self.dtype, name='dense_1')(nn.silu(h))


class VectorEmbedding(nn.Module):
  """Dense(width), SiLU, Dense(width) on the prototype activations s."""
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s: jax.Array) -> jax.Array:
    h = nn.Dense(self.width, dtype=self.dtype, name='dense_0')(s)
    return nn.Dense(self.width, dtype=self.dtype, name='dense_1')(nn.silu(h))


class SelfAttention(nn.Module):
  """GroupNorm + multi-head self-attention over positions (torch MultiheadAttention), residual."""
  num_heads: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = _group_norm(self.dtype, 'norm')(x).reshape(b, h * w, c)
    qkv = nn.Dense(3 * c, dtype=self.dtype, name='qkv')(y)
    q, k, v = jnp.split(qkv.reshape(b, h * w, 3, self.num_heads, c // self.num_heads), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, N, heads, d)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(c // self.num_heads)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, h * w, c)
    y = nn.Dense(c, dtype=self.dtype, name='out')(y)
    return x + y.reshape(b, h, w, c)


class ResBlock(nn.Module):
  """Residual block with time and prototype conditioning (official `ResnetBlock`)."""
  out_channels: int
  dropout: float = 0.1
  attention: bool = False
  num_heads: int = 4
  dtype: Dtype = jnp.float32
  film: bool = False  # s as a scale and shift after norm_2 instead of a bias before it (not in the paper)

  @nn.compact
  def __call__(self, x, t_act, s_act, train: bool = False):
    """t_act, s_act: SiLU of the time / prototype embeddings, shared by all blocks."""
    c = self.out_channels
    h = _conv3(c, self.dtype, 'conv_1')(_norm_silu(self.dtype, 'norm_1')(x))
    cond = nn.Dense(c, dtype=self.dtype, name='time_proj')(t_act)
    if not self.film:
      cond = cond + nn.Dense(c, dtype=self.dtype, name='proto_proj')(s_act)
    h = h + cond[:, None, None, :]
    if self.film:
      # A bias is the same at every pixel; a scale lets s gate the position-dependent features
      # (with the U-Net's coordinates), i.e. say where to draw as well as what (ADM's scale-shift).
      scale, shift = jnp.split(nn.Dense(2 * c, dtype=self.dtype, name='proto_film')(s_act), 2, axis=-1)
      h = _group_norm(self.dtype, 'norm_2')(h) * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
      h = nn.silu(h)
    else:
      h = _norm_silu(self.dtype, 'norm_2')(h)
    # Dropout2d: whole channels per example.
    h = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
    h = _conv3(self.out_channels, self.dtype, 'conv_2')(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name='skip')(x)
    h = h + x
    if self.attention:
      h = SelfAttention(self.num_heads, self.dtype, name='attention')(h)
    return h


class Downsample(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv3(x.shape[-1], self.dtype, 'conv', strides=2)(x)


class Upsample(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return _conv3(c, self.dtype, 'conv')(x)


def unet_layout(num_levels: int, num_res_blocks: int) -> tuple[list[str], list[str]]:
  """Kinds of the encoder ('res'/'down') and decoder ('res'/'up') layers, in official order."""
  down, up = [], []
  for level in range(num_levels):
    down += ['res'] * num_res_blocks + (['down'] if level != num_levels - 1 else [])
  for level in reversed(range(num_levels)):
    up += ['res'] * (num_res_blocks + 1) + (['up'] if level != 0 else [])
  return down, up


class ConditionalUNet(nn.Module):
  """epsilon_theta(x_t, t, s): the official Patronus_Unet, NHWC."""
  out_channels: int
  base_channels: int = 64
  channel_mults: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attention: Sequence[bool] = (False, False, False, False)
  num_heads: int = 4
  dropout: float = 0.1
  time_mult: int = 4
  time_table_size: int = 1000  # rows of the sinusoid table (official: always 1000)
  remat: bool = False
  dtype: Dtype = jnp.float32
  s_norm: str = 'none'  # 'layer': LayerNorm over the prototypes of s before the embedding (not in the paper)
  # CoordConv input (not in the paper): s enters every block as a per-channel bias, the same at every
  # pixel, so without coordinates the U-Net can say *what* s describes but hardly *where* to draw it.
  coords: bool = False
  s_film: bool = False  # ResBlock.film in every block

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, s: jax.Array, train: bool = False,
               cond_mask: Optional[jax.Array] = None, sketch: Optional[jax.Array] = None) -> jax.Array:
    """sketch: optional (B, H, W, C') channels concatenated with x_t (Patronus.s_sketch: a picture of s)."""
    width = self.time_mult * self.base_channels
    t_act = nn.silu(TimestepEmbedding(self.time_table_size, self.base_channels, width, self.dtype,
                                      name='time_embedding')(t))
    if self.s_norm == 'layer':  # s of all images share an offset and scale; this keeps what differs
      s = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='s_norm')(s)
    elif self.s_norm != 'none':
      raise ValueError(f"unknown s_norm {self.s_norm!r}; expected 'none' or 'layer'")
    s_act = nn.silu(VectorEmbedding(width, self.dtype, name='prototype_embedding')(s))
    if cond_mask is not None:  # 0 where the example is unconditional (condition dropout, guidance)
      s_act = s_act * cond_mask[:, None].astype(s_act.dtype)
    block_cls = nn.remat(ResBlock, static_argnums=(4,)) if self.remat else ResBlock

    def block(name, channels, attention, h):
      return block_cls(channels, self.dropout, attention, self.num_heads, self.dtype, self.s_film, name=name)(
          h, t_act, s_act, train)

    if sketch is not None:
      if cond_mask is not None:  # the unconditional model sees no sketch either
        sketch = sketch * cond_mask[:, None, None, None].astype(sketch.dtype)
      x = jnp.concatenate([x, sketch.astype(x.dtype)], axis=-1)
    x = append_coordinates(x) if self.coords else x
    h = _conv3(self.base_channels, self.dtype, 'first')(x.astype(self.dtype))
    skips = [h]
    down, up = unet_layout(len(self.channel_mults), self.num_res_blocks)
    level = 0
    for i, kind in enumerate(down):
      if kind == 'down':
        h = Downsample(self.dtype, name=f'down_{i}')(h)
        level += 1
      else:
        h = block(f'down_{i}', self.base_channels * self.channel_mults[level],
                  self.attention[level], h)
      skips.append(h)
    h = block('mid_0', h.shape[-1], True, h)
    h = block('mid_1', h.shape[-1], False, h)
    level = len(self.channel_mults) - 1
    for i, kind in enumerate(up):
      if kind == 'up':
        h = Upsample(self.dtype, name=f'up_{i}')(h)
        level -= 1
      else:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(f'up_{i}', self.base_channels * self.channel_mults[level],
                  self.attention[level], h)
    h = _norm_silu(self.dtype, 'final_norm')(h)
    return _conv3(self.out_channels, self.dtype, 'final_conv')(h).astype(jnp.float32)


class Patronus(nn.Module):
  """Prototype network + conditional U-Net, as one module.

  `__call__(x_t, t, s=None, x0=None, train=False)` returns the denoiser output;
  `encode(images)` returns the PrototypeOutput (s, distances, argmins).
  """
  image_channels: int
  num_prototypes: int
  encoder_channels: Sequence[int] = (32, 64, 64, 128)
  encoder_kernels: Sequence[int] = (3, 3, 3, 3)
  encoder_strides: Sequence[int] = (2, 1, 1, 1)
  encoder_paddings: Sequence[int] = (1, 0, 0, 0)
  activation: str = 'log'
  base_channels: int = 64
  channel_mults: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attention: Sequence[bool] = (False, False, False, False)
  num_heads: int = 4
  dropout: float = 0.1
  time_mult: int = 4
  time_table_size: int = 1000
  remat: bool = False
  dtype: Dtype = jnp.float32
  # Beyond the paper (issue 19; the defaults are the official model):
  distance_norm: str = 'none'  # 'unit': cosine geometry for the prototype distances
  encoder_coords: bool = False  # CoordConv input to the prototype encoder
  prototype_channel_weights: bool = False  # learned per-prototype channel weights in the distance
  prototype_channel_sharpness: float = 1.0  # their softmax's logit scale
  outline_prototypes: int = 0  # the last n prototypes read an encoder of the image's outlines only
  outline_centred: bool = False  # ... rolled to put their centroid at the image centre
  s_norm: str = 'none'  # 'layer': LayerNorm on s before the U-Net's s-embedding
  unet_coords: bool = False  # CoordConv input to the U-Net
  s_film: bool = False  # s scales and shifts the U-Net's normalised features instead of adding a bias
  s_decoder_size: int = 0  # > 0: an ActivationDecoder head s -> (size x size) image, for an auxiliary loss
  s_decoder_kind: str = 'upsample'  # its architecture: 'upsample' or 'broadcast' (ActivationDecoder)
  s_decoder_width: int = 64  # its channels
  s_sketch: bool = False  # the decoder's picture of s, resized to x_t, is also the U-Net's input (needs s_decoder_size)
  guidance: float = 1.0  # classifier-free guidance weight on s when not training (1: plain conditional)

  def setup(self):
    self.prototypes = PrototypeNetwork(
        self.num_prototypes, tuple(self.encoder_channels), tuple(self.encoder_kernels),
        tuple(self.encoder_strides), tuple(self.encoder_paddings), self.activation, self.dtype,
        distance_norm=self.distance_norm, coords=self.encoder_coords,
        channel_weights=self.prototype_channel_weights,
        channel_sharpness=self.prototype_channel_sharpness, outline_prototypes=self.outline_prototypes,
        outline_centred=self.outline_centred)
    self.unet = ConditionalUNet(
        self.image_channels, self.base_channels, tuple(self.channel_mults), self.num_res_blocks,
        tuple(self.attention), self.num_heads, self.dropout, self.time_mult, self.time_table_size,
        self.remat, self.dtype, s_norm=self.s_norm, coords=self.unet_coords, s_film=self.s_film)
    if self.s_decoder_size:
      self.s_decoder = ActivationDecoder(self.s_decoder_size, self.image_channels, width=self.s_decoder_width,
                                         kind=self.s_decoder_kind, dtype=self.dtype)

  def encode(self, images: jax.Array) -> PrototypeOutput:
    return self.prototypes(images)

  def decode_activations(self, s: jax.Array) -> jax.Array:
    return self.s_decoder(s)

  def sketch(self, s: jax.Array, shape: Sequence[int]) -> Optional[jax.Array]:
    """With s_sketch: the decoder's picture of s resized to `shape` (B, H, W, C), else None.

    s enters the U-Net's blocks as one vector per image, and a global vector says what to draw more
    easily than where and in which outline: at 8,000 steps the quickstart's U-Net drew the held-out
    shape in 63% of images while the decoder's 16x16 picture of the same s showed it in 75%. As
    input channels (a cascaded-diffusion low-resolution input) the layout that s encodes arrives
    where convolutions use it directly; the U-Net stays a function of (x_t, t, s) alone.
    """
    return resize_sketch(self.s_decoder(s), shape) if self.s_sketch else None

  def denoise(self, x_t: jax.Array, t: jax.Array, s: jax.Array, train: bool = False,
              cond_mask: Optional[jax.Array] = None, sketch: Optional[jax.Array] = None) -> jax.Array:
    """sketch: `self.sketch(s, x_t.shape)` where the caller has it (once per training step or per
    sampling loop rather than at every call); computed here when None."""
    if sketch is None:
      sketch = self.sketch(s, x_t.shape)
    if train or cond_mask is not None or self.guidance == 1.0:
      return self.unet(x_t, t, s, train, cond_mask, sketch)
    # Classifier-free guidance: out_u + w (out_c - out_u), both halves in one batched call
    # (2x the network work; valid for eps, x0 and v alike since each is linear in the score).
    b = x_t.shape[0]
    mask = jnp.concatenate([jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)])
    twice = lambda a: None if a is None else jnp.concatenate([a, a])
    out = self.unet(twice(x_t), twice(t), twice(s), False, mask, twice(sketch))
    cond, uncond = out[:b], out[b:]
    return uncond + self.guidance * (cond - uncond)

  def __call__(self, x_t: jax.Array, t: jax.Array, s: Optional[jax.Array] = None,
               x0: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
    if s is None:
      s = self.encode(x_t if x0 is None else x0).activations
    if self.s_decoder_size and self.is_initializing():  # the auxiliary head's parameters exist from init
      self.decode_activations(s)
    return self.denoise(x_t, t, s, train)


def resize_sketch(picture: jax.Array, shape: Sequence[int]) -> jax.Array:
  """The decoder's picture (B, h, w, C) at the image's side: (B, H, W, C) for shape (B, H, W, *)."""
  return jax.image.resize(picture, (shape[0], shape[1], shape[2], picture.shape[-1]), 'linear')


def denoiser(model, variables, s: jax.Array, shape: Sequence[int], spec: Optional[SamplerSpec] = None):
  """(x_t, t) -> model.denoise(x_t, t, s) for a fixed s and images of `shape`, as samplers and
  inversions call it; a Patronus with s_sketch gets its sketch of s computed once here, outside
  the sampling loop. When `spec` asks for it (`diffusion.sketch_consistency`), x0_hat is pulled
  towards the decoder's picture of s (`diffusion.low_pass_guided`), also computed once here."""
  with_sketch = getattr(model, 's_sketch', False)
  guided = spec is not None and spec.low_pass_strength > 0
  # one decoder run serves both the sketch and the guidance
  picture = model.apply(variables, s, method=model.decode_activations) if with_sketch or guided else None
  if with_sketch:
    sketch = resize_sketch(picture, shape)  # = model.sketch(s, shape)
    denoise = lambda x, t: model.apply(variables, x, t, s, False, None, sketch, method=model.denoise)
  else:
    denoise = lambda x, t: model.apply(variables, x, t, s, method=model.denoise)
  return spec.guided(denoise, picture, shape) if guided else denoise


def patronus_from_config(config, dtype: Optional[str] = None) -> Patronus:
  """Builds the model a config describes (`config.model`, image shape from `config.data`)."""
  m = config.model
  compute = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype or config.train.dtype]
  return Patronus(
      image_channels=config.data.channels, num_prototypes=m.num_prototypes,
      encoder_channels=tuple(m.encoder_channels), encoder_kernels=tuple(m.encoder_kernels),
      encoder_strides=tuple(m.encoder_strides), encoder_paddings=tuple(m.encoder_paddings),
      activation=m.activation, base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
      num_res_blocks=m.num_res_blocks, attention=tuple(bool(a) for a in m.attention),
      num_heads=m.num_heads, dropout=m.dropout, time_mult=m.time_mult,
      time_table_size=m.time_table_size, remat=m.remat, dtype=compute, distance_norm=m.distance_norm,
      encoder_coords=m.encoder_coords, prototype_channel_weights=m.prototype_channel_weights,
      prototype_channel_sharpness=m.prototype_channel_sharpness, outline_prototypes=m.outline_prototypes,
      outline_centred=m.outline_centred,
      s_norm=m.s_norm, unet_coords=m.unet_coords, s_film=m.s_film,
      s_decoder_size=m.s_decoder_size if config.train.s_decoder_weight > 0 else 0,
      s_decoder_kind=m.s_decoder_kind, s_decoder_width=m.s_decoder_width, s_sketch=m.s_sketch,
      guidance=float(config.diffusion.guidance))
