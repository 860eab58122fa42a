"""The latent MLP (latent.architecture='mlp') learns a clustered p(s) whose clusters couple
distant prototypes (like informative s: one cluster per combination of attributes)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from patronus_jax.core import diffusion
from patronus_jax.models import latent as latent_lib

P = 12


def _clusters():
  """Four tight clusters in P dims whose coordinates 0 and P-1 (far apart) are coupled: each
  centre is a random +-1 pattern, and the corners agree in two clusters and disagree in two."""
  rng = np.random.default_rng(0)
  centres = rng.choice([-1.0, 1.0], size=(4, P))
  centres[:, 0] = [1, 1, -1, -1]
  centres[:, -1] = [1, -1, -1, 1]
  return centres.astype(np.float32)


def _train_and_sample(model, centres, steps=1000):
  schedule = diffusion.make_schedule('linear', 100)
  key = jax.random.PRNGKey(0)
  params = model.init(key, jnp.zeros((2, P)), jnp.zeros((2,), jnp.int32))
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    pick_key, noise_key, loss_key = jax.random.split(key, 3)
    x0 = jnp.asarray(centres)[jax.random.randint(pick_key, (128,), 0, 4)]
    x0 = x0 + 0.05 * jax.random.normal(noise_key, x0.shape)
    loss, grads = jax.value_and_grad(lambda p: diffusion.diffusion_loss(
        lambda z, t: model.apply(p, z, t), schedule, x0, loss_key))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for i in range(steps):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, i))
  spec = diffusion.SamplerSpec('linear', 100, 'ddim', 25, 0.0, 'eps')
  z_T = jax.random.normal(jax.random.PRNGKey(1), (256, P))
  return np.asarray(jax.jit(lambda p: spec.run(lambda z, t: model.apply(p, z, t), z_T))(params))


def test_latent_mlp_samples_the_clusters():
  centres = _clusters()
  samples = _train_and_sample(latent_lib.LatentMLP(width=128, depth=3), centres)
  dist = np.sqrt(((samples[:, None] - centres[None]) ** 2).sum(-1))
  nearest = dist.argmin(1)
  # On the clusters (centres lie >= 2 apart; spread 0.05 * sqrt(12) = 0.17), each about a quarter
  # (measured: median 0.10, 91% within 0.5).
  assert np.median(dist.min(1)) < 0.2
  assert np.mean(dist.min(1) < 0.5) > 0.8
  assert np.all(np.bincount(nearest, minlength=4) > 256 * 0.15)
  # The far-apart coordinates keep their coupling: corner signs as in the cluster they sit in.
  agree = np.sign(samples[:, 0]) == np.sign(samples[:, -1])
  assert np.mean(agree == (centres[nearest, 0] == centres[nearest, -1])) > 0.95


def test_latent_mlp_is_the_configured_architecture():
  from patronus_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load('configs/quickstart.py')
  model = latent_lib.latent_from_config(config)
  assert isinstance(model, latent_lib.LatentMLP) and model.width == 256 and model.depth == 3
  config = config_lib.load('configs/quickstart.py:paper')  # the official UNet1D
  assert isinstance(latent_lib.latent_from_config(config), latent_lib.LatentUNet1D)
