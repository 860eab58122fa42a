"""Diffusion mathematics: schedules, q_sample, the training loss, DDPM, DDIM, DDIM inversion.

Notation of Ho et al. (2020) and Song et al. (2021); t indexes 0..T-1 as in the official code.

  Schedules:   linear betas (Ho et al.; official: scaled by 1000/T so that any T spans the same
               noise range) or cosine alphas_cumprod (Nichol & Dhariwal 2021, eq. 17).
  q_sample:    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                          (Ho eq. 4)
  loss:        E_{t ~ U{1..T-1}, eps} ||eps - eps_theta(x_t, t)||^2   (Ho eq. 14; the official
               code draws t from 1..T-1), or ||x_0 - x0_theta||^2 for x0-prediction;
               optionally min-SNR-gamma weighted (Hang et al. 2023) and with more weight on
               the pixels of outlines (`edge_weights`; not in the paper).
  DDPM:        x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z
               (Ho eq. 11, sigma_t^2 = beta_t), t = T-1..1, no noise at the last step
               (the official `reverse_diffusion`).
  DDIM:        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
               sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
               (Song eq. 12 and 16), over any strided subsequence of timesteps.
  Inversion:   the deterministic (eta = 0) DDIM map run upwards, x_{t_k} from x_{t_{k-1}} with
               eps_hat evaluated at the current point (Song Sec. 4.3; Dhariwal & Nichol App. F).
  DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; 'dpmpp2m'): the probability-flow ODE in
               lambda = log(alpha / sigma), alpha = sqrt(abar), sigma = sqrt(1 - abar), data-prediction
               form: x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D, h = lambda_s - lambda_t,
               D = (1 + 1/(2r)) x0_hat(t) - 1/(2r) x0_hat(t_prev), r = h_prev / h. With D = x0_hat
               (first order) the step is DDIM's; the first step and the last (to sigma = 0) are first
               order. Second order: the error at N steps falls as 1/N^2 (DDIM: 1/N), so ~15 calls give
               what DDIM needs 50-100 for. Its inversion runs the same multistep rule upwards.
  Low-pass guidance (`low_pass_guided`; Patronus's `diffusion.sketch_consistency`, not in the paper):
               x0_hat's block means set to a low-resolution picture before each step, eps_hat
               re-derived from it; every sampler and inversion above runs the guided denoiser.

Every sampling loop is one `jax.lax.scan`, so a 1000-step loop compiles once. Denoisers are
functions `denoise_fn(x_t, t) -> model output` with t an int32 vector of shape (B,);
`prediction` says whether that output is eps, x0 or v.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
PREDICTIONS = ('eps', 'x0', 'v')  # what the denoiser outputs; 'eps' is the official Patronus/DDPM choice
TrajectoryFn = Callable[[jax.Array, jax.Array, jax.Array], Any]  # (x_t, x0_hat, t) -> pytree


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Ho et al.'s linear schedule; endpoints scaled by 1000/T as in the official code."""
  scale = 1000.0 / timesteps
  return np.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  return np.array([min(1 - f((i + 1) / timesteps) / f(i / timesteps), max_beta)
                   for i in range(timesteps)], dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """Per-timestep constants: float32 NumPy arrays of length T (static, also under jit)."""
  betas: np.ndarray
  alphas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray

  @property
  def timesteps(self) -> int:
    return self.betas.shape[0]

  def abar(self, t: jax.Array) -> jax.Array:
    """alphas_cumprod[t] for (traced) integer timesteps."""
    return jnp.asarray(self.alphas_cumprod)[t]


def make_schedule(name: str = 'linear', timesteps: int = 1000) -> Schedule:
  if name == 'linear':
    betas = linear_betas(timesteps)
  elif name == 'cosine':
    betas = cosine_betas(timesteps)
  else:
    raise ValueError(f"unknown beta schedule {name!r}; expected 'linear' or 'cosine'")
  alphas = 1.0 - betas
  # float32 like the official torch code: it computes the cumulative product in float32.
  abar = np.cumprod(alphas.astype(np.float32), dtype=np.float32)
  abar_prev = np.concatenate([[1.0], abar[:-1]]).astype(np.float32)
  return Schedule(betas.astype(np.float32), alphas.astype(np.float32), abar, abar_prev)


def _bcast(values: jax.Array, x: jax.Array) -> jax.Array:
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
  abar = _bcast(schedule.abar(t), x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def x0_from_eps(x_t: jax.Array, eps: jax.Array, abar: jax.Array) -> jax.Array:
  abar = _bcast(abar, x_t)
  return (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def eps_from_x0(x_t: jax.Array, x0: jax.Array, abar: jax.Array) -> jax.Array:
  abar = _bcast(abar, x_t)
  return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)


def predict(denoise_fn: DenoiseFn, x_t: jax.Array, t: jax.Array, abar: jax.Array,
            prediction: str = 'eps', clip_x0: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Runs the denoiser and returns (eps_hat, x0_hat) whatever it parameterises.

  `clip_x0` > 0 clips x0_hat to [-clip_x0, clip_x0] and re-derives eps_hat from it (see
  `ddim_sample`)."""
  eps, x0 = _predict(denoise_fn(x_t, t).astype(x_t.dtype), x_t, abar, prediction)
  if clip_x0 > 0:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
    eps = eps_from_x0(x_t, x0, abar)
  return eps, x0


def _predict(out: jax.Array, x_t: jax.Array, abar: jax.Array, prediction: str) -> tuple[jax.Array, jax.Array]:
  if prediction == 'eps':
    return out, x0_from_eps(x_t, out, abar)
  if prediction == 'x0':
    return eps_from_x0(x_t, out, abar), out
  if prediction == 'v':
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022): both recoveries are
    # well conditioned at every t, unlike eps -> x0, which divides by sqrt(abar) at high noise.
    a = _bcast(abar, x_t)
    return jnp.sqrt(a) * out + jnp.sqrt(1.0 - a) * x_t, jnp.sqrt(a) * x_t - jnp.sqrt(1.0 - a) * out
  raise ValueError(f"unknown prediction {prediction!r}; expected {PREDICTIONS}")


def target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str) -> jax.Array:
  """What a denoiser parameterised by `prediction` is trained to output at (x0, t, noise)."""
  if prediction == 'eps':
    return noise
  if prediction == 'x0':
    return x0
  if prediction == 'v':
    abar = _bcast(schedule.abar(t), x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0
  raise ValueError(f"unknown prediction {prediction!r}; expected {PREDICTIONS}")


def sample_timesteps(key: jax.Array, batch: int, timesteps: int) -> jax.Array:
  """t ~ U{1, ..., T-1}, as the official training."""
  return jax.random.randint(key, (batch,), 1, timesteps)


def loss_weight(schedule: Schedule, t: jax.Array, prediction: str, min_snr_gamma: float,
                min_snr_floor: float = 0.0) -> jax.Array:
  """Per-sample weight of the squared error; all ones unless min_snr_gamma > 0.

  Min-SNR-gamma (Hang et al. 2023): weight every t as min(SNR_t, gamma) times the x0-error,
  which caps the weight of the nearly clean steps so that the coarse, high-noise structure
  is learned sooner. `min_snr_floor` = 1 also keeps the noisiest steps at weight 1 instead of
  SNR -> 0 (the "truncated SNR" max(SNR, 1) of Salimans & Ho 2022): those are the steps where
  a conditional model learns what its condition decides globally (the background). A
  prediction's squared error is the x0-error times SNR (eps), 1 (x0) or SNR + 1 (v), hence the
  divisions.
  """
  if min_snr_gamma <= 0:
    return jnp.ones(t.shape, jnp.float32)
  abar = schedule.abar(t).astype(jnp.float32)
  snr = abar / (1.0 - abar)
  capped = jnp.clip(snr, min_snr_floor, min_snr_gamma)
  if prediction == 'eps':
    return capped / snr
  if prediction == 'x0':
    return capped
  if prediction == 'v':
    return capped / (snr + 1.0)
  raise ValueError(f"unknown prediction {prediction!r}; expected {PREDICTIONS}")


def edge_weights(images: jax.Array, strength: float) -> jax.Array:
  """(B, H, W, 1) pixel weights 1 + strength * g / mean g of each image, g the root mean square of
  the differences to the four neighbours (all channels; both sides of an edge; flat images: 1)."""
  if strength == 0:
    return jnp.ones(images.shape[:3] + (1,), images.dtype)
  sq = 0.0
  for axis in (1, 2):
    d2 = jnp.square(jnp.diff(images, axis=axis))
    after = [(0, 0)] * 4
    before = [(0, 0)] * 4
    after[axis], before[axis] = (0, 1), (1, 0)
    sq = sq + jnp.pad(d2, after) + jnp.pad(d2, before)
  grad = jnp.sqrt(jnp.sum(sq, axis=-1, keepdims=True) / 2)
  grad = jax.lax.stop_gradient(grad)
  return 1.0 + strength * grad / (jnp.mean(grad, axis=(1, 2, 3), keepdims=True) + 1e-6)


def diffusion_loss(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, key: jax.Array,
                   prediction: str = 'eps', min_snr_gamma: float = 0.0, min_snr_floor: float = 0.0,
                   edge_weight: float = 0.0) -> jax.Array:
  """Mean squared error of the denoiser at a random t (Ho et al. eq. 14, 'simple' loss),
  optionally min-SNR-gamma weighted per sample (`loss_weight`). `edge_weight` > 0 weighs each
  pixel of an image (x0 NHWC) by `edge_weights(x0, edge_weight)` / (1 + edge_weight): the mean
  weight of an image with any outline stays 1, and a share edge_weight / (1 + edge_weight) of it
  sits on the outlines, so a small object's outline counts as much as a large one's."""
  t_key, n_key = jax.random.split(key)
  t = sample_timesteps(t_key, x0.shape[0], schedule.timesteps)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  out = denoise_fn(q_sample(schedule, x0, t, noise), t).astype(jnp.float32)
  goal = target(schedule, x0, t, noise, prediction)
  err = jnp.square(out - goal.astype(jnp.float32))
  if edge_weight > 0:
    err = err * edge_weights(x0.astype(jnp.float32), edge_weight) / (1.0 + edge_weight)
  per_sample = jnp.mean(err.reshape(x0.shape[0], -1), axis=1)
  return jnp.mean(loss_weight(schedule, t, prediction, min_snr_gamma, min_snr_floor) * per_sample)


def ddim_timesteps(timesteps: int, num_steps: int) -> np.ndarray:
  """Increasing strided timesteps from 0 to T-1 (every step when num_steps == T)."""
  if not 0 < num_steps <= timesteps:
    raise ValueError(f'num_steps must be in 1..{timesteps}, got {num_steps}')
  seq = np.unique(np.round(np.linspace(0, timesteps - 1, num_steps)).astype(np.int32))
  if len(seq) != num_steps:
    raise ValueError(f'cannot pick {num_steps} distinct timesteps out of {timesteps}')
  return seq


def _steps(schedule: Schedule, num_steps: int):
  """(t, abar_t, abar_prev) per step, from the last timestep down to the first."""
  seq = ddim_timesteps(schedule.timesteps, num_steps)
  abar = np.asarray(schedule.alphas_cumprod)[seq]
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  rev = slice(None, None, -1)
  return (jnp.asarray(seq[rev]), jnp.asarray(abar[rev], jnp.float32),
          jnp.asarray(abar_prev[rev], jnp.float32))


def ddim_sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, *, num_steps: int,
                eta: float = 0.0, key: Optional[jax.Array] = None, prediction: str = 'eps',
                trajectory_fn: Optional[TrajectoryFn] = None, clip_x0: float = 0.0):
  """DDIM from x_T down to x_0 over `num_steps` strided steps.

  `clip_x0` > 0 clips x0_hat to [-clip_x0, clip_x0] at every step and re-derives eps_hat from
  it (as guided-diffusion's `clip_denoised`): at the first, noisiest steps x0_hat =
  (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) multiplies the denoiser's error by up to
  1/sqrt(abar_{T-1}) ~ 150 (linear schedule), which a briefly trained model does not survive.
  0 (the default) is the unclipped update of the official code.

  Returns x_0, or (x_0, trajectory) when `trajectory_fn` is given: its outputs at every step
  (for example the prototype activations of x0_hat, for the emergence analysis), stacked
  along a leading axis in sampling order (first entry: the noisiest step).
  """
  if eta > 0 and key is None:
    raise ValueError('ddim_sample with eta > 0 needs a PRNG key')
  ts, abars, abar_prevs = _steps(schedule, num_steps)
  keys = jax.random.split(key if key is not None else jax.random.PRNGKey(0), num_steps)

  def step(x, inputs):
    t, abar, abar_prev, k = inputs
    t_vec = jnp.full((x.shape[0],), t, jnp.int32)
    eps, x0 = predict(denoise_fn, x, t_vec, jnp.full((x.shape[0],), abar), prediction, clip_x0)
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
    x_prev = (jnp.sqrt(abar_prev) * x0 + jnp.sqrt(jnp.maximum(1 - abar_prev - sigma**2, 0.0)) * eps)
    if eta > 0:
      x_prev = x_prev + sigma * jax.random.normal(k, x.shape, x.dtype)
    extra = trajectory_fn(x, x0, t_vec) if trajectory_fn is not None else None
    return x_prev, extra

  x0, trajectory = jax.lax.scan(step, x_T, (ts, abars, abar_prevs, keys))
  return x0 if trajectory_fn is None else (x0, trajectory)


def ddim_invert(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, *, num_steps: int,
                prediction: str = 'eps', trajectory_fn: Optional[TrajectoryFn] = None):
  """Deterministic DDIM inversion x_0 -> x_T along the same strided timesteps as `ddim_sample`.

  Step k moves from the level of t_{k-1} (clean for k = 0) to the level of t_k with
  eps_hat(x, t_{k-1}) (t_0 for the first step), so that `ddim_sample(eta=0)` retraces it.
  """
  seq = ddim_timesteps(schedule.timesteps, num_steps)
  abar_all = np.asarray(schedule.alphas_cumprod)
  abar_next = jnp.asarray(abar_all[seq], jnp.float32)
  t_eval = jnp.asarray(np.concatenate([seq[:1], seq[:-1]]), jnp.int32)
  abar_cur = jnp.asarray(np.concatenate([[1.0], abar_all[seq][:-1]]), jnp.float32)

  def step(x, inputs):
    t, a_cur, a_next = inputs
    t_vec = jnp.full((x.shape[0],), t, jnp.int32)
    # At the clean start an eps- or v-model's x0_hat is x itself (abar = 1); an x0-model's eps is
    # undefined there, so it is read at the level of t_0 (which makes the first step the identity).
    a_model = a_cur if prediction != 'x0' else jnp.where(a_cur >= 1.0, abar_all[seq[0]], a_cur)
    eps, x0_hat = predict(denoise_fn, x, t_vec, jnp.full((x.shape[0],), a_model), prediction)
    x_next = jnp.sqrt(a_next) * x0_hat + jnp.sqrt(1 - a_next) * eps
    extra = trajectory_fn(x, x0_hat, t_vec) if trajectory_fn is not None else None
    return x_next, extra

  x_T, trajectory = jax.lax.scan(step, x0, (t_eval, abar_cur, abar_next))
  return x_T if trajectory_fn is None else (x_T, trajectory)


def ddpm_sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, *, key: jax.Array,
                prediction: str = 'eps', trajectory_fn: Optional[TrajectoryFn] = None,
                clip_x0: float = 0.0):
  """Ancestral DDPM sampling t = T-1..1 with sigma_t^2 = beta_t (official `reverse_diffusion`).

  `clip_x0` as in `ddim_sample`; with the re-derived eps the mean is the posterior mean of
  q(x_{t-1} | x_t, clipped x0_hat).
  """
  ts = jnp.arange(schedule.timesteps - 1, 0, -1, dtype=jnp.int32)
  keys = jax.random.split(key, ts.shape[0])

  def step(x, inputs):
    t, k = inputs
    t_vec = jnp.full((x.shape[0],), t, jnp.int32)
    beta, alpha, abar = jnp.asarray(schedule.betas)[t], jnp.asarray(schedule.alphas)[t], schedule.abar(t)
    eps, x0 = predict(denoise_fn, x, t_vec, jnp.full((x.shape[0],), abar), prediction, clip_x0)
    mean = (x - beta / jnp.sqrt(1 - abar) * eps) / jnp.sqrt(alpha)
    noise = jnp.where(t > 1, 1.0, 0.0) * jax.random.normal(k, x.shape, x.dtype)
    extra = trajectory_fn(x, x0, t_vec) if trajectory_fn is not None else None
    return mean + jnp.sqrt(beta) * noise, extra

  x0, trajectory = jax.lax.scan(step, x_T, (ts, keys))
  return x0 if trajectory_fn is None else (x0, trajectory)


SAMPLERS = ('ddim', 'ddpm', 'dpmpp2m')
DETERMINISTIC_SAMPLERS = ('ddim', 'dpmpp2m')  # those with an inversion (at eta = 0)
SPACINGS = ('time', 'logsnr')  # timesteps uniform in t (DDIM's strides) or in lambda = log(alpha / sigma)
LOGSNR_FLOOR = -5.1  # the noisiest lambda 'logsnr' spaces to: the linear schedule's end (cosine: t=0.9946T)


def log_snr(abar: np.ndarray) -> np.ndarray:
  """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (float64)."""
  abar = np.asarray(abar, np.float64)
  return 0.5 * (np.log(abar) - np.log1p(-abar))


def sampling_timesteps(schedule: Schedule, num_steps: int, spacing: str) -> np.ndarray:
  """Increasing distinct timesteps from 0 to T-1 at which a deterministic sampler calls the model.

  'time' is `ddim_timesteps`; 'logsnr' spaces them uniformly in lambda between lambda(0) and
  lambda(T-1) (rounded to the nearest timestep, then pushed apart where rounding made two equal).
  A schedule whose lambda(T-1) lies far below LOGSNR_FLOOR has a clipped tail (cosine: lambda falls
  from -5 to -9.9 over its last 5 timesteps, where x0_hat is the data mean whatever x_t): its grid
  stops at the floor, else the tail took 8 of 20 calls; the noisiest call is at T-1 as always.
  """
  if spacing == 'time':
    return ddim_timesteps(schedule.timesteps, num_steps)
  if spacing != 'logsnr':
    raise ValueError(f'unknown timestep spacing {spacing!r}; expected one of {SPACINGS}')
  T = schedule.timesteps
  if not 0 < num_steps <= T:
    raise ValueError(f'num_steps must be in 1..{T}, got {num_steps}')
  lam = log_snr(schedule.alphas_cumprod)  # decreasing in t
  clipped_tail = lam[-1] < LOGSNR_FLOOR - 1.0  # cosine: -9.9; linear: -5.06 (T = 1000), -5.4 (T = 100)
  targets = np.linspace(lam[0], LOGSNR_FLOOR if clipped_tail else lam[-1], num_steps)
  seq = np.round(np.interp(-targets, -lam, np.arange(T, dtype=np.float64))).astype(np.int64)
  seq = np.clip(seq, np.arange(num_steps), T - num_steps + np.arange(num_steps))  # room for the rest
  seq[0], seq[-1] = 0, T - 1
  for k in range(1, num_steps):  # distinct and increasing
    seq[k] = max(seq[k], seq[k - 1] + 1)
  for k in range(num_steps - 2, -1, -1):
    seq[k] = min(seq[k], seq[k + 1] - 1)
  return seq.astype(np.int32)


def _multistep_coefficients(abar_from: np.ndarray, abar_to: np.ndarray, order: int) -> np.ndarray:
  """(K, 3) float32 [a, b, c] of x_to = a x_from + b ((1 + c) x0_hat - c x0_hat_prev) per step.

  DPM-Solver++ in data-prediction form with h = lambda_to - lambda_from (negative when running
  upwards, for inversion): a = sigma_to / sigma_from, b = alpha_to (1 - e^{-h}), and c = 1 / (2r),
  r = h_prev / h, the second-order correction from the previous step's x0_hat (c = 0: first
  order, which is DDIM). A step that starts or ends at abar = 1 (lambda = +inf) is first order;
  so is every step with `order` = 1. Computed in float64 from the schedule, so no inf reaches jit.
  """
  abar_from = np.asarray(abar_from, np.float64)
  abar_to = np.asarray(abar_to, np.float64)
  alpha_to, sigma_to = np.sqrt(abar_to), np.sqrt(np.maximum(1.0 - abar_to, 0.0))
  sigma_from = np.sqrt(np.maximum(1.0 - abar_from, 0.0))
  finite = (abar_from < 1.0) & (abar_to < 1.0)
  with np.errstate(divide='ignore', invalid='ignore'):
    lam_from = np.where(abar_from < 1.0, log_snr(np.minimum(abar_from, 1 - 1e-12)), np.inf)
    lam_to = np.where(abar_to < 1.0, log_snr(np.minimum(abar_to, 1 - 1e-12)), np.inf)
    h = np.where(finite, lam_to - lam_from, 0.0)
    a = np.where(sigma_from > 0, sigma_to / np.where(sigma_from > 0, sigma_from, 1.0), 0.0)
    # e^{-h} = alpha_from sigma_to / (alpha_to sigma_from); at sigma_to = 0 the step lands on x0_hat.
    b = np.where(abar_to >= 1.0, 1.0, alpha_to * -np.expm1(-h))
  c = np.zeros_like(h)
  if order >= 2:
    for k in range(1, len(h)):
      if finite[k] and finite[k - 1] and h[k] != 0.0 and h[k - 1] != 0.0:
        c[k] = 0.5 * h[k] / h[k - 1]  # 1 / (2r), r = h_prev / h
  return np.stack([a, b, c], 1).astype(np.float32)


def _solver_order(sampler: str) -> int:
  if sampler == 'ddim':
    return 1
  if sampler == 'dpmpp2m':
    return 2
  raise ValueError(f'unknown deterministic sampler {sampler!r}; expected one of {DETERMINISTIC_SAMPLERS}')


def dpm_solver_sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, *, num_steps: int,
                      order: int = 2, spacing: str = 'logsnr', prediction: str = 'eps',
                      trajectory_fn: Optional[TrajectoryFn] = None, clip_x0: float = 0.0, start: int = 0):
  """DPM-Solver++(2M) from x_T down to x_0 with `num_steps` model calls (one per step).

  Calls the model at `sampling_timesteps(spacing)`, noisiest first, and moves from each to the
  next lower one (the last step to the clean level abar = 1, where x_0 = x0_hat). order = 1 is
  DDIM (eta = 0) over the same timesteps. `clip_x0` clips x0_hat (it is D, so the multistep
  combination mixes clipped predictions). Returns like `ddim_sample`.

  `start` > 0 skips the first (noisiest) steps: x_T is then a point at the level of the
  start-th timestep (noisiest first), e.g. from `dpm_solver_invert(stop=num_steps - start)`,
  and num_steps - start calls bring it to x_0.
  """
  if not 0 <= start < num_steps:
    raise ValueError(f'start must be in 0..{num_steps - 1}, got {start}')
  seq = sampling_timesteps(schedule, num_steps, spacing)[::-1][start:]
  abar = np.asarray(schedule.alphas_cumprod, np.float64)[seq]
  coefs = jnp.asarray(_multistep_coefficients(abar, np.concatenate([abar[1:], [1.0]]), order))
  xs = (jnp.asarray(seq, jnp.int32), jnp.asarray(abar, jnp.float32), coefs)
  return _multistep(denoise_fn, x_T, xs, prediction, trajectory_fn, clip_x0)


def dpm_solver_invert(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, *, num_steps: int,
                      order: int = 2, spacing: str = 'logsnr', prediction: str = 'eps',
                      trajectory_fn: Optional[TrajectoryFn] = None, stop: Optional[int] = None):
  """The deterministic map of `dpm_solver_sample` run upwards, x_0 -> x_T, `num_steps` calls.

  Step k moves from the level of t_{k-1} (clean for k = 0) to that of t_k with x0_hat evaluated
  at the current point, as `ddim_invert` (which order = 1 equals). The first step leaves the
  clean level, where the data-prediction form has no sigma to scale by, so it is DDIM's eps
  form: x_{t_0} = sqrt(abar_0) x0_hat + sqrt(1 - abar_0) eps_hat with the model read at t_0
  (an x0-model's eps is undefined at abar = 1: its first step is read at the level of t_0, the
  identity); from the second on, the multistep rule. `stop` < num_steps runs only the first
  `stop` steps (calls), ending at the level of the stop-th timestep (least noisy first).
  """
  stop = num_steps if stop is None else stop
  if not 0 < stop <= num_steps:
    raise ValueError(f'stop must be in 1..{num_steps}, got {stop}')
  seq = sampling_timesteps(schedule, num_steps, spacing)
  abar_all = np.asarray(schedule.alphas_cumprod, np.float64)
  abar_next = abar_all[seq]
  abar_cur = np.concatenate([[1.0], abar_next[:-1]])
  coefs = _multistep_coefficients(abar_cur, abar_next, order)
  coefs[0] = (0.0, np.sqrt(abar_next[0]), 0.0)  # x0_hat part of the eps-form first step
  eps_coef = np.zeros(num_steps, np.float32)
  eps_coef[0] = np.sqrt(1.0 - abar_next[0])
  a_model = abar_cur.copy()
  a_model[0] = abar_next[0] if prediction == 'x0' else 1.0
  t_eval = np.concatenate([seq[:1], seq[:-1]])
  xs = (jnp.asarray(t_eval[:stop], jnp.int32), jnp.asarray(a_model[:stop], jnp.float32), jnp.asarray(coefs[:stop]),
        jnp.asarray(eps_coef[:stop]))
  return _multistep(denoise_fn, x0, xs, prediction, trajectory_fn, 0.0)


def _multistep(denoise_fn, x_start, xs, prediction, trajectory_fn, clip_x0):
  """One lax.scan of x_next = a x + b ((1 + c) x0_hat - c x0_hat_prev) [+ g eps_hat]."""

  def step(carry, inputs):
    x, x0_prev = carry
    t, abar, (a, b, c), *g = inputs
    t_vec = jnp.full((x.shape[0],), t, jnp.int32)
    eps, x0 = predict(denoise_fn, x, t_vec, jnp.full((x.shape[0],), abar), prediction, clip_x0)
    x_next = a * x + b * ((1.0 + c) * x0 - c * x0_prev)
    if g:
      x_next = x_next + g[0] * eps
    extra = trajectory_fn(x, x0, t_vec) if trajectory_fn is not None else None
    return (x_next, x0), extra

  (x_end, _), trajectory = jax.lax.scan(step, (x_start, jnp.zeros_like(x_start)), xs)
  return x_end if trajectory_fn is None else (x_end, trajectory)


def sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, *, sampler: str = 'ddim',
           num_steps: int = 100, eta: float = 0.0, key: Optional[jax.Array] = None,
           prediction: str = 'eps', trajectory_fn: Optional[TrajectoryFn] = None,
           clip_x0: float = 0.0, spacing: str = 'logsnr'):
  """Dispatches to `ddim_sample`, `ddpm_sample` (every timestep) or `dpm_solver_sample`.

  `spacing` applies to 'dpmpp2m' (DDIM keeps its official time-uniform strides)."""
  if sampler == 'ddim':
    return ddim_sample(denoise_fn, schedule, x_T, num_steps=num_steps, eta=eta, key=key,
                       prediction=prediction, trajectory_fn=trajectory_fn, clip_x0=clip_x0)
  if sampler == 'ddpm':
    if key is None:
      raise ValueError('ddpm sampling needs a PRNG key')
    return ddpm_sample(denoise_fn, schedule, x_T, key=key, prediction=prediction,
                       trajectory_fn=trajectory_fn, clip_x0=clip_x0)
  if sampler == 'dpmpp2m':
    if eta > 0:
      raise ValueError(f'dpmpp2m is deterministic; eta must be 0, got {eta}')
    return dpm_solver_sample(denoise_fn, schedule, x_T, num_steps=num_steps, order=2, spacing=spacing,
                             prediction=prediction, trajectory_fn=trajectory_fn, clip_x0=clip_x0)
  raise ValueError(f'unknown sampler {sampler!r}; expected one of {SAMPLERS}')


def invert(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, *, sampler: str = 'ddim',
           num_steps: int = 100, prediction: str = 'eps', trajectory_fn: Optional[TrajectoryFn] = None,
           spacing: str = 'logsnr'):
  """x_0 -> x_T with the inversion of a deterministic sampler: `sample(sampler, eta=0)` from it
  retraces x_0 (up to the solver's error)."""
  if sampler == 'ddim':
    return ddim_invert(denoise_fn, schedule, x0, num_steps=num_steps, prediction=prediction,
                       trajectory_fn=trajectory_fn)
  return dpm_solver_invert(denoise_fn, schedule, x0, num_steps=num_steps, order=_solver_order(sampler),
                           spacing=spacing, prediction=prediction, trajectory_fn=trajectory_fn)


def downsample_mean(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) -> (B, size, size, C): the mean of each H/size x W/size block where the sides are
  multiples of size, else an antialiased linear resize (the same low-pass idea for any image size)."""
  b, h, w, c = images.shape
  if h % size or w % size:
    return jax.image.resize(images, (b, size, size, c), 'linear', antialias=True)
  return images.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))


def upsample(picture: jax.Array, shape: Sequence[int]) -> jax.Array:
  """(B, h, w, C) -> (B, H, W, C) for shape (B, H, W, *): each pixel repeated H/h x W/w times where the
  sides are multiples of h, w (the inverse of `downsample_mean`'s block means), else a linear resize."""
  b, h, w, c = picture.shape
  if shape[1] % h or shape[2] % w:
    return jax.image.resize(picture, (b, shape[1], shape[2], c), 'linear')
  return jnp.repeat(jnp.repeat(picture, shape[1] // h, axis=1), shape[2] // w, axis=2)


def low_pass(x: jax.Array, size: int) -> jax.Array:
  """x (B, H, W, C) reduced to size x size and back (`downsample_mean`, `upsample`): with H, W multiples of
  size, every block replaced by its mean."""
  return upsample(downsample_mean(x, size), x.shape)


def low_pass_guided(denoise_fn: DenoiseFn, schedule: Schedule, prediction: str, picture: jax.Array,
                    shape: Sequence[int], strength: float, min_t: float) -> DenoiseFn:
  """`denoise_fn` whose x0_hat has its block means moved towards `picture` (B, s, s, C), a low-resolution
  picture of what to draw: x0_hat += strength (upsample(picture) - low_pass(x0_hat, s)) at every
  t >= min_t T; strength 1 makes x0_hat's block means those of the picture (sides that are no multiple
  of s: the same with antialiased and linear resizes, which moves them most of the way: three quarters
  for a 10 x 10 image and a 4 x 4 picture). eps_hat is re-derived from the moved x0_hat (as `clip_x0`
  does) and the result returned in the denoiser's own parameterisation, so every sampler and
  inversion runs it unchanged. Below min_t T nothing is moved:
  there eps_hat = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar) divides a change of x0_hat by a small
  sigma, and an inversion's first steps blow up (quickstart: x_T std 17 at min_t 0, 0.89 at 0.1).
  `shape`: the images' (B, H, W, C); the picture is brought to it once, outside the sampling loop."""
  goal = upsample(picture, shape)

  def guided(x_t, t):
    abar = schedule.abar(t)
    eps, x0 = predict(denoise_fn, x_t, t, abar, prediction)
    goal_t = goal.astype(x0.dtype)
    weight = _bcast(jnp.where(t >= min_t * schedule.timesteps, strength, 0.0).astype(x0.dtype), x0)
    x0 = x0 + weight * (goal_t - low_pass(x0, picture.shape[1]))
    return target(schedule, x0, t, eps_from_x0(x_t, x0, abar), prediction)
  return guided


def _low_pass_settings(diffusion_cfg) -> tuple[float, float]:
  """(strength, min_t) of the sketch consistency of a diffusion config section (0, 0 when it has none)."""
  strength = float(diffusion_cfg.get('sketch_consistency', 0.0))
  return strength, float(diffusion_cfg.get('sketch_consistency_min_t', 0.0)) if strength > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """Hashable description of a sampling loop (a static argument of the jitted samplers)."""
  schedule: str = 'linear'
  timesteps: int = 1000
  sampler: str = 'ddim'
  num_steps: int = 100
  eta: float = 0.0
  prediction: str = 'eps'
  clip_x0: float = 0.0
  spacing: str = 'logsnr'
  # > 0: the denoiser's x0_hat is pulled towards a low-resolution picture (`low_pass_guided`)
  low_pass_strength: float = 0.0
  low_pass_min_t: float = 0.0

  @classmethod
  def images(cls, diffusion_cfg, **overrides) -> 'SamplerSpec':
    spec = cls(diffusion_cfg.schedule, diffusion_cfg.timesteps, diffusion_cfg.sampler,
               diffusion_cfg.sample_steps, float(diffusion_cfg.eta), diffusion_cfg.prediction,
               float(diffusion_cfg.clip_x0), diffusion_cfg.spacing, *_low_pass_settings(diffusion_cfg))
    return dataclasses.replace(spec, **overrides)

  @classmethod
  def latent(cls, latent_cfg, **overrides) -> 'SamplerSpec':
    spec = cls(latent_cfg.schedule, latent_cfg.timesteps, latent_cfg.sampler, latent_cfg.sample_steps,
               float(latent_cfg.eta), 'eps', spacing=latent_cfg.spacing)
    return dataclasses.replace(spec, **overrides)

  def guided(self, denoise_fn: DenoiseFn, picture: Optional[jax.Array], shape: Sequence[int]) -> DenoiseFn:
    """`denoise_fn` pulled towards `picture` when this loop asks for it (`low_pass_guided`; images of
    `shape`)."""
    if self.low_pass_strength <= 0:
      return denoise_fn
    if picture is None:
      raise ValueError('low_pass_strength > 0 needs a picture to pull x0_hat towards')
    return low_pass_guided(denoise_fn, make_schedule(self.schedule, self.timesteps), self.prediction, picture,
                           shape, self.low_pass_strength, self.low_pass_min_t)

  def run(self, denoise_fn: DenoiseFn, x_T: jax.Array, key: Optional[jax.Array] = None,
          trajectory_fn: Optional[TrajectoryFn] = None, start: int = 0):
    """`sample` with this loop; `start` > 0 (deterministic samplers) continues a partial inversion
    (`invert(stop=num_steps - start)`) from its level with num_steps - start calls."""
    if start:
      return dpm_solver_sample(denoise_fn, make_schedule(self.schedule, self.timesteps), x_T,
                               num_steps=self.num_steps, order=_solver_order(self.sampler), start=start,
                               spacing=self._spacing(), prediction=self.prediction, trajectory_fn=trajectory_fn,
                               clip_x0=self.clip_x0)
    return sample(denoise_fn, make_schedule(self.schedule, self.timesteps), x_T, sampler=self.sampler,
                  num_steps=self.num_steps, eta=self.eta, key=key, prediction=self.prediction,
                  trajectory_fn=trajectory_fn, clip_x0=self.clip_x0, spacing=self.spacing)

  def invert(self, denoise_fn: DenoiseFn, x0: jax.Array, trajectory_fn: Optional[TrajectoryFn] = None,
             stop: Optional[int] = None):
    """`invert` with this loop's deterministic sampler; `stop` < num_steps: only its first calls."""
    if stop is not None and stop != self.num_steps:
      return dpm_solver_invert(denoise_fn, make_schedule(self.schedule, self.timesteps), x0,
                               num_steps=self.num_steps, order=_solver_order(self.sampler), stop=stop,
                               spacing=self._spacing(), prediction=self.prediction, trajectory_fn=trajectory_fn)
    return invert(denoise_fn, make_schedule(self.schedule, self.timesteps), x0, sampler=self.sampler,
                  num_steps=self.num_steps, prediction=self.prediction, trajectory_fn=trajectory_fn,
                  spacing=self.spacing)

  def timesteps_used(self) -> np.ndarray:
    """The timesteps of a deterministic loop's model calls, noisiest first."""
    return sampling_timesteps(make_schedule(self.schedule, self.timesteps), self.num_steps, self._spacing())[::-1]

  def _spacing(self) -> str:
    return self.spacing if self.sampler == 'dpmpp2m' else 'time'  # DDIM: its official strides
