"""The B-cos diffusion U-Net: a bias-free network that is W(x) x over all of its inputs.

Inputs (the explained "x", concatenated):
  image   the noisy image colour-encoded as [r, g, b, 1-r, 1-g, 1-b] with r = (1 + x_t) / 2
          (B-cos convention: every colour is seen both as itself and as its complement, so
          that dark pixels carry as much signal as bright ones), NHWC with 2C channels;
  time    a sinusoidal vector of the timestep (the timestep enters as an input vector, never
          as an additive bias: each residual block adds a B-cos projection of it);
  tokens  conditioning tokens (B, L, D) with a validity mask: learned word embeddings of a
          caption, precomputed embeddings of an external text encoder, or s_j e_j for
          prototype activations s_j (the Patronus model built from B-cos layers).

Every layer is a B-cos layer, a bias-free normalisation or B-cos attention, and their sums,
concatenations and nearest-neighbour upsamplings; none adds a constant. So in explanation
mode (dynamic factors held constant, see models/bcos.py)

    output = W_image(x) · image + W_time(x) · time + Σ_i W_i(x) · token_i

exactly, and the contribution of each input is its share of that sum.

Path (NHWC): BcosConv3x3 to `base`; per level `num_res_blocks` residual blocks, each
followed (where enabled) by self-attention and cross-attention to the tokens, keeping every
output for the skips; stride-2 BcosConv3x3 between levels; bottleneck: block, self- and
cross-attention, block; the decoder mirrors the encoder (num_res_blocks + 1 blocks per level,
each concatenating the next skip), with nearest x2 + BcosConv3x3 between levels; head: norm,
BcosConv3x3 to the image channels, times a learned per-channel gain (a constant scale, no
bias). The model's output is preconditioned (`preconditioning`): c_skip(ᾱ_t) x_t + c_out(ᾱ_t) U-Net,
where x_t = image[:C] - image[C:] is itself linear in the encoded image.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax.models.bcos import BcosAttention, BcosConv, BcosDense, BiasFreeNorm
from patronus_jax.models.prototypes import PrototypeNetwork
from patronus_jax.models.unet_path import PathBlocks, UNetPath, unet_path
from patronus_jax.models.vanilla_unet import VanillaUNet
from patronus_jax.core import diffusion

Dtype = Any
Array = jax.Array


def encode_colors(x: Array, one: Any = 1.0) -> Array:
  """[-1, 1] images (..., C) -> [(1 + x) / 2, (1 - x) / 2]: (..., 2C).

  `one` is the encoding's constant; an explanation of a whole generation passes it as an
  explained input (broadcastable to x), so that the affine encoding is linear in (x, one).
  """
  u = (x + one) / 2.0
  return jnp.concatenate([u, one - u], axis=-1)


def decode_colors(encoded: Array) -> Array:
  """Inverse of `encode_colors` that is linear in the encoding: x = e[:C] - e[C:]."""
  c = encoded.shape[-1] // 2
  return encoded[..., :c] - encoded[..., c:]


def timestep_features(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """(B,) timesteps -> (B, dim): [sin(t f_i), cos(t f_i)], f_i = max_period^(-i / (dim/2))."""
  half = dim // 2
  freq = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t.astype(jnp.float32)[:, None] * freq[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ExplainedInputs(NamedTuple):
  """The inputs x of W(x) x, and what is held fixed: the token mask and ᾱ_t."""
  image: Array  # (B, H, W, 2C) colour-encoded
  time: Array  # (B, time_dim)
  tokens: Array  # (B, L, D)
  token_mask: Array  # (B, L) bool
  abar: Array  # (B,) ᾱ_t of the schedule (the preconditioning constants)


def preconditioning(abar: Array, prediction: str, sigma_data: float) -> tuple[Array, Array]:
  """(c_skip, c_out) of output = c_skip x_t + c_out F (Karras et al. 2022, in VP form).

  With x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε and Var x0 = σ², c_skip x_t is the best linear
  estimate of the target from x_t and c_out the standard deviation of what remains, so the
  network F always predicts a unit-variance residual. Without it, a B-cos network would have
  to reproduce x_t almost exactly at high noise (ε ≈ x_t), which |cos|-scaled layers do badly,
  and DDIM amplifies that error by 1/sqrt(ᾱ). Both factors are constants of the schedule, and
  x_t = image[:C] - image[C:] is linear in the encoded input: the model stays W(x) x.
  """
  abar = abar.astype(jnp.float32)
  var = abar * sigma_data**2 + (1.0 - abar)
  if prediction == 'eps':
    return jnp.sqrt(1.0 - abar) / var, jnp.sqrt(abar * sigma_data**2 / var)
  if prediction == 'x0':
    return jnp.sqrt(abar) * sigma_data**2 / var, jnp.sqrt((1.0 - abar) * sigma_data**2 / var)
  raise ValueError(f"unknown prediction {prediction!r}; expected 'eps' or 'x0'")


class _Norm(nn.Module):
  kind: str = 'centered'
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, explain):
    if self.kind == 'none':
      return x
    return BiasFreeNorm(self.num_groups, centered=self.kind == 'centered', dtype=self.dtype,
                        name='norm')(x, explain)


class BcosLayers(nn.Module):
  """The settings of the B-cos layers, shared by the U-Net and its blocks; keyword-only, so that each
  subclass's own fields keep their positions."""
  _: dataclasses.KW_ONLY
  b: float = 2.0
  max_out: int = 1
  norm: str = 'centered'
  num_groups: int = 8
  dtype: Dtype = jnp.float32


class BcosResBlock(BcosLayers):
  """norm -> BcosConv3x3 -> + B-cos projection of the time vector -> norm -> BcosConv3x3, + skip."""
  out_channels: int

  @nn.compact
  def __call__(self, x, time_features, explain: bool = False):
    conv = lambda k, name: BcosConv(self.out_channels, k, 1, k // 2, self.b, self.max_out,
                                    dtype=self.dtype, name=name)
    h = conv(3, 'conv_1')(_Norm(self.norm, self.num_groups, self.dtype, name='norm_1')(x, explain), explain)
    t = BcosDense(self.out_channels, self.b, self.max_out, dtype=self.dtype, name='time_proj')(
        time_features, explain)
    h = h + t[:, None, None, :].astype(h.dtype)
    h = conv(3, 'conv_2')(_Norm(self.norm, self.num_groups, self.dtype, name='norm_2')(h, explain), explain)
    if x.shape[-1] != self.out_channels:
      x = conv(1, 'skip')(x, explain)
    return h + x


class BcosAttentionBlock(BcosLayers):
  """Residual self-attention over positions and/or cross-attention to the tokens."""
  self_attention: bool = True
  cross_attention: bool = True
  num_heads: int = 4
  null_slot: bool = True  # cross-attention may attend to nothing

  @nn.compact
  def __call__(self, x, tokens, token_mask, explain: bool = False):
    bsz, h, w, c = x.shape
    attn = lambda name, null=False: BcosAttention(c, self.num_heads, null, self.b, self.max_out,
                                                  dtype=self.dtype, name=name)
    if self.self_attention:
      y = _Norm(self.norm, self.num_groups, self.dtype, name='self_norm')(x, explain)
      x = x + attn('self_attention')(y.reshape(bsz, h * w, c), explain=explain).reshape(x.shape)
    if self.cross_attention and tokens is not None and tokens.shape[1] > 0:
      y = _Norm(self.norm, self.num_groups, self.dtype, name='cross_norm')(x, explain)
      y = attn('cross_attention', self.null_slot)(y.reshape(bsz, h * w, c), tokens, token_mask,
                                                  explain=explain)
      x = x + y.reshape(x.shape)
    return x


class BcosUNet(UNetPath, BcosLayers):
  """output = W(x) x over (colour-encoded image, time vector, tokens); NHWC. Fields: `UNetPath`, `BcosLayers`."""

  @nn.compact
  def __call__(self, image: Array, time: Array, tokens: Optional[Array] = None,
               token_mask: Optional[Array] = None, explain: bool = False) -> Array:
    kw = dict(b=self.b, max_out=self.max_out, dtype=self.dtype)
    blk = dict(norm=self.norm, num_groups=self.num_groups, **kw)
    width = 4 * self.base_channels
    t = BcosDense(width, name='time_dense_0', **kw)(time, explain)
    t = BcosDense(width, name='time_dense_1', **kw)(t, explain)
    if tokens is not None and token_mask is None:
      token_mask = jnp.ones(tokens.shape[:2], bool)

    def upsample(name, h):
      bsz, hh, ww, c = h.shape
      h = jnp.broadcast_to(h[:, :, None, :, None, :], (bsz, hh, 2, ww, 2, c)).reshape(bsz, 2 * hh, 2 * ww, c)
      return BcosConv(c, 3, 1, 1, name=name, **kw)(h, explain)

    blocks = PathBlocks(
        res=lambda name, channels, h: BcosResBlock(channels, name=name, **blk)(h, t, explain),
        attention=lambda name, sa, ca, h: BcosAttentionBlock(sa, ca, self.num_heads, self.null_slot, name=name,
                                                             **blk)(h, tokens, token_mask, explain),
        downsample=lambda name, h: BcosConv(h.shape[-1], 3, 2, 1, name=name, **kw)(h, explain),
        upsample=upsample)
    h = BcosConv(self.base_channels, 3, 1, 1, name='first', **kw)(image, explain)
    h = unet_path(self, h, blocks)
    h = _Norm(self.norm, self.num_groups, self.dtype, name='final_norm')(h, explain)
    h = BcosConv(self.out_channels, 3, 1, 1, name='final_conv', **kw)(h, explain)
    gain = self.param('output_gain', nn.initializers.ones, (self.out_channels,))
    return (h.astype(jnp.float32) * gain)


class BcosDiffusion(nn.Module):
  """Conditioner + B-cos U-Net.

  `cond` (a dict) holds, per `conditioning`:
    'text':       'token_ids' int32 (B, L), 0 = padding;
    'external':   'text_embedding' (B, L, external_dim) and optionally 'text_mask' (B, L);
    'prototypes': 's' (B, P) prototype activations, or 'x0' (B, H, W, C) to compute them;
    'none':       nothing.
  Methods: `inputs(x_t, t, cond)` -> ExplainedInputs; `network(image, time, tokens,
  token_mask, abar, explain)` -> output (eps or x0); `__call__(x_t, t, cond, explain)` = both.
  """
  image_channels: int
  conditioning: str = 'text'
  vocab_size: int = 0
  token_dim: int = 64
  max_tokens: int = 16
  token_positions: bool = False
  time_dim: int = 64
  prediction: str = 'eps'  # what the output is: 'eps' or 'x0'
  precondition: bool = True  # output = c_skip(ᾱ) x_t + c_out(ᾱ) U-Net (see `preconditioning`)
  sigma_data: float = 0.5
  abar_table: tuple = ()  # ᾱ_t for t = 0..T-1 (the diffusion schedule)
  unet: dict = None  # BcosUNet fields except out_channels and dtype
  # The baseline: the same model with the standard biased U-Net of models/vanilla_unet.py (not W(x) x,
  # so it cannot be explained); it sees x_t = decode_colors(image).
  vanilla: bool = False
  prototypes: dict = None  # PrototypeNetwork fields (conditioning='prototypes')
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.vanilla:
      fields = {k: v for k, v in (self.unet or {}).items() if k not in ('b', 'max_out', 'norm')}
      self.denoiser = VanillaUNet(self.image_channels, dtype=self.dtype, **fields)
    else:
      self.denoiser = BcosUNet(self.image_channels, dtype=self.dtype, **(self.unet or {}))
    if self.conditioning == 'text':
      if self.vocab_size < 2:
        raise ValueError(f'BcosDiffusion: text conditioning needs a vocabulary, got vocab_size={self.vocab_size}')
      self.token_embedding = nn.Embed(self.vocab_size, self.token_dim,
                                      embedding_init=nn.initializers.normal(1.0))
      if self.token_positions:
        self.position_embedding = self.param('position_embedding', nn.initializers.normal(0.1),
                                             (self.max_tokens, self.token_dim))
    elif self.conditioning == 'prototypes':
      self.prototype_network = PrototypeNetwork(**self.prototypes)
      self.prototype_embedding = self.param('prototype_embedding', nn.initializers.normal(1.0),
                                            (self.prototypes['num_prototypes'], self.token_dim))

  def tokens(self, cond: dict, batch: int) -> tuple[Array, Array]:
    """(tokens (B, L, D), mask (B, L)) of the conditioning."""
    if self.conditioning == 'text':
      ids = cond['token_ids']
      mask = ids != 0
      tok = self.token_embedding(ids)
      if self.token_positions:
        tok = tok + self.position_embedding[None, :ids.shape[1]]
      return tok * mask[..., None], mask
    if self.conditioning == 'external':
      emb = cond['text_embedding'].astype(jnp.float32)
      mask = cond.get('text_mask')
      mask = jnp.ones(emb.shape[:2], bool) if mask is None else mask.astype(bool)
      return emb * mask[..., None], mask
    if self.conditioning == 'prototypes':
      s = cond['s'] if 's' in cond else self.prototype_network(cond['x0']).activations
      return s[..., None] * self.prototype_embedding[None], jnp.ones(s.shape, bool)
    return jnp.zeros((batch, 0, self.token_dim)), jnp.zeros((batch, 0), bool)

  def prototype_activations(self, images: Array) -> Array:
    return self.prototype_network(images).activations

  def inputs(self, x_t: Array, t: Array, cond: dict) -> ExplainedInputs:
    tokens, mask = self.tokens(cond, x_t.shape[0])
    if self.abar_table:
      abar = jnp.asarray(np.asarray(self.abar_table, np.float32))[t.astype(jnp.int32)]
    else:
      abar = jnp.ones(t.shape, jnp.float32)
    return ExplainedInputs(encode_colors(x_t.astype(jnp.float32)),
                           timestep_features(t, self.time_dim), tokens, mask, abar)

  def network(self, image: Array, time: Array, tokens: Array, token_mask: Array,
              abar: Optional[Array] = None, explain: bool = False) -> Array:
    if self.vanilla:
      if explain:
        raise ValueError('BcosDiffusion: the vanilla U-Net (bcos.vanilla=True) is not W(x) x and has no '
                         'explanation mode')
      out = self.denoiser(decode_colors(image), time, tokens, token_mask)
    else:
      out = self.denoiser(image, time, tokens, token_mask, explain)
    if not self.precondition:
      return out
    if abar is None:
      raise ValueError('BcosDiffusion.network: a preconditioned model needs abar')
    c_skip, c_out = preconditioning(abar, self.prediction, self.sigma_data)
    bcast = lambda c: c[:, None, None, None]
    return bcast(c_skip) * decode_colors(image) + bcast(c_out) * out

  def __call__(self, x_t: Array, t: Array, cond: dict, explain: bool = False) -> Array:
    return self.network(*self.inputs(x_t, t, cond), explain=explain)


def bcos_model_from_config(config, vocab_size: int = 0, dtype: Optional[str] = None) -> BcosDiffusion:
  """The model `config.bcos` describes (image channels from config.data)."""
  bc, m = config.bcos, config.model
  compute = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype or config.train.dtype]
  unet = dict(base_channels=bc.base_channels, channel_mults=tuple(bc.channel_mults),
              num_res_blocks=bc.num_res_blocks, self_attention=tuple(bool(a) for a in bc.self_attention),
              cross_attention=tuple(bool(a) for a in bc.cross_attention), num_heads=bc.num_heads,
              null_slot=bc.attention_null_slot,
              b=float(bc.b), max_out=bc.max_out, norm=bc.norm, num_groups=bc.num_groups)
  prototypes = None
  if bc.conditioning == 'prototypes':
    prototypes = dict(num_prototypes=m.num_prototypes, channels=tuple(m.encoder_channels),
                      kernels=tuple(m.encoder_kernels), strides=tuple(m.encoder_strides),
                      paddings=tuple(m.encoder_paddings), activation=m.activation)
  schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
  return BcosDiffusion(image_channels=config.data.channels, conditioning=bc.conditioning,
                       vocab_size=vocab_size, token_dim=bc.token_dim, max_tokens=bc.max_tokens,
                       token_positions=bc.token_positions, time_dim=bc.time_dim,
                       prediction=config.diffusion.prediction, precondition=bc.precondition,
                       sigma_data=float(bc.sigma_data),
                       abar_table=tuple(float(a) for a in np.asarray(schedule.alphas_cumprod)),
                       unet=unet, vanilla=bool(bc.vanilla), prototypes=prototypes, dtype=compute)
