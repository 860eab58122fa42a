"""Exact explanations of B-cos diffusion generations: contributions, relevance, completeness.

In explanation mode the B-cos U-Net is y = W(x) x over its inputs x = (colour-encoded image,
time vector, tokens) (models/bcos_unet.py). One `jax.linearize` at x gives both directions of
the linear map W(x) with the dynamic factors frozen:

  * the contributions to a scalar summary vᵀy (v = all ones: the sum of the output over
    h, w, c, as in the poster) are x ⊙ (vᵀW(x)), one transposed (vjp) pass; per token i:
    C_i = Σ_d (vᵀW(x))_{i,d} x_{i,d}, per pixel and encoded channel likewise;
  * completeness: W(x) x (one jvp pass with the input itself as tangent) must reproduce y
    element by element; `completeness_error` = ||W(x)x - y|| / ||y|| and `sum_error` =
    |Σ_i C_i - vᵀy| / Σ|v ⊙ y| (both 0 up to float rounding when the network is truly W(x)x).

The explained output is x̂0 (the model's prediction of the clean image at that step; for an
eps-model x̂0 = (x_t - sqrt(1 - ᾱ) ε̂) / sqrt(ᾱ) with x_t = image[:C] - image[C:], linear in the
encoded image, so it is W'(x) x over the same inputs) or the raw network output.

The whole generation (`explain_whole_generation`): with deterministic DDIM the final image x_0
is itself W_chain x over (x_T, the colour encoding's constant, the time vectors, the tokens),
every step's factors frozen; one linearisation of the sampling loop explains it exactly
(optionally with every token's contribution map over the pixels of x_0).

Token relevance (poster): S_i = |C_i| / Σ_j |C_j| over the valid tokens of the prompt.
Contribution maps (B-cos convention): R = max(W / max_c |W|, 0) per pixel; colour =
R_rgb / (R_rgb + R_(1-rgb)); opacity = ||W|| over channels where the pixel's contribution is
positive, scaled to its 99.5th percentile.

`explain_workdir(config, workdir, params, variables)` generates from prompts, explains the
chosen sampling steps (and, with `bcos.explain_whole`, the whole generation: the 'generation'
entries) and writes `workdir/explain/` (report.json, one PNG + JSON per prompt, samples.png).
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from patronus_jax.core import diffusion
from patronus_jax.core import files as pio
from patronus_jax.data import get_info, load_arrays
from patronus_jax.data.captions import captions_for
from patronus_jax.evaluate import classifier as clf
from patronus_jax.models.bcos_unet import ExplainedInputs, decode_colors, encode_colors
from patronus_jax.tasks.bcos import tokenizer as text_lib
from patronus_jax.tasks.bcos.config import parse_steps
from patronus_jax.tasks.bcos.task import BcosTask

Array = jax.Array


class Explanation(NamedTuple):
  """Explanation of one network evaluation (batch B), for the summary vᵀy."""
  output: Array  # (B, H, W, C) the explained output y
  image: Array  # (B, H, W, 2C) the colour-encoded input
  image_weights: Array  # (B, H, W, 2C) vᵀW(x) restricted to the image
  image_contributions: Array  # (B, H, W, 2C) image * image_weights
  time_contribution: Array  # (B,)
  token_weights: Array  # (B, L, D) vᵀW(x) restricted to the tokens
  token_contributions: Array  # (B, L) C_i
  token_mask: Array  # (B, L)
  total: Array  # (B,) vᵀy
  completeness_error: Array  # (B,) ||W(x)x - y|| / ||y||
  sum_error: Array  # (B,) |Σ C - vᵀy| / Σ|v ⊙ y|


def explained_function(task, params, variables: dict, token_mask: Array, abar: Array,
                       target: str = 'x0'):
  """f(image, time, tokens) -> y in explanation mode (the map that is W(x) x).

  `token_mask` and `abar` (ᾱ_t per example) are held fixed: they are not explained inputs.
  """
  if target not in ('x0', 'output'):
    raise ValueError(f"unknown explanation target {target!r}; expected 'x0' or 'output'")
  abar4 = abar[:, None, None, None]

  def f(image, time, tokens):
    out = task.model.apply({'params': params, **variables}, image, time, tokens, token_mask, abar,
                           explain=True, method='network')
    if target == 'output' or task.prediction == 'x0':
      return out
    return (decode_colors(image) - jnp.sqrt(1.0 - abar4) * out) / jnp.sqrt(abar4)

  return f


def explain_inputs(task, params, variables: dict, inputs: ExplainedInputs, t: Array,
                   target: str = 'x0', cotangent: Optional[Array] = None) -> Explanation:
  """Explains the network at given inputs (one linearisation: a jvp and its transpose)."""
  del t  # ᾱ_t is in the inputs
  f = explained_function(task, params, variables, inputs.token_mask, inputs.abar, target)
  primals = (inputs.image, inputs.time, inputs.tokens)
  y, f_jvp = jax.linearize(f, *primals)
  v = jnp.ones_like(y) if cotangent is None else cotangent.astype(y.dtype)
  g_image, g_time, g_tokens = jax.linear_transpose(f_jvp, *primals)(v)
  image_c = inputs.image * g_image
  time_c = jnp.sum(inputs.time * g_time, axis=-1)
  token_c = jnp.sum(inputs.tokens * g_tokens, axis=-1) * inputs.token_mask
  total = jnp.sum(v * y, axis=_batch_axes(y))
  summed = jnp.sum(image_c, axis=_batch_axes(image_c)) + time_c + jnp.sum(token_c, -1)
  completeness, sum_error = _exactness(y, f_jvp(*primals), summed, total, v * y)
  return Explanation(y, inputs.image, g_image, image_c, time_c, g_tokens, token_c, inputs.token_mask,
                     total, completeness, sum_error)


def _batch_axes(x: Array) -> tuple[int, ...]:
  """Every axis but the leading (batch) one."""
  return tuple(range(1, x.ndim))


def _exactness(y: Array, reconstruction: Array, summed: Array, total: Array,
               weighted: Array) -> tuple[Array, Array]:
  """(completeness_error, sum_error) per example: ||W(x)x - y|| / ||y|| and
  |Σ contributions - vᵀy| / Σ|v ⊙ y| (`weighted` = v ⊙ y)."""
  axes = _batch_axes(y)
  tiny = jnp.finfo(jnp.float32).tiny
  completeness = (jnp.sqrt(jnp.sum(jnp.square(reconstruction - y), axis=axes))
                  / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(y), axis=axes)), tiny))
  sum_error = jnp.abs(summed - total) / jnp.maximum(jnp.sum(jnp.abs(weighted), axis=axes), tiny)
  return completeness, sum_error


def explain_step(task, params, variables: dict, x_t: Array, t: Array, cond: dict,
                 target: str = 'x0', cotangent: Optional[Array] = None) -> Explanation:
  """Explains the model at (x_t, t) with conditioning `cond` (t: (B,) int32)."""
  inputs = task.model.apply({'params': params, **variables}, x_t, t, cond, method='inputs')
  return explain_inputs(task, params, variables, inputs, t, target, cotangent)


@functools.lru_cache(maxsize=16)
def explain_step_fn(task, target: str = 'x0'):
  """`explain_step` jitted: (params, variables, x_t, t, cond) -> Explanation (cached per task)."""
  return jax.jit(lambda p, v, x_t, t, cond: explain_step(task, p, v, x_t, t, cond, target))


def token_relevance(token_contributions: Array, token_mask: Array) -> Array:
  """S_i = |C_i| / Σ_j |C_j| over valid tokens; 0 at padding. Sums to 1 per example."""
  a = jnp.abs(token_contributions) * token_mask
  return a / jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)


def input_shares(e: Explanation) -> dict[str, Array]:
  """|C_group| / Σ_groups |C_group| for the image, the time vector and all tokens together."""
  return _shares({'image': jnp.sum(e.image_contributions, axis=_batch_axes(e.image)),
                  'time': e.time_contribution, 'tokens': jnp.sum(e.token_contributions, axis=-1)})


def _shares(groups: dict[str, Array]) -> dict[str, Array]:
  """|C_group| / Σ_groups |C_group| of per-example group contributions."""
  denom = jnp.maximum(sum(jnp.abs(g) for g in groups.values()), jnp.finfo(jnp.float32).tiny)
  return {k: jnp.abs(g) / denom for k, g in groups.items()}


# ----------------------------------------------------------------------------- rendering

def contribution_map(image_weights: np.ndarray, image: np.ndarray,
                     alpha_percentile: float = 99.5) -> np.ndarray:
  """(H, W, 2C) weights and encoded input -> (H, W, C + 1) colour R_rgb/(R_rgb+R_(1-rgb)) and alpha."""
  w = np.asarray(image_weights, np.float64)
  c = w.shape[-1] // 2
  r = np.maximum(w / (np.abs(w).max(axis=-1, keepdims=True) + 1e-12), 0.0)
  colour = r[..., :c] / (r[..., :c] + r[..., c:] + 1e-12)
  contrib = np.sum(w * np.asarray(image, np.float64), axis=-1)
  alpha = np.where(contrib < 0, 0.0, np.linalg.norm(w, axis=-1))
  scale = np.percentile(alpha, alpha_percentile)
  alpha = np.clip(alpha / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(alpha)
  return np.concatenate([colour, alpha[..., None]], axis=-1).astype(np.float32)


def render_contribution_map(image_weights: np.ndarray, image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3): the contribution map composited on black."""
  m = contribution_map(image_weights, image)
  rgb = m[..., :-1] * m[..., -1:]
  if rgb.shape[-1] == 1:
    rgb = np.repeat(rgb, 3, axis=-1)
  return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def render_signed_map(contributions: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3): Σ_c contributions per pixel, red positive, blue negative, white zero."""
  c = np.sum(np.asarray(contributions, np.float64), axis=-1)
  c = c / (np.abs(c).max() + 1e-12)
  pos, neg = np.clip(c, 0, 1), np.clip(-c, 0, 1)
  rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
  return np.clip(np.round(np.clip(rgb, 0, 1) * 255), 0, 255).astype(np.uint8)


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
  k = max(1, size // img.shape[0])
  img = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
  return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def render_report(image: np.ndarray, maps: Sequence[np.ndarray], map_titles: Sequence[str],
                  words: Sequence[str], relevance: Sequence[float], title: str,
                  followed: Optional[Sequence[Optional[bool]]] = None, size: int = 112,
                  signed_maps: Sequence[np.ndarray] = ()) -> np.ndarray:
  """One prompt's PNG: the generation, contribution maps (and a row of signed maps under
  them), and a relevance bar per word ('+' / 'x' after a word: the image shows / misses it)."""
  font = ImageFont.load_default()
  tiles = [_upscale(pio.to_uint8(image), size)] + [_upscale(m, size) for m in maps]
  titles = ['generated'] + list(map_titles)
  pad, line = 8, 14
  rows = 2 if signed_maps else 1
  width = max(pad + len(tiles) * (size + pad), 460)
  bar_w = width - 180
  top_h = pad + line * 2 + rows * (size + line + pad)
  height = top_h + line * (len(words) + 1) + pad
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  draw.text((pad, pad), title[:120], fill='black', font=font)
  y0 = pad + 2 * line
  for i, (tile, name) in enumerate(zip(tiles, titles)):
    x0 = pad + i * (size + pad)
    canvas.paste(Image.fromarray(tile), (x0, y0))
    draw.text((x0, y0 + size + 2), name, fill='black', font=font)
  if signed_maps:
    y1 = y0 + size + line + pad
    draw.text((pad, y1 + size // 2), 'signed sum\nover channels\n(red +, blue -)', fill='black', font=font)
    for i, m in enumerate(signed_maps):
      canvas.paste(Image.fromarray(_upscale(m, size)), (pad + (i + 1) * (size + pad), y1))
  y = top_h
  draw.text((pad, y), 'word      relevance S_i (mean over explained steps)', fill='black', font=font)
  top = max(max(relevance, default=0.0), 1e-12)
  for i, (word, rel) in enumerate(zip(words, relevance)):
    y += line
    mark = ''
    if followed is not None and followed[i] is not None:
      mark = ' +' if followed[i] else ' x'
    draw.text((pad, y), f'{word}{mark}', fill='black', font=font)
    draw.rectangle((110, y + 2, 110 + int(bar_w * rel / top), y + line - 3), fill=(70, 110, 200))
    draw.text((110 + int(bar_w * rel / top) + 4, y), f'{100 * rel:.1f}%', fill='black', font=font)
  return np.asarray(canvas)


# ----------------------------------------------------------------------------- generations

def explain_generation(task, params, variables: dict, cond: dict, x_T: Array, *,
                       num_steps: int = 0, steps: Any = 'all', target: str = 'x0') -> dict:
  """Generates with deterministic DDIM and explains the chosen sampling steps.

  `steps`: 'all', 'last', a comma-separated string or a list of step indices (0 = the
  noisiest step, num_steps - 1 = the last). Returns numpy arrays:
    samples (B, H, W, C); steps (S,); timesteps (S,);
    token_relevance (S, B, L); token_contributions (S, B, L); token_mask (B, L);
    shares {image, time, tokens} (S, B); completeness_error, sum_error (S, B);
    image_weights, image_inputs, image_contributions (S, B, H, W, 2C); x0_hat (S, B, H, W, C).
  """
  num_steps = num_steps or task.config.diffusion.sample_steps
  idx = parse_steps(steps, num_steps) if isinstance(steps, str) else sorted(
      {int(s) % num_steps for s in steps})
  samples, xs, ts = _sample_with_trajectory(task, params, variables, cond, x_T, num_steps)
  idx_arr = jnp.asarray(idx, jnp.int32)
  out = _explain_steps(task, params, variables, cond, xs[idx_arr], ts[idx_arr], target)
  out = jax.device_get(out)
  out.update(samples=np.asarray(samples), steps=np.asarray(idx), timesteps=np.asarray(ts)[idx])
  return out


def _sample_with_trajectory(task, params, variables, cond, x_T, num_steps):
  return _jit_sample(task, num_steps)(params, variables, cond, x_T)


@functools.lru_cache(maxsize=8)
def _jit_sample(task, num_steps):
  return jax.jit(lambda p, v, c, x: task.sample(p, v, c, x, num_steps, trajectory=True))


def _explain_steps(task, params, variables, cond, xs, ts, target):
  return _jit_explain(task, target)(params, variables, cond, xs, ts)


@functools.lru_cache(maxsize=8)
def _jit_explain(task, target):

  def one(params, variables, cond, x_t, t):
    tvec = jnp.full((x_t.shape[0],), t, jnp.int32)
    e = explain_step(task, params, variables, x_t, tvec, cond, target)
    return dict(token_relevance=token_relevance(e.token_contributions, e.token_mask),
                token_contributions=e.token_contributions, token_mask=e.token_mask,
                shares=input_shares(e), completeness_error=e.completeness_error,
                sum_error=e.sum_error, image_weights=e.image_weights, image_inputs=e.image,
                image_contributions=e.image_contributions, x0_hat=e.output, total=e.total)

  def run(params, variables, cond, xs, ts):
    res = jax.lax.map(lambda a: one(params, variables, cond, a[0], a[1]), (xs, ts))
    res['token_mask'] = res['token_mask'][0]
    return res

  return jax.jit(run)


def explain_whole_generation(task, params, variables: dict, cond: dict, x_T: Array, *,
                             num_steps: int = 0, token_maps: bool = False) -> dict:
  """Explains the final image of a deterministic DDIM generation as one W x.

  With eta = 0 every DDIM step is linear in (x_t, ε̂) and, in explanation mode, ε̂ is W(x) x over
  the step's inputs; the colour encoding [(x + 1)/2, (1 - x)/2] is linear in (x, 1). So the
  whole chain x_T -> x_0 is linear in (x_T, the encoding's constant 1, a scale of the time
  vectors, the tokens) with every step's dynamic factors frozen at the generation's values:
  x_0 = W_chain (x_T, 1, 1, tokens), and a token's contribution sums what it adds at every step
  and everything that carries it forward (the poster's summary of the complete diffusion
  process). Each step is rematerialised in the linearisation (memory: the trajectory, not every
  step's activations).

  Returns numpy arrays: samples (B, H, W, C); noise_contributions (B, H, W, C) of x_T;
  constant_contribution, time_contribution (B,); token_contributions, token_relevance (B, L);
  token_mask (B, L); shares {noise, constant, time, tokens} (B,); total (B,) = Σ x_0;
  completeness_error (B,) = ||W x - x_0|| / ||x_0||; sum_error (B,).
  With `token_maps`, also token_maps (B, L, H, W, C): each token's contribution to every pixel
  and channel of x_0 (one more jvp per token slot; Σ over h, w, c gives token_contributions).
  """
  num_steps = num_steps or task.config.diffusion.sample_steps
  return jax.device_get(_jit_whole(task, num_steps, token_maps)(params, variables, cond, x_T))


@functools.lru_cache(maxsize=8)
def _jit_whole(task, num_steps, token_maps=False):

  def run(params, variables, cond, x_T):
    apply = lambda *a, **k: task.model.apply({'params': params, **variables}, *a, **k)
    b = x_T.shape[0]
    first = apply(x_T, jnp.zeros((b,), jnp.int32), cond, method='inputs')
    chain = _linear_chain(task, apply, cond, first.token_mask, num_steps)
    primals = (x_T.astype(jnp.float32), jnp.ones((b,)), jnp.ones((b,)), first.tokens)
    y, f_jvp = jax.linearize(chain, *primals)
    out = _chain_contributions(y, f_jvp, primals, first.token_mask)
    if token_maps:
      out['token_maps'] = _chain_token_maps(f_jvp, primals)
    return out

  return jax.jit(run)


def _linear_chain(task, apply, cond: dict, mask: Array, num_steps: int):
  """(x_T, one, tau, tokens) -> x_0: the deterministic DDIM chain in explanation mode, linear in
  x_T, the colour encoding's constant `one` (B,), a scale `tau` (B,) of the time vectors and the
  tokens; each step is rematerialised in the linearisation."""

  def chain(x_T, one, tau, tokens):
    @jax.checkpoint
    def denoise(x_t, t):
      inp = apply(x_t, t, cond, method='inputs')
      image = encode_colors(x_t.astype(jnp.float32), one[:, None, None, None])
      return apply(image, tau[:, None] * inp.time, tokens, mask, inp.abar, explain=True,
                   method='network')
    return diffusion.ddim_sample(denoise, task.schedule, x_T, num_steps=num_steps, eta=0.0,
                                 prediction=task.prediction)

  return chain


def _chain_contributions(y: Array, f_jvp, primals: tuple, mask: Array) -> dict:
  """Contributions of (x_T, one, tau, tokens) to Σ x_0 (one transposed pass), their shares and
  the exactness of W x = x_0 (the arrays of `explain_whole_generation` but the token maps)."""
  g_x, g_one, g_tau, g_tok = jax.linear_transpose(f_jvp, *primals)(jnp.ones_like(y))
  noise_c = primals[0] * g_x
  const_c, time_c = primals[1] * g_one, primals[2] * g_tau
  token_c = jnp.sum(primals[3] * g_tok, axis=-1) * mask
  groups = dict(noise=jnp.sum(noise_c, axis=_batch_axes(y)), constant=const_c, time=time_c,
                tokens=jnp.sum(token_c, axis=-1))
  total = jnp.sum(y, axis=_batch_axes(y))
  completeness, sum_error = _exactness(y, f_jvp(*primals), sum(groups.values()), total, y)
  return dict(
      samples=y, noise_contributions=noise_c, constant_contribution=const_c,
      time_contribution=time_c, token_contributions=token_c,
      token_relevance=token_relevance(token_c, mask), token_mask=mask, shares=_shares(groups),
      total=total, completeness_error=completeness, sum_error=sum_error)


def _chain_token_maps(f_jvp, primals: tuple) -> Array:
  """(B, L, H, W, C): each token slot's contribution to every pixel and channel of x_0 (one jvp
  per slot, every other input zero)."""
  zeros = [jnp.zeros_like(p) for p in primals[:3]]
  slots = jnp.arange(primals[3].shape[1])
  one_token = lambda i: f_jvp(*zeros, primals[3] * (slots == i)[None, :, None])
  return jnp.moveaxis(jax.lax.map(one_token, slots), 0, 1)


# ----------------------------------------------------------------------------- reports

def followed_words(prompt: str, predicted: dict[str, int], attribute_names: Sequence[str],
                   attribute_values: Sequence[Sequence[str]]) -> dict[str, Optional[bool]]:
  """For each attribute whose value the prompt names: word -> whether the image shows it.

  `predicted`: attribute name -> predicted value index (e.g. from the attribute classifier).
  """
  words = text_lib.words(prompt)
  joined = ' ' + ' '.join(words) + ' '
  out: dict[str, Optional[bool]] = {}
  for name, values in zip(attribute_names, attribute_values):
    named = [i for i, v in enumerate(values) if ' ' + ' '.join(text_lib.words(v)) + ' ' in joined]
    if len(named) != 1 or name not in predicted:
      continue
    ok = int(predicted[name]) == named[0]
    for w in text_lib.words(values[named[0]]):
      out[w] = ok
  return out


def prompt_report(words: Sequence[str], relevance: np.ndarray, shares: dict,
                  completeness: np.ndarray, sum_error: np.ndarray, steps: np.ndarray,
                  timesteps: np.ndarray) -> dict:
  """JSON-ready report of one prompt. relevance: (S, L) over its valid tokens."""
  mean_rel = relevance.mean(axis=0)
  return dict(
      tokens=list(words), **_word_relevance(words, mean_rel),
      relevance_per_step=relevance.tolist(), steps=steps.tolist(), timesteps=timesteps.tolist(),
      input_shares={k: float(np.mean(v)) for k, v in shares.items()},
      completeness_error=float(np.max(completeness)), sum_error=float(np.max(sum_error)))


def _word_relevance(words: Sequence[str], relevance: np.ndarray) -> dict:
  """relevance per token, summed per word, and the mean over content / function words."""
  by_word: dict[str, float] = {}
  for w, r in zip(words, relevance):
    by_word[w] = by_word.get(w, 0.0) + float(r)
  # <s> (text.START) is neither: it is reported in `relevance` and `relevance_by_word` only.
  content = [float(r) for w, r in zip(words, relevance)
             if w not in text_lib.FUNCTION_WORDS and w != text_lib.START]
  function = [float(r) for w, r in zip(words, relevance) if w in text_lib.FUNCTION_WORDS]
  return dict(relevance=[float(r) for r in relevance], relevance_by_word=by_word,
              content_word_relevance=float(np.mean(content)) if content else None,
              function_word_relevance=float(np.mean(function)) if function else None)


def _relevance_summary(reports: Sequence[dict]) -> dict:
  """Means over prompts of the content / function word relevance and of every word's."""
  content = [r['content_word_relevance'] for r in reports if r['content_word_relevance'] is not None]
  function = [r['function_word_relevance'] for r in reports if r['function_word_relevance'] is not None]
  by_word: dict[str, list[float]] = {}
  for r in reports:
    for w, v in zip(r['tokens'], r['relevance']):
      by_word.setdefault(w, []).append(v)
  return dict(
      content_word_relevance=float(np.mean(content)) if content else None,
      function_word_relevance=float(np.mean(function)) if function else None,
      mean_relevance_by_word={w: float(np.mean(v)) for w, v in
                              sorted(by_word.items(), key=lambda kv: -np.mean(kv[1]))})


def default_prompts(config, num: int) -> list[str]:
  """`bcos.explain_prompts` (';'-separated) or captions of the eval split."""
  if config.bcos.explain_prompts.strip():
    return [p.strip() for p in config.bcos.explain_prompts.split(';') if p.strip()][:num]
  arrays = load_arrays(config.data, config.data.eval_split, max_examples=num)
  if 'caption' in arrays:
    return [c.decode() if isinstance(c, bytes) else str(c) for c in arrays['caption']]
  info = get_info(config.data)
  return captions_for(config.data.name, arrays['attributes'], info.attribute_names,
                      getattr(info, 'attribute_values', None))


def prompt_noise(config, num: int, seed: int) -> Array:
  """x_T of the generations `explain_prompts` explains (one per prompt, from `seed`)."""
  size, channels = config.data.image_size, config.data.channels
  return jax.random.normal(jax.random.PRNGKey(seed), (num, size, size, channels))


def explain_prompts(task, params, variables: dict, prompts: Sequence[str], *, seed: int = 0,
                    num_steps: int = 0, steps: Any = 'all', target: str = 'x0',
                    classifier=None, attribute_names=None, attribute_values=None,
                    num_maps: int = 4, whole: bool = False,
                    token_maps: bool = False) -> tuple[dict, list[np.ndarray], dict]:
  """Generates one image per prompt, explains it and builds the reports.

  `whole`: also explain each final image as a whole (`explain_whole_generation`, its arrays in
  raw['generation'], with `token_maps` also the per-token maps); every prompt report and the
  summary then get a 'generation' entry with its relevance and completeness.
  Returns (report, per-prompt PNG arrays, raw explanation arrays).
  """
  if task.conditioning != 'text':
    raise ValueError("explain_prompts needs bcos.conditioning='text'")
  ids = task.encode_prompts(prompts)
  x_T = prompt_noise(task.config, len(prompts), seed)
  raw = explain_generation(task, params, variables, {'token_ids': jnp.asarray(ids)}, x_T,
                           num_steps=num_steps, steps=steps, target=target)
  predicted = None
  if classifier is not None:
    probs = clf.predict(classifier, raw['samples'])
    predicted = {k: np.argmax(v, axis=-1) for k, v in probs.items()}
  n_steps = len(raw['steps'])
  shown = sorted({int(round(i)) for i in np.linspace(0, n_steps - 1, min(num_maps, n_steps))})
  reports, pngs = [], []
  for b, prompt in enumerate(prompts):
    words = task.tokenizer.tokens(ids[b][np.asarray(raw['token_mask'][b], bool)])
    rep, followed = _one_prompt_report(prompt, words, raw, b, predicted, attribute_names,
                                       attribute_values)
    pngs.append(_one_prompt_png(prompt, words, rep, followed, raw, b, shown))
    reports.append(rep)
  summary = dict(
      num_prompts=len(prompts), target=target, num_sampling_steps=int(num_steps or task.config.diffusion.sample_steps),
      explained_steps=raw['steps'].tolist(),
      completeness_error=float(np.max(raw['completeness_error'])),
      sum_error=float(np.max(raw['sum_error'])),
      **_relevance_summary(reports),
      input_shares={k: float(np.mean(v)) for k, v in raw['shares'].items()},
  )
  if whole:
    summary['generation'] = _explain_prompts_whole(task, params, variables, ids, x_T, num_steps,
                                                   reports, raw, token_maps)
  return dict(summary=summary, prompts=reports), pngs, raw


def _one_prompt_report(prompt: str, words: Sequence[str], raw: dict, b: int,
                       predicted: Optional[dict], attribute_names, attribute_values):
  """(report of prompt `b` of `explain_generation`'s arrays, per-word followed marks or None);
  with the classifier's `predicted` attributes, the report says which words the image follows."""
  valid = np.asarray(raw['token_mask'][b], bool)
  rep = prompt_report(words, raw['token_relevance'][:, b][:, valid],
                      {k: v[:, b] for k, v in raw['shares'].items()},
                      raw['completeness_error'][:, b], raw['sum_error'][:, b], raw['steps'],
                      raw['timesteps'])
  rep = dict(prompt=prompt, **rep)
  if predicted is None or attribute_names is None or attribute_values is None:
    return rep, None
  pred = {k: int(v[b]) for k, v in predicted.items()}
  fw = followed_words(prompt, pred, attribute_names, attribute_values)
  rep['followed_words'] = fw
  rep['predicted_attributes'] = {k: attribute_values[list(attribute_names).index(k)][v]
                                 for k, v in pred.items() if k in attribute_names}
  return rep, [fw.get(w) for w in words]


def _one_prompt_png(prompt: str, words: Sequence[str], rep: dict, followed, raw: dict, b: int,
                    shown: Sequence[int]) -> np.ndarray:
  """The PNG of prompt `b`: its generation, contribution and signed maps of the `shown` steps."""
  maps = [render_contribution_map(raw['image_weights'][i, b], raw['image_inputs'][i, b])
          for i in shown]
  titles = [f'step {int(raw["steps"][i])} t={int(raw["timesteps"][i])}' for i in shown]
  signed = [render_signed_map(raw['image_contributions'][i, b]) for i in shown]
  return render_report(raw['samples'][b], maps, titles, words, rep['relevance'],
                       f'"{prompt}"  completeness error {rep["completeness_error"]:.1e}',
                       followed, signed_maps=signed)


def _explain_prompts_whole(task, params, variables, ids, x_T, num_steps, reports, raw,
                           token_maps) -> dict:
  """Adds the whole-generation explanation to every prompt report; returns its summary."""
  w = explain_whole_generation(task, params, variables, {'token_ids': jnp.asarray(ids)}, x_T,
                               num_steps=num_steps, token_maps=token_maps)
  raw['generation'] = w
  per_prompt = []
  for b, rep in enumerate(reports):
    valid = np.asarray(w['token_mask'][b], bool)
    g = dict(tokens=rep['tokens'], **_word_relevance(rep['tokens'], w['token_relevance'][b][valid]),
             input_shares={k: float(v[b]) for k, v in w['shares'].items()},
             completeness_error=float(w['completeness_error'][b]),
             sum_error=float(w['sum_error'][b]))
    rep['generation'] = {k: v for k, v in g.items() if k != 'tokens'}
    per_prompt.append(g)
  return dict(completeness_error=float(np.max(w['completeness_error'])),
              sum_error=float(np.max(w['sum_error'])), **_relevance_summary(per_prompt),
              input_shares={k: float(np.mean(v)) for k, v in w['shares'].items()})


def explain_workdir(config, workdir: str, params, variables: dict, classifier=None,
                    task=None) -> dict:
  """Explains generations for the configured prompts; writes workdir/explain/; returns the report.

  Files: report.json (summary + every prompt), prompt_<i>.png and prompt_<i>.json, samples.png.
  `classifier` (optional, patronus_jax.evaluate.classifier.AttributeClassifier) marks which
  prompt words the generated image follows. `task` (optional) reuses a BcosTask of the same
  model (and its compiled functions).
  """
  if task is None:
    task = BcosTask(config)
  bc = config.bcos
  prompts = default_prompts(config, bc.num_explain)
  names = values = None
  if classifier is not None:
    try:
      info = get_info(config.data)
      names, values = info.attribute_names, info.attribute_values
    except Exception:  # pylint: disable=broad-except
      names = values = None
  report, pngs, raw = explain_prompts(
      task, params, variables, prompts, seed=config.seed, num_steps=bc.explain_sample_steps,
      steps=bc.explain_steps, target=bc.explain_target, classifier=classifier,
      attribute_names=names, attribute_values=values, whole=bc.explain_whole)
  errors = [report['summary']['completeness_error']]
  if 'generation' in report['summary']:
    errors.append(report['summary']['generation']['completeness_error'])
  report['summary']['completeness_ok'] = max(errors) <= bc.completeness_tolerance
  out = os.path.join(workdir, 'explain')
  os.makedirs(out, exist_ok=True)
  for i, (rep, png) in enumerate(zip(report['prompts'], pngs)):
    pio.write_json(os.path.join(out, f'prompt_{i}.json'), rep)
    with pio.atomic_path(os.path.join(out, f'prompt_{i}.png')) as tmp:
      Image.fromarray(png).save(tmp, format='PNG')
  with pio.atomic_path(os.path.join(out, 'samples.png')) as tmp:
    Image.fromarray(pio.image_grid(raw['samples'], nrow=8)).save(tmp, format='PNG')
  pio.write_json(os.path.join(out, 'report.json'), report)
  return report
