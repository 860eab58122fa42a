"""Schedules against closed forms, DDIM/DDPM loops, inversion, compile-once."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax.core import diffusion


def test_linear_schedule_closed_form():
  s = diffusion.make_schedule('linear', 1000)
  betas = np.asarray(s.betas)
  np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod), np.cumprod(1 - betas), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod_prev)[1:], np.asarray(s.alphas_cumprod)[:-1])
  assert float(s.alphas_cumprod_prev[0]) == 1.0
  # T=100 spans the same noise range (official scaling by 1000/T).
  s100 = diffusion.make_schedule('linear', 100)
  np.testing.assert_allclose(np.asarray(s100.betas)[[0, -1]], [1e-3, 0.2], rtol=1e-6)


def test_cosine_schedule_closed_form():
  T, off = 1000, 0.008
  s = diffusion.make_schedule('cosine', T)
  f = lambda t: math.cos((t / T + off) / (1 + off) * math.pi / 2) ** 2
  expected = np.array([f(t + 1) / f(0) for t in range(T)])
  got = np.asarray(s.alphas_cumprod)
  np.testing.assert_allclose(got[:900], expected[:900], rtol=1e-4)  # the tail is clipped (beta <= 0.999)


def test_q_sample_moments():
  s = diffusion.make_schedule('linear', 1000)
  x0 = jnp.full((20000,), 0.7)
  t = jnp.full((20000,), 300)
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  xt = diffusion.q_sample(s, x0, t, noise)
  abar = float(s.alphas_cumprod[300])
  assert abs(float(xt.mean()) - math.sqrt(abar) * 0.7) < 0.02
  assert abs(float(xt.std()) - math.sqrt(1 - abar)) < 0.02


def test_ddim_timesteps():
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 1000), np.arange(1000))
  seq = diffusion.ddim_timesteps(1000, 50)
  assert seq[0] == 0 and seq[-1] == 999 and len(seq) == 50 and np.all(np.diff(seq) > 0)
  with pytest.raises(ValueError):
    diffusion.ddim_timesteps(10, 11)


def _gaussian_denoiser(schedule, mu, var):
  """The exact eps-prediction for data ~ N(mu, var I)."""
  def fn(x, t):
    abar = schedule.abar(t).reshape(-1, *([1] * (x.ndim - 1)))
    x0 = mu + jnp.sqrt(abar) * var / (abar * var + 1 - abar) * (x - jnp.sqrt(abar) * mu)
    return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
  return fn


def _as_prediction(s, eps_fn, prediction):
  """The same exact denoiser, outputting eps, x0 or v."""
  def fn(x, t):
    eps = eps_fn(x, t)
    x0 = diffusion.x0_from_eps(x, eps, s.abar(t))
    abar = s.abar(t).reshape((-1,) + (1,) * (x.ndim - 1))
    return {'eps': eps, 'x0': x0, 'v': jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x0}[prediction]
  return fn


def _gaussian_problem(prediction, mu=0.3, var=0.25):
  """(schedule, the exact denoiser of data ~ N(mu, var I) predicting `prediction`, 4 images of such data)."""
  s = diffusion.make_schedule('linear', 1000)
  fn = _as_prediction(s, _gaussian_denoiser(s, mu, var), prediction)
  x0 = mu + math.sqrt(var) * jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  return s, fn, x0


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_ddim_inversion_regenerates(prediction):
  s, fn, x0 = _gaussian_problem(prediction)
  errors = []
  for steps in (100, 200):
    x_T = diffusion.ddim_invert(fn, s, x0, num_steps=steps, prediction=prediction)
    back = diffusion.ddim_sample(fn, s, x_T, num_steps=steps, eta=0.0, prediction=prediction)
    errors.append(float(jnp.mean(jnp.abs(back - x0))))
    # x_T is (close to) standard normal: the inversion really moved to the noise end.
    assert abs(float(x_T.std()) - 1.0) < 0.05
  assert errors[0] < 0.03
  # First-order method: twice the steps, half the round-trip error.
  assert 0.4 < errors[1] / errors[0] < 0.6


def test_sampling_compiles_once_for_1000_steps():
  s = diffusion.make_schedule('linear', 1000)
  traces = []

  def fn(x, t):
    traces.append(1)
    return 0.1 * x

  run = jax.jit(lambda x: diffusion.ddim_sample(fn, s, x, num_steps=1000))
  out = run(jnp.ones((2, 4)))
  assert len(traces) == 1 and out.shape == (2, 4)
  run_ddpm = jax.jit(lambda x, k: diffusion.ddpm_sample(fn, s, x, key=k))
  run_ddpm(jnp.ones((2, 4)), jax.random.PRNGKey(0))
  assert len(traces) == 2


def test_trajectory_returns_every_step():
  s = diffusion.make_schedule('linear', 100)
  fn = _gaussian_denoiser(s, 0.0, 1.0)
  x_T = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  x0, traj = diffusion.ddim_sample(fn, s, x_T, num_steps=20,
                                   trajectory_fn=lambda x, x0, t: (x0, t))
  x0_hats, ts = traj
  assert x0_hats.shape == (20, 3, 5) and ts.shape == (20, 3)
  assert int(ts[0, 0]) == 99 and int(ts[-1, 0]) == 0
  np.testing.assert_allclose(np.asarray(x0_hats[-1]), np.asarray(x0), atol=1e-5)


def test_ddpm_and_stochastic_ddim_match_data_moments():
  s = diffusion.make_schedule('linear', 1000)
  mu, var = 0.5, 0.04
  fn = _gaussian_denoiser(s, mu, var)
  x_T = jax.random.normal(jax.random.PRNGKey(2), (4000,))
  out = diffusion.ddpm_sample(fn, s, x_T, key=jax.random.PRNGKey(3))
  assert abs(float(out.mean()) - mu) < 0.02 and abs(float(out.std()) - math.sqrt(var)) < 0.02
  out = diffusion.ddim_sample(fn, s, x_T, num_steps=1000, eta=1.0, key=jax.random.PRNGKey(4))
  assert abs(float(out.mean()) - mu) < 0.02 and abs(float(out.std()) - math.sqrt(var)) < 0.02


def test_loss_is_zero_for_the_exact_denoiser_of_a_point_mass():
  s = diffusion.make_schedule('linear', 1000)
  x_star = jnp.linspace(-1, 1, 12).reshape(1, 2, 2, 3)
  fn = lambda x, t: diffusion.eps_from_x0(x, jnp.broadcast_to(x_star, x.shape), s.abar(t))
  x0 = jnp.broadcast_to(x_star, (8, 2, 2, 3))
  assert float(diffusion.diffusion_loss(fn, s, x0, jax.random.PRNGKey(0))) < 1e-6
  assert float(diffusion.diffusion_loss(lambda x, t: jnp.zeros_like(x), s, x0, jax.random.PRNGKey(0))) > 0.5


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_every_parameterisation_recovers_eps_and_x0_and_trains_to_zero_loss(prediction):
  s = diffusion.make_schedule('linear', 1000)
  x_star = jnp.linspace(-1, 1, 12).reshape(1, 2, 2, 3)
  exact_eps = lambda x, t: diffusion.eps_from_x0(x, jnp.broadcast_to(x_star, x.shape), s.abar(t))
  fn = _as_prediction(s, exact_eps, prediction)
  x0 = jnp.broadcast_to(x_star, (8, 2, 2, 3))
  assert float(diffusion.diffusion_loss(fn, s, x0, jax.random.PRNGKey(0), prediction)) < 1e-6
  t = jnp.array([1, 10, 300, 600, 900, 990, 999, 500])
  noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  x_t = diffusion.q_sample(s, x0, t, noise)
  eps, x0_hat = diffusion.predict(fn, x_t, t, s.abar(t), prediction)
  assert float(jnp.max(jnp.abs(eps - noise))) < 2e-3
  # eps-models recover x0 only up to a 1/sqrt(abar) blow-up of float error at t ~ T; x0 and v don't.
  tol = 1e-4 if prediction != 'eps' else 0.5
  assert float(jnp.max(jnp.abs(x0_hat - x0))) < tol
  wrong = jnp.roll(x0, 1, axis=0)
  assert float(diffusion.diffusion_loss(lambda x, t: fn(x, t) * 0 + 0.5, s, wrong, jax.random.PRNGKey(0),
                                        prediction)) > 0.05


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
@pytest.mark.parametrize('gamma,floor', [(0.0, 0.0), (5.0, 0.0), (5.0, 1.0)])
def test_min_snr_weighting_is_clipped_snr_times_the_x0_error(prediction, gamma, floor):
  # A denoiser whose x0_hat is off by a constant delta, written as each parameterisation:
  # the weighted loss must be mean_t(clip(SNR_t, floor, gamma)) * delta^2 whatever it outputs
  # (gamma = 0: the unweighted loss, SNR * delta^2 for eps, delta^2 for x0, (SNR + 1) * delta^2 for v).
  s = diffusion.make_schedule('cosine', 1000)
  x_star = jnp.linspace(-1, 1, 12).reshape(1, 2, 2, 3)
  delta = 0.1

  def fn(x, t):
    x0_hat = jnp.broadcast_to(x_star, x.shape) + delta
    eps = diffusion.eps_from_x0(x, x0_hat, s.abar(t))
    a = s.abar(t).reshape((-1, 1, 1, 1))
    return {'eps': eps, 'x0': x0_hat, 'v': jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0_hat}[prediction]

  x0 = jnp.broadcast_to(x_star, (64, 2, 2, 3))
  key = jax.random.PRNGKey(3)
  loss = float(diffusion.diffusion_loss(fn, s, x0, key, prediction, min_snr_gamma=gamma, min_snr_floor=floor))
  t = diffusion.sample_timesteps(jax.random.split(key)[0], 64, 1000)  # the loss's own t draw
  abar = np.asarray(s.abar(t), np.float64)
  snr = abar / (1 - abar)
  per_t = {'eps': snr, 'x0': np.ones_like(snr), 'v': snr + 1}[prediction] if gamma == 0 else np.clip(snr, floor, gamma)
  np.testing.assert_allclose(loss, np.mean(per_t) * delta ** 2, rtol=2e-3)
  if gamma:
    w = np.asarray(diffusion.loss_weight(s, t, prediction, gamma, floor))
    assert np.all(w > 0)
    if not floor:  # bounded: at most 1 (eps, v) or gamma (x0)
      assert np.all(w <= max(1.0, gamma) + 1e-6)
    if floor and prediction == 'v':  # the noisiest steps keep (almost) the unweighted v-loss
      noisy = snr < 0.1
      assert noisy.any() and np.all(w[noisy] > 0.9)


def test_unknown_prediction_is_rejected():
  s = diffusion.make_schedule('linear', 10)
  with pytest.raises(ValueError, match="expected \\('eps', 'x0', 'v'\\)"):
    one = jnp.ones((1,), jnp.int32)
    diffusion.predict(lambda x, t: x, jnp.ones((1, 2)), one, s.abar(one), 'score')


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_clip_x0_bounds_samples_and_is_inactive_inside_the_range(sampler):
  s = diffusion.make_schedule('linear', 100)
  x_T = jax.random.normal(jax.random.PRNGKey(4), (64, 3))
  key = jax.random.PRNGKey(5)
  wide = _gaussian_denoiser(s, 0.0, 9.0)  # data std 3: most of it outside [-1, 1]
  plain = diffusion.sample(wide, s, x_T, sampler=sampler, num_steps=20, key=key)
  clipped = diffusion.sample(wide, s, x_T, sampler=sampler, num_steps=20, key=key, clip_x0=1.0)
  assert float(jnp.max(jnp.abs(plain))) > 2.0
  # DDIM ends on x0_hat itself; DDPM on the posterior mean, which mixes in a little of x_1.
  assert float(jnp.max(jnp.abs(clipped))) <= (1.0 if sampler == "ddim" else 1.1)
  # An x0_hat that never leaves the range is not changed by clipping.
  zero = lambda x, t: diffusion.eps_from_x0(x, jnp.zeros_like(x), s.abar(t))
  np.testing.assert_allclose(diffusion.sample(zero, s, x_T, sampler=sampler, num_steps=20, key=key, clip_x0=1.0),
                             diffusion.sample(zero, s, x_T, sampler=sampler, num_steps=20, key=key), atol=1e-6)


def _exact_flow(schedule, x_T, mu, var):
  """Where the samplers should land from x_T for data ~ N(mu, var I), in closed form.

  The probability-flow ODE of Gaussian data is the linear map that rescales the deviation from
  sqrt(abar) mu by the ratio of marginal standard deviations; the samplers follow it from
  t = T-1 to t = 0, then (their last step) take the exact x0_hat there."""
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  a0, aT = abar[0], abar[-1]
  x = np.asarray(x_T, np.float64)
  x_t0 = math.sqrt(a0) * mu + math.sqrt((a0 * var + 1 - a0) / (aT * var + 1 - aT)) * (x - math.sqrt(aT) * mu)
  return mu + math.sqrt(a0) * var / (a0 * var + 1 - a0) * (x_t0 - math.sqrt(a0) * mu)


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_dpm_solver_error_falls_as_the_square_of_the_step_count(prediction):
  s = diffusion.make_schedule('linear', 1000)
  mu, var = 0.3, 0.25
  fn = _as_prediction(s, _gaussian_denoiser(s, mu, var), prediction)
  x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 64))
  exact = _exact_flow(s, x_T, mu, var)
  rms = lambda out: float(np.sqrt(np.mean((np.asarray(out, np.float64) - exact) ** 2)))
  errors = {sampler: [rms(diffusion.sample(fn, s, x_T, sampler=sampler, num_steps=n, prediction=prediction,
                                           spacing='logsnr')) for n in (10, 20, 40)]
            for sampler in ('ddim', 'dpmpp2m')}
  order = {k: np.log2(np.asarray(e[:-1]) / np.asarray(e[1:])) for k, e in errors.items()}
  # measured: DDIM 0.99, 1.00; DPM-Solver++(2M) 1.11, 1.96 (the first step is first order)
  assert np.all(np.abs(order['ddim'] - 1.0) < 0.15), order
  assert order['dpmpp2m'][-1] > 1.8, order
  # 20 calls of the second-order solver beat 40 of DDIM by far (measured 7.2e-3 vs 3.4e-2)
  assert errors['dpmpp2m'][1] < 0.3 * errors['ddim'][2], errors


def test_dpm_solver_of_order_one_is_ddim():
  s = diffusion.make_schedule('cosine', 1000)
  fn = _gaussian_denoiser(s, 0.3, 0.25)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  np.testing.assert_allclose(diffusion.dpm_solver_sample(fn, s, x, num_steps=20, order=1, spacing='time'),
                             diffusion.ddim_sample(fn, s, x, num_steps=20), atol=1e-5)
  for prediction in diffusion.PREDICTIONS:
    f = _as_prediction(s, fn, prediction)
    np.testing.assert_allclose(diffusion.dpm_solver_invert(f, s, x, num_steps=20, order=1, spacing='time',
                                                             prediction=prediction),
                               diffusion.ddim_invert(f, s, x, num_steps=20, prediction=prediction), atol=1e-4)


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_dpm_solver_inversion_round_trip_beats_ddim_per_call(prediction):
  s, fn, x0 = _gaussian_problem(prediction)
  errors = {}
  for sampler in ('ddim', 'dpmpp2m'):
    for n in (10, 20, 50):
      x_T = diffusion.invert(fn, s, x0, sampler=sampler, num_steps=n, prediction=prediction, spacing='logsnr')
      back = diffusion.sample(fn, s, x_T, sampler=sampler, num_steps=n, prediction=prediction, spacing='logsnr')
      errors[sampler, n] = float(jnp.sqrt(jnp.mean((back - x0) ** 2)))
      if sampler == 'dpmpp2m' and n >= 20:
        assert abs(float(x_T.std()) - 1.0) < 0.05  # it reached the noise end
  # measured (eps, x0, v): DDIM 0.24, 0.13, 0.06; DPM-Solver++(2M) 0.015, 4e-4..5e-4, 2e-4..2e-5
  assert 1.6 < errors['ddim', 10] / errors['ddim', 20] < 2.4
  assert errors['dpmpp2m', 10] / errors['dpmpp2m', 20] > 8
  assert errors['dpmpp2m', 20] < 0.02 * errors['ddim', 50]


def test_logsnr_timesteps_are_uniform_in_lambda():
  for name in ('linear', 'cosine'):
    s = diffusion.make_schedule(name, 1000)
    for n in (2, 10, 20, 1000):
      seq = diffusion.sampling_timesteps(s, n, 'logsnr')
      assert len(seq) == n and seq[0] == 0 and seq[-1] == 999 and np.all(np.diff(seq) > 0)
  s = diffusion.make_schedule('linear', 1000)
  lam = diffusion.log_snr(np.asarray(s.alphas_cumprod)[diffusion.sampling_timesteps(s, 20, 'logsnr')])
  gaps = -np.diff(lam)
  # equal lambda gaps up to the rounding to integer timesteps (largest at the nearly clean end)
  assert np.all(np.abs(gaps[3:] / gaps.mean() - 1) < 0.1), gaps
  np.testing.assert_array_equal(diffusion.sampling_timesteps(s, 50, 'time'), diffusion.ddim_timesteps(1000, 50))
  with pytest.raises(ValueError, match='spacing'):
    diffusion.sampling_timesteps(s, 10, 'karras')


def test_dpm_solver_traces_and_clips_like_ddim():
  s = diffusion.make_schedule('linear', 100)
  fn = _gaussian_denoiser(s, 0.0, 9.0)  # data std 3
  x_T = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  x0, (x0_hats, ts) = diffusion.sample(fn, s, x_T, sampler='dpmpp2m', num_steps=10,
                                       trajectory_fn=lambda x, x0, t: (x0, t), clip_x0=1.0)
  assert x0_hats.shape == (10, 16, 5) and int(ts[0, 0]) == 99 and int(ts[-1, 0]) == 0
  np.testing.assert_allclose(np.asarray(x0_hats[-1]), np.asarray(x0), atol=1e-6)
  assert float(jnp.max(jnp.abs(x0))) <= 1.0
  np.testing.assert_array_equal(np.asarray(ts[:, 0]), diffusion.SamplerSpec(
      'linear', 100, 'dpmpp2m', 10, spacing='logsnr').timesteps_used())
  with pytest.raises(ValueError, match='eta must be 0'):
    diffusion.sample(fn, s, x_T, sampler='dpmpp2m', num_steps=10, eta=0.5, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize('sampler', diffusion.DETERMINISTIC_SAMPLERS)
def test_partial_inversion_and_regeneration_retrace_with_fewer_calls(sampler):
  s = diffusion.make_schedule('linear', 1000)
  mu, var = 0.3, 0.25
  fn = _gaussian_denoiser(s, mu, var)
  x0 = mu + math.sqrt(var) * jax.random.normal(jax.random.PRNGKey(1), (4, 48))
  spec = diffusion.SamplerSpec('linear', 1000, sampler, 20, spacing='logsnr')
  seq = spec.timesteps_used()[::-1]  # least noisy first
  trace = lambda x, x0_hat, t: t[0]
  mid, up = spec.invert(fn, x0, trajectory_fn=trace, stop=8)
  back, down = spec.run(fn, mid, trajectory_fn=trace, start=20 - 8)
  # 8 calls each way, at the 8 least noisy timesteps: up to seq[7] and back down from it
  np.testing.assert_array_equal(np.asarray(down), seq[7::-1])
  assert len(up) == 8 and int(up[-1]) == seq[6]
  abar = float(s.alphas_cumprod[seq[7]])
  # the probability-flow map of Gaussian data to that level, in closed form
  exact_mid = math.sqrt(abar) * mu + math.sqrt((abar * var + 1 - abar) / var) * (x0 - mu)
  assert float(jnp.sqrt(jnp.mean((mid - exact_mid) ** 2))) < (0.03 if sampler == 'dpmpp2m' else 0.2)
  # measured 0.0125 (dpmpp2m: its turn-around step is first order) and 0.135 (DDIM)
  assert float(jnp.sqrt(jnp.mean((back - x0) ** 2))) < (0.025 if sampler == 'dpmpp2m' else 0.25)
  # stop = num_steps / start = 0 are the full loops
  np.testing.assert_allclose(spec.invert(fn, x0, stop=20), spec.invert(fn, x0), atol=1e-5)
  with pytest.raises(ValueError, match='start'):
    spec.run(fn, mid, start=20)


def test_edge_weighted_loss_keeps_the_mean_weight_and_moves_it_onto_outlines():
  # x0-prediction off by delta on chosen pixels: the loss is delta^2 x the mean of the normalised
  # edge weights over those pixels (t and noise do not enter), so closed forms for each error map.
  s = diffusion.make_schedule('linear', 1000)
  x0 = np.zeros((4, 8, 8, 3), np.float32)
  x0[:, :, 4:] = 1.0  # a vertical edge between columns 3 and 4; g > 0 on 16 of 64 pixels
  delta, w = 0.1, 3.0
  # normalised weights: (1 + 4w) / (1 + w) = 13/4 on the outline, 1 / (1 + w) = 1/4 off it
  weights = np.asarray(diffusion.edge_weights(jnp.asarray(x0), w)) / (1 + w)

  def loss(where, edge_weight):
    err = np.zeros_like(x0)
    err[:, :, where] = delta
    fn = lambda x, t: jnp.asarray(x0 + err)
    return float(diffusion.diffusion_loss(fn, s, jnp.asarray(x0), jax.random.PRNGKey(0), 'x0',
                                          edge_weight=edge_weight))

  everywhere, outline, flat = list(range(8)), [3, 4], [0, 1, 2, 5, 6, 7]
  np.testing.assert_allclose(weights.mean(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(loss(everywhere, w), delta ** 2, rtol=1e-5)  # mean weight 1: the plain loss
  np.testing.assert_allclose(loss(everywhere, 0.0), delta ** 2, rtol=1e-5)
  np.testing.assert_allclose(loss(outline, w), delta ** 2 * (16 / 64) * (1 + 4 * w) / (1 + w), rtol=1e-5)
  np.testing.assert_allclose(loss(flat, w), delta ** 2 * (48 / 64) / (1 + w), rtol=1e-5)
  np.testing.assert_allclose(loss(outline, 0.0), delta ** 2 * 16 / 64, rtol=1e-5)


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_low_pass_guidance_sets_the_block_means_of_x0_hat_and_keeps_its_detail(prediction):
  # A denoiser whose x0_hat is a fixed image, in each parameterisation; the guided one's x0_hat has
  # (strength 1) the picture's 2x2 block means and the image's own detail, a mix at strength 1/2,
  # and is the plain one below min_t T.
  s = diffusion.make_schedule('cosine', 1000)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
  image = jax.random.uniform(k1, (2, 8, 8, 3), minval=-1, maxval=1)
  picture = jax.random.uniform(k2, (2, 4, 4, 3), minval=-1, maxval=1)
  x_t = jax.random.normal(k3, image.shape)

  def fn(x, t):
    return diffusion.target(s, image, t, diffusion.eps_from_x0(x, image, s.abar(t)), prediction)

  up = jnp.repeat(jnp.repeat(picture, 2, axis=1), 2, axis=2)
  detail = image - diffusion.low_pass(image, 4)
  for strength, min_t in ((1.0, 0.1), (0.5, 0.1)):
    guided = diffusion.low_pass_guided(fn, s, prediction, picture, image.shape, strength, min_t)
    t = jnp.array([500, 99])  # above and below min_t T = 100
    _, x0 = diffusion.predict(guided, x_t, t, s.abar(t), prediction)
    want = diffusion.low_pass(image, 4) + strength * (up - diffusion.low_pass(image, 4)) + detail
    tol = 1e-4 if prediction != 'eps' else 2e-3
    np.testing.assert_allclose(np.asarray(x0[0]), np.asarray(want[0]), atol=tol)
    np.testing.assert_allclose(np.asarray(x0[1]), np.asarray(image[1]), atol=tol)
  # a sampler's result carries the picture's block means when the last step is guided too
  spec = diffusion.SamplerSpec('cosine', 1000, 'dpmpp2m', 10, prediction=prediction, low_pass_strength=1.0)
  out = spec.run(spec.guided(fn, picture, x_t.shape), x_t)
  np.testing.assert_allclose(np.asarray(diffusion.low_pass(out, 4)), np.asarray(up), atol=1e-3)
  plain = diffusion.SamplerSpec('cosine', 1000, 'dpmpp2m', 10, prediction=prediction)
  assert plain.guided(fn, picture, x_t.shape) is fn
  # sides that are no multiple of the picture's (10 / 4): resizes instead of block means, most of the way
  odd = jax.random.uniform(k1, (2, 10, 10, 3), minval=-1, maxval=1)
  odd_t = jax.random.normal(k3, odd.shape)
  odd_fn = lambda x, t: diffusion.target(s, odd, t, diffusion.eps_from_x0(x, odd, s.abar(t)), prediction)
  t = jnp.array([500, 500])
  _, moved = diffusion.predict(diffusion.low_pass_guided(odd_fn, s, prediction, picture, odd.shape, 1.0, 0.1), odd_t, t,
                               s.abar(t), prediction)
  before = float(jnp.mean((diffusion.downsample_mean(odd, 4) - picture) ** 2))
  after = float(jnp.mean((diffusion.downsample_mean(moved, 4) - picture) ** 2))
  assert moved.shape == odd.shape and after < 0.4 * before, (before, after)  # 0.27 when written
  with pytest.raises(ValueError, match='picture'):
    spec.guided(fn, None, x_t.shape)
