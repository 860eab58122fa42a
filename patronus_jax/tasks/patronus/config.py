"""The Patronus sections of the config: the networks, the diffusion process, stage-1 and
stage-2 training, and sampling (defaults: the paper's CelebA 64x64 model), with their checks."""

from __future__ import annotations

from patronus_jax.core.config import ConfigDict, one_of, require
from patronus_jax.core.diffusion import DETERMINISTIC_SAMPLERS, SAMPLERS, SPACINGS
from patronus_jax.core.training import LR_SCHEDULES
from patronus_jax.models.prototypes import DECODER_KINDS


def model_config() -> ConfigDict:
  """The Patronus networks (defaults: the paper's CelebA 64x64 model)."""
  return ConfigDict(dict(
      num_prototypes=100,
      # Prototype encoder: Conv+ReLU layers; `encoder_channels` excludes the image channels.
      encoder_channels=(32, 64, 64, 128),
      encoder_kernels=(3, 3, 3, 3),
      encoder_strides=(2, 1, 1, 1),
      encoder_paddings=(1, 0, 0, 0),
      activation='log',  # 'log': s = log((d+1)/(d+1e-4)); 'linear': s = -d
      # Conditional U-Net.
      base_channels=64,
      channel_mults=(1, 2, 4, 4),
      num_res_blocks=2,
      attention=(False, False, False, False),  # self-attention per level
      num_heads=4,
      dropout=0.1,
      time_mult=4,  # embedding width = time_mult * base_channels
      time_table_size=1000,  # rows of the frozen sinusoid table (official: 1000); >= timesteps
      remat=False,  # jax.checkpoint each residual block (memory for compute)
      # Beyond the paper (docs/patronus.md, "Prototypes that carry the image"); defaults: official.
      distance_norm='none',  # 'unit': L2-normalise features and prototypes, d in [0, 4] where s has gradient
      s_norm='none',  # 'layer': LayerNorm on s before the U-Net's s-embedding (stops prototypes duplicating)
      # per-prototype channel weights D softmax(a_j) in the distance (a_j learned, 0 at init = the
      # plain distance): a prototype can match one factor's channels and ignore the rest
      prototype_channel_weights=False,
      # their softmax(k a_j): k = sharpness (with Adam, k times the logits' learning rate); 1: plain
      prototype_channel_sharpness=1.0,
      # the last n prototypes read a second encoder that sees only the image's outlines (colour-blind
      # gradient magnitudes): they can stand for form but not for colour
      outline_prototypes=0,
      # their outline map rolled so that its centroid sits at the image centre: they see what the form
      # is, not where it is (needs outline_prototypes > 0)
      outline_centred=False,
      encoder_coords=False,  # CoordConv: (y, x) channels appended to the prototype encoder's input
      unet_coords=False,  # CoordConv for the U-Net's input, so that s can say where to draw
      s_film=False,  # s scales and shifts the U-Net blocks' normalised features (FiLM) instead of a bias
      s_decoder_size=16,  # side of the auxiliary decoder's image (used when train.s_decoder_weight > 0)
      # the auxiliary decoder: 'upsample' (dense to 4x4, upsampling convs) or 'broadcast' (s copied to
      # every pixel beside its coordinates: a spatial broadcast decoder)
      s_decoder_kind='upsample',
      s_decoder_width=64,  # the decoder's channels
      # the decoder's picture of s (resized to the image) is also the U-Net's input, beside x_t: s says
      # where and in which outline to draw through convolutions, not only through a per-channel vector
      # (needs train.s_decoder_weight > 0; docs/patronus.md)
      s_sketch=False,
  ))


def diffusion_config() -> ConfigDict:
  return ConfigDict(dict(
      timesteps=1000,
      schedule='linear',  # 'linear' (paper, 1e-4 -> 0.02 scaled by 1000/T) or 'cosine'
      prediction='eps',  # what the network predicts: 'eps' (paper), 'x0' or 'v' (sqrt(abar) eps - sqrt(1-abar) x0)
      # 'ddim', 'ddpm' or 'dpmpp2m' (DPM-Solver++(2M): deterministic, second order; at 15-20 steps
      # it matches DDIM at 50-100, see benchmarks/RESULTS.md)
      sampler='ddim',
      sample_steps=100,  # model calls of ddim / dpmpp2m (ddpm always uses every step)
      # dpmpp2m's timesteps: uniform in lambda = log(alpha/sigma) ('logsnr') or in t ('time'); ddim keeps
      # its official t-uniform strides. logsnr had 10-50x smaller error on both schedules (RESULTS.md).
      spacing='logsnr',
      eta=0.0,  # DDIM stochasticity for image sampling
      clip_x0=0.0,  # > 0: clip x0_hat to [-clip_x0, clip_x0] at every sampling step (0: official, unclipped)
      # > 0: min-SNR-gamma loss weighting of the image denoiser (Hang et al. 2023); 0: the paper's unweighted loss
      min_snr_gamma=0.0,
      # with min_snr_gamma: weight clip(SNR, floor, gamma) x x0-error; 1 keeps the noisiest steps at weight 1
      min_snr_floor=0.0,
      # > 0: the image denoiser's squared error weighs each pixel by 1 + this x its clean image's gradient
      # magnitude (relative to the image's mean), normalised to mean 1: outlines, where shapes
      # differ, count more than flat areas (not in the paper; 0: every pixel alike)
      edge_weight=0.0,
      # Classifier-free guidance on s when sampling or inverting (Patronus): out_u + w (out_c - out_u);
      # 1 = plain conditional (one call per step); other values need train.cond_dropout > 0 and
      # cost 2 network evaluations per step.
      guidance=1.0,
      # Patronus with the auxiliary decoder (train.s_decoder_weight > 0): > 0 pulls x0_hat at every sampling
      # and inversion step towards the decoder's low-resolution picture of s (the sketch): x0_hat's
      # (image side / model.s_decoder_size)-pixel block means move by this fraction (1: become) the
      # picture's. No extra network calls; the picture is made from s alone, so generations still come
      # from s. 0: the denoiser's own x0_hat (official). Not in the paper (docs/patronus.md).
      sketch_consistency=0.0,
      # ... only at t >= this fraction of timesteps: below it eps_hat re-derived from a moved x0_hat divides
      # by a small sigma and the inversion's first steps blow up
      sketch_consistency_min_t=0.1,
  ))


def train_config() -> ConfigDict:
  """Stage 1: joint prototype encoder + U-Net training."""
  return ConfigDict(dict(
      batch_size=64,  # global, split over all devices
      num_steps=100_000,
      learning_rate=1e-5,
      warmup_steps=0,
      lr_schedule='constant',  # after warm-up: 'constant' (paper) or 'cosine' (decays to 0 at num_steps)
      weight_decay=0.01,  # torch.optim.AdamW default, as the official training
      grad_clip=0.0,  # global-norm clipping; 0 disables
      ema_decay=0.9999,  # 0 disables the EMA (sampling then uses the raw parameters)
      dtype='float32',  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
      distinct_loss_weight=0.0,  # prototype-distinct loss (official default: off)
      distinct_margin=0.2,
      # > 0: auxiliary loss ||decoder(s) - x0 averaged to model.s_decoder_size||^2 with this weight, which
      # asks s for the image's layout directly (not in the paper; docs/patronus.md)
      s_decoder_weight=0.0,
      # > 0: that loss weights each pixel by 1 + this x its target's gradient magnitude (relative to the
      # image's mean): outlines, where shapes differ, count more than flat areas
      s_decoder_edge_weight=0.0,
      cond_dropout=0.0,  # probability of training an example without s (the unconditional model for guidance)
      # x the learning rate of the prototype network (encoder + prototype vectors) against the U-Net's
      # (not in the paper: one rate for both; docs/patronus.md)
      prototype_lr_scale=1.0,
      # > 0: this weight x the mean squared correlation between prototypes over the batch, so that no
      # two prototypes carry the same factor (not in the paper; docs/patronus.md)
      s_decorrelation_weight=0.0,
      # > 0: the decorrelation term counts only the excess of |corr| over this (near-copies only)
      s_decorrelation_threshold=0.0,
      # > 0: its correlations (and the spread term's stds) also count the s of this many earlier
      # examples, kept without gradient in the train state: a low threshold then sees dependence, not noise
      s_decorrelation_memory=0,
      # > 0: this weight x the spread term: prototypes whose std falls below s_spread_floor x the widest
      # prototype's pay, so that the decorrelation term cannot be met by silencing prototypes
      s_spread_weight=0.0,
      s_spread_floor=0.2,
      # > 0: this weight x the mean distance of every patch to its nearest prototype (k-means of the
      # patches), so that prototypes sit on the kinds of patch that occur (not in the paper; docs/patronus.md)
      patch_cluster_weight=0.0,
      # > 0: this weight x the Hessian penalty (Peebles et al. 2020) of the decoder of s: the squared
      # mixed second derivatives of its picture in s, so that each prototype changes the picture
      # independently of the others (not in the paper; docs/patronus.md)
      s_decoder_hessian_weight=0.0,
      s_decoder_hessian_step=0.1,  # its finite-difference step, as a fraction of each prototype's batch std
      # > 0: this weight x the edit-cycle loss: s with one prototype changed is drawn by the decoder of s and
      # read again by the prototype network, which must return the edited s (not in the paper; docs/patronus.md)
      edit_cycle_weight=0.0,
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      sample_every=0,  # sample grid to PNG/TensorBoard every M steps; 0 disables
      num_sample_images=16,
  ))


def latent_config() -> ConfigDict:
  """Stage 2: the latent DDIM over prototype activations (official UNet1D)."""
  return ConfigDict(dict(
      # 'unet1d' (official) or 'mlp' (models.latent.LatentMLP: mixes all prototypes; mlp_* below)
      architecture='unet1d',
      mlp_width=256,
      mlp_depth=3,
      base_channels=64,
      channel_mults=(1, 2, 4),
      num_res_blocks=3,
      dropout=0.2,
      timesteps=100,
      schedule='linear',
      skip_connections=False,  # the official UNet1D concatenates none
      normalize=True,  # standardise s with training-set mean/std (saved with the checkpoint)
      batch_size=256,
      num_steps=20_000,
      learning_rate=1e-4,
      warmup_steps=0,
      lr_schedule='constant',  # after warm-up: 'constant' (official) or 'cosine'
      grad_clip=0.0,
      ema_decay=0.0,
      eta=0.1,  # DDIM stochasticity of the latent sampler (must be 0 for dpmpp2m)
      sampler='ddim',  # 'ddim' or 'dpmpp2m', as diffusion.sampler
      sample_steps=100,
      spacing='logsnr',  # dpmpp2m's timesteps, as diffusion.spacing
      log_every=100,
      checkpoint_every=2000,
  ))


def sample_config() -> ConfigDict:
  return ConfigDict(dict(
      num_samples=64,  # unconditional samples (s from the latent model)
      num_reconstructions=16,  # conditional samples (s of real images, new noise)
      batch_size=64,
  ))


def validate_patronus_sections(config: ConfigDict) -> None:
  """Checks the model, diffusion, train, latent and mesh values (fields and types are checked
  against the schema first); ConfigError names the first impossible one."""
  d = config.diffusion
  one_of(config, 'model.activation', ('log', 'linear'))
  one_of(config, 'model.distance_norm', ('none', 'unit'))
  one_of(config, 'model.s_norm', ('none', 'layer'))
  one_of(config, 'model.s_decoder_kind', DECODER_KINDS)
  one_of(config, 'diffusion.schedule', ('linear', 'cosine'))
  one_of(config, 'latent.schedule', ('linear', 'cosine'))
  one_of(config, 'latent.architecture', ('unet1d', 'mlp'))
  one_of(config, 'diffusion.prediction', ('eps', 'x0', 'v'))
  require(config.model_type != 'bcos' or d.prediction in ('eps', 'x0'),
           "config field 'diffusion.prediction' must be 'eps' or 'x0' for model_type='bcos' "
           f"(its output preconditioning is defined for those), got {d.prediction!r}")
  one_of(config, 'diffusion.sampler', SAMPLERS)
  one_of(config, 'latent.sampler', DETERMINISTIC_SAMPLERS)
  one_of(config, 'diffusion.spacing', SPACINGS)
  one_of(config, 'latent.spacing', SPACINGS)
  for section in ('diffusion', 'latent'):
    c = config[section]
    require(c.sampler != 'dpmpp2m' or c.eta == 0.0,
            f"config field '{section}.eta' must be 0 with {section}.sampler='dpmpp2m' (a deterministic "
            f"solver), got {c.eta}; use sampler 'ddim' for eta > 0")
  one_of(config, 'train.dtype', ('float32', 'bfloat16'))
  one_of(config, 'train.lr_schedule', LR_SCHEDULES)
  one_of(config, 'latent.lr_schedule', LR_SCHEDULES)
  _validate_architecture(config)
  _validate_diffusion(config)
  _validate_training(config)
  if config.model_type == 'patronus':
    _check_image_size(config)


def _validate_architecture(config: ConfigDict) -> None:
  m, d, t, lt = config.model, config.diffusion, config.train, config.latent
  n_enc = len(m.encoder_channels)
  require(n_enc > 0, "config field 'model.encoder_channels' must name at least one layer")
  for field in ('encoder_kernels', 'encoder_strides', 'encoder_paddings'):
    require(len(m[field]) == n_enc,
             f"config field 'model.{field}' has {len(m[field])} entries but "
             f"'model.encoder_channels' has {n_enc}: one per encoder layer is expected")
  require(m.prototype_channel_sharpness > 0,
          f"config field 'model.prototype_channel_sharpness' is {m.prototype_channel_sharpness}: "
          'a positive scale of the channel weights\' logits is expected (1: the plain softmax)')
  require(0 <= m.outline_prototypes <= m.num_prototypes,
          f"config field 'model.outline_prototypes' is {m.outline_prototypes}: "
          f"between 0 and model.num_prototypes ({m.num_prototypes}) is expected")
  require(not m.outline_centred or m.outline_prototypes > 0,
          "config field 'model.outline_centred' is True but 'model.outline_prototypes' is 0: it centres the "
          'outline prototypes\' input, so at least one outline prototype is expected')
  require(len(m.attention) == len(m.channel_mults),
           f"config field 'model.attention' has {len(m.attention)} entries but "
           f"'model.channel_mults' has {len(m.channel_mults)}: one per level is expected")
  for name, value in (('model.num_prototypes', m.num_prototypes), ('model.base_channels', m.base_channels),
                      ('model.num_res_blocks', m.num_res_blocks), ('diffusion.timesteps', d.timesteps),
                      ('train.batch_size', t.batch_size), ('latent.batch_size', lt.batch_size),
                      ('latent.timesteps', lt.timesteps), ('latent.mlp_width', lt.mlp_width),
                      ('latent.mlp_depth', lt.mlp_depth), ('data.image_size', config.data.image_size)):
    require(value > 0, f"config field '{name}' must be positive, got {value}")
  for name, value in (('train.num_steps', t.num_steps), ('latent.num_steps', lt.num_steps)):
    require(value >= 0, f"config field '{name}' must be >= 0, got {value}")
  require(m.base_channels % 8 == 0,
           f"config field 'model.base_channels' must be a multiple of 8 (GroupNorm(8)), got {m.base_channels}")
  require(lt.base_channels % 8 == 0,
           f"config field 'latent.base_channels' must be a multiple of 8 (GroupNorm(8)), got {lt.base_channels}")
  heads_ok = all((m.base_channels * k) % m.num_heads == 0 for k in m.channel_mults)
  require(heads_ok, f"'model.num_heads'={m.num_heads} must divide every level's channel count")
  require(0.0 <= m.dropout < 1.0, f"config field 'model.dropout' must be in [0, 1), got {m.dropout}")


def _validate_diffusion(config: ConfigDict) -> None:
  m, d, lt = config.model, config.diffusion, config.latent
  require(m.time_table_size >= d.timesteps,
           f"config field 'model.time_table_size' ({m.time_table_size}) must be >= "
           f"'diffusion.timesteps' ({d.timesteps})")
  require(0 < d.sample_steps <= d.timesteps,
           f"config field 'diffusion.sample_steps' must be in 1..{d.timesteps}, got {d.sample_steps}")
  require(d.min_snr_gamma >= 0.0,
           f"config field 'diffusion.min_snr_gamma' must be >= 0 (0: unweighted loss), got {d.min_snr_gamma}")
  require(d.min_snr_floor == 0.0 or 0.0 < d.min_snr_floor <= d.min_snr_gamma,
           "config field 'diffusion.min_snr_floor' must be 0 or in (0, diffusion.min_snr_gamma] "
           f"(it needs min_snr_gamma > 0), got floor {d.min_snr_floor} with gamma {d.min_snr_gamma}")
  require(0.0 <= d.sketch_consistency <= 1.0,
          f"config field 'diffusion.sketch_consistency' must be in [0, 1] (0: off), got {d.sketch_consistency}")
  require(0.0 <= d.sketch_consistency_min_t < 1.0,
          f"config field 'diffusion.sketch_consistency_min_t' must be in [0, 1), got {d.sketch_consistency_min_t}")
  if d.sketch_consistency > 0:
    require(config.model_type == 'patronus',
            f"config field 'diffusion.sketch_consistency' is for model_type='patronus' (the decoder's picture of s), "
            f"got model_type={config.model_type!r}; set it to 0")
    require(config.train.s_decoder_weight > 0,
            "config field 'diffusion.sketch_consistency' needs the decoder's picture of s: set "
            f"'train.s_decoder_weight' > 0 (got {config.train.s_decoder_weight}) or 'diffusion.sketch_consistency' 0")
  require(d.edge_weight >= 0.0,
          f"config field 'diffusion.edge_weight' must be >= 0 (0: every pixel alike), got {d.edge_weight}")
  require(d.guidance >= 0.0, f"config field 'diffusion.guidance' must be >= 0 (1: no guidance), got {d.guidance}")
  require(d.guidance == 1.0 or config.train.cond_dropout > 0.0,
          f"config field 'diffusion.guidance'={d.guidance} needs a model trained with train.cond_dropout > 0 "
          '(without it the unconditional half of guidance was never trained); use 1 or train with dropout')
  require(d.clip_x0 >= 0.0, f"config field 'diffusion.clip_x0' must be >= 0 (0: no clipping), got {d.clip_x0}")
  require(0 < lt.sample_steps <= lt.timesteps,
           f"config field 'latent.sample_steps' must be in 1..{lt.timesteps}, got {lt.sample_steps}")


def _validate_training(config: ConfigDict) -> None:
  t, lt = config.train, config.latent
  require(0.0 <= t.ema_decay < 1.0, f"config field 'train.ema_decay' must be in [0, 1), got {t.ema_decay}")
  require(0.0 <= t.cond_dropout < 1.0, f"config field 'train.cond_dropout' must be in [0, 1), got {t.cond_dropout}")
  require(t.prototype_lr_scale > 0,
          f"config field 'train.prototype_lr_scale' must be positive (1: the U-Net's rate), got {t.prototype_lr_scale}")
  require(t.s_decorrelation_weight >= 0.0,
          f"config field 'train.s_decorrelation_weight' must be >= 0 (0: off), got {t.s_decorrelation_weight}")
  require(0.0 <= t.s_decorrelation_threshold < 1.0,
          f"config field 'train.s_decorrelation_threshold' must be in [0, 1), got {t.s_decorrelation_threshold}")
  require(isinstance(t.s_decorrelation_memory, int) and t.s_decorrelation_memory >= 0,
          f"config field 'train.s_decorrelation_memory' must be an integer >= 0 (earlier examples kept; 0: "
          f"the batch alone), got {t.s_decorrelation_memory!r}")
  require(t.s_spread_weight >= 0.0,
          f"config field 'train.s_spread_weight' must be >= 0 (0: off), got {t.s_spread_weight}")
  require(0.0 < t.s_spread_floor <= 1.0,
          f"config field 'train.s_spread_floor' must be in (0, 1] (a fraction of the widest prototype's std), "
          f"got {t.s_spread_floor}")
  for field in ('s_decoder_hessian_weight', 'edit_cycle_weight'):  # terms that run the decoder of s
    value = t[field]
    require(value >= 0.0, f"config field 'train.{field}' must be >= 0 (0: off), got {value}")
    require(value == 0.0 or t.s_decoder_weight > 0,
            f"config field 'train.{field}' needs the decoder of s: set 'train.s_decoder_weight' > 0 "
            f"(got {t.s_decoder_weight}) or 'train.{field}' 0")
  require(t.s_decoder_hessian_step > 0.0,
          f"config field 'train.s_decoder_hessian_step' must be positive, got {t.s_decoder_hessian_step}")
  require(t.patch_cluster_weight >= 0.0,
          f"config field 'train.patch_cluster_weight' must be >= 0 (0: off), got {t.patch_cluster_weight}")
  require(0.0 <= lt.ema_decay < 1.0, f"config field 'latent.ema_decay' must be in [0, 1), got {lt.ema_decay}")
  require(config.mesh.model >= 1, f"config field 'mesh.model' must be >= 1, got {config.mesh.model}")
  for name, value in (('train.learning_rate', t.learning_rate), ('latent.learning_rate', lt.learning_rate)):
    require(value > 0, f"config field '{name}' must be positive (a negative rate ascends the loss), got {value}")
  for name, value in (('train.log_every', t.log_every), ('train.checkpoint_every', t.checkpoint_every),
                      ('latent.log_every', lt.log_every), ('latent.checkpoint_every', lt.checkpoint_every),
                      ('train.keep_checkpoints', t.keep_checkpoints)):
    require(value >= 1, f"config field '{name}' must be >= 1, got {value}")
  require(t.sample_every >= 0, f"config field 'train.sample_every' must be >= 0 (0: off), got {t.sample_every}")


def _check_image_size(config: ConfigDict) -> None:
  """The U-Net halves the image between levels and concatenates skips on the way up, and the
  prototype encoder must leave at least one feature position: both depend on data.image_size."""
  m, size = config.model, config.data.image_size
  factor = 2 ** (len(m.channel_mults) - 1)
  require(size % factor == 0,
          f"config field 'data.image_size' must be divisible by {factor} (2 ** (levels - 1) for the "
          f"{len(m.channel_mults)} levels of 'model.channel_mults'), got {size}")
  features = size
  for k, s, p in zip(m.encoder_kernels, m.encoder_strides, m.encoder_paddings):
    features = (features + 2 * p - k) // s + 1
  require(features >= 1, f"config field 'data.image_size' ({size}) is too small for the prototype encoder "
          "(model.encoder_kernels/strides/paddings leave no feature position)")
  require(config.model.s_decoder_width >= 1,
          f"config field 'model.s_decoder_width' must be >= 1, got {config.model.s_decoder_width}")
  require(config.train.s_decoder_weight >= 0.0,
          f"config field 'train.s_decoder_weight' must be >= 0 (0: off), got {config.train.s_decoder_weight}")
  require(config.train.s_decoder_edge_weight >= 0.0,
          f"config field 'train.s_decoder_edge_weight' must be >= 0 (0: every pixel alike), "
          f"got {config.train.s_decoder_edge_weight}")
  d = m.s_decoder_size
  require(not m.s_sketch or config.train.s_decoder_weight > 0,
          "config field 'model.s_sketch' needs the decoder it draws with: set 'train.s_decoder_weight' > 0 "
          f"(got {config.train.s_decoder_weight})")
  if config.train.s_decoder_weight > 0:
    require(d >= 4 and d & (d - 1) == 0 and d <= size,
            f"config field 'model.s_decoder_size' must be a power of two in 4..data.image_size ({size}), got {d}")
