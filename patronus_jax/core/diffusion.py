"""Diffusion mathematics: schedules, q_sample, the training loss, DDPM, DDIM, DDIM inversion.

Notation of Ho et al. (2020) and Song et al. (2021); t indexes 0..T-1 as in the official code.

  Schedules:   linear betas (Ho et al.; official: scaled by 1000/T so that any T spans the same
               noise range) or cosine alphas_cumprod (Nichol & Dhariwal 2021, eq. 17).
  q_sample:    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                          (Ho eq. 4)
  loss:        E_{t ~ U{1..T-1}, eps} ||eps - eps_theta(x_t, t)||^2   (Ho eq. 14; the official
               code draws t from 1..T-1), or ||x_0 - x0_theta||^2 for x0-prediction;
               optionally min-SNR-gamma weighted (Hang et al. 2023).
  DDPM:        x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z
               (Ho eq. 11, sigma_t^2 = beta_t), t = T-1..1, no noise at the last step
               (the official `reverse_diffusion`).
  DDIM:        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
               sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
               (Song eq. 12 and 16), over any strided subsequence of timesteps.
  Inversion:   the deterministic (eta = 0) DDIM map run upwards, x_{t_k} from x_{t_{k-1}} with
               eps_hat evaluated at the current point (Song Sec. 4.3; Dhariwal & Nichol App. F).

Every sampling loop is one `jax.lax.scan`, so a 1000-step loop compiles once. Denoisers are
functions `denoise_fn(x_t, t) -> model output` with t an int32 vector of shape (B,);
`prediction` says whether that output is eps, x0 or v.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

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


def diffusion_loss(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, key: jax.Array,
                   prediction: str = 'eps', min_snr_gamma: float = 0.0, min_snr_floor: float = 0.0) -> jax.Array:
  """Mean squared error of the denoiser at a random t (Ho et al. eq. 14, 'simple' loss),
  optionally min-SNR-gamma weighted per sample (`loss_weight`)."""
  t_key, n_key = jax.random.split(key)
  t = sample_timesteps(t_key, x0.shape[0], schedule.timesteps)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  out = denoise_fn(q_sample(schedule, x0, t, noise), t).astype(jnp.float32)
  goal = target(schedule, x0, t, noise, prediction)
  per_sample = jnp.mean(jnp.square(out - goal.astype(jnp.float32)).reshape(x0.shape[0], -1), axis=1)
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


def sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, *, sampler: str = 'ddim',
           num_steps: int = 100, eta: float = 0.0, key: Optional[jax.Array] = None,
           prediction: str = 'eps', trajectory_fn: Optional[TrajectoryFn] = None,
           clip_x0: float = 0.0):
  """Dispatches to `ddim_sample` or `ddpm_sample` (DDPM uses every timestep)."""
  if sampler == 'ddim':
    return ddim_sample(denoise_fn, schedule, x_T, num_steps=num_steps, eta=eta, key=key,
                       prediction=prediction, trajectory_fn=trajectory_fn, clip_x0=clip_x0)
  if sampler == 'ddpm':
    if key is None:
      raise ValueError('ddpm sampling needs a PRNG key')
    return ddpm_sample(denoise_fn, schedule, x_T, key=key, prediction=prediction,
                       trajectory_fn=trajectory_fn, clip_x0=clip_x0)
  raise ValueError(f"unknown sampler {sampler!r}; expected 'ddim' or 'ddpm'")


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

  @classmethod
  def images(cls, diffusion_cfg, **overrides) -> 'SamplerSpec':
    spec = cls(diffusion_cfg.schedule, diffusion_cfg.timesteps, diffusion_cfg.sampler,
               diffusion_cfg.sample_steps, float(diffusion_cfg.eta), diffusion_cfg.prediction,
               float(diffusion_cfg.clip_x0))
    return dataclasses.replace(spec, **overrides)

  @classmethod
  def latent(cls, latent_cfg, **overrides) -> 'SamplerSpec':
    spec = cls(latent_cfg.schedule, latent_cfg.timesteps, 'ddim', latent_cfg.sample_steps,
               float(latent_cfg.eta), 'eps')
    return dataclasses.replace(spec, **overrides)
