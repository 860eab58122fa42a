"""The quickstart: the built-in shapes data and a model that trains on a 2-core CPU in minutes.

  python -m patronus_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

runs stage 1, stage 2, sampling, interpretation and evaluation, writing samples, prototype
figures and metrics into the workdir (about 15 minutes on 2 CPU cores, install included; stages 1
and 2 and sampling take most of them, see README). Same architecture family as the
paper's model, scaled down and trained briefly; statistics (emergence, diagnosis, metrics) are
computed on small sample counts and are a demonstration, not results (configs/shapes.py is the
full-length shapes run). Variant ':tiny' is the test-sized smoke run; ':paper' keeps the paper's
prototype geometry (without shapes.py's informative_s switches), for comparison.

Two departures from the paper's DDPM settings buy sample quality in a short CPU run; both come
from configs/shapes.py (config fields; the paper's configs keep 'eps' and 'linear'):
  - v-prediction: an eps-model turns its output into x0_hat by dividing by sqrt(abar_t), so at
    high noise a small eps error becomes a huge x0 error (after 900 steps its x0_hat at t=999
    was off by MSE 210 and the samples were colour noise; a v-model's was 0.09).
  - the cosine schedule (Nichol & Dhariwal 2021), which spends fewer training steps on
    near-pure noise at 32x32.
"""

import os

from patronus_jax import config as config_lib

SHAPES = os.path.join(os.path.dirname(__file__), 'shapes.py')


def get_config(arg=None):
  config = config_lib.config_from_file(f'{SHAPES}:{arg or ""}')  # shapes.py's get_config(arg)
  config.name = 'quickstart'
  if arg and 'tiny' in arg.split(','):
    return config
  config_lib.config_module(SHAPES).quick_budget(config)
  t = config.train
  # 8,000 stage-1 steps instead of quick_budget's 4,000: with the decoder and coordinates, the
  # keep rates of colour / size / position / stripes rose from .88/.85/.81/.77 to .97/.97/1.0/1.0
  # and TAD from 0.94 to 1.14 (docs/results.md); stages 1, 2 and sampling took 11 minutes at
  # ee6897a, and FiLM (shapes.py's informative_s) adds ~11% per step.
  # 7,600 since 2026-12-05: the whole quickstart took 896-907 s of the 900 allowed (install
  # included) at 8,000 on two fresh clones; the learning rate is constant after warm-up, so this is
  # that run stopped 400 steps (~32 s) earlier. Checkpoints every 1,000 steps (each save ~0.8 s).
  t.num_steps = 7600
  t.log_every = 50
  t.checkpoint_every = 1000
  config.latent.checkpoint_every = 300
  # Sampling and evaluation with DPM-Solver++(2M) at 15 calls instead of DDIM at 25: on the same
  # trained workdir fd_classifier 74.8 / 175.7 against 72.9 / 180.7 (conditional / unconditional),
  # keep rates and edit success within 0.02, s-faithfulness 0.899 against 0.916, evaluation 0.67x the
  # time (docs/results.md, "Semantics scorecard").
  config.diffusion.sampler = 'dpmpp2m'
  config.diffusion.sample_steps = 15
  config.sample.num_samples = 64
  config.sample.num_reconstructions = 16
  ic = config.interpret
  # The prototype, reconstruction and manipulation figures start from inverted noise. DDIM inversion
  # needed 50 steps on this short-trained model (at 10 the inverted noise did not regenerate the
  # held-out image); DPM-Solver++(2M) inverts and regenerates at 15 with a 7x smaller round-trip
  # error than DDIM at 50 (benchmarks/RESULTS.md), 3.3x fewer network calls for every figure.
  ic.sampler = 'dpmpp2m'
  ic.sample_steps = 15
  ic.num_eval_images = 256
  ic.num_visualize_images = 6
  ic.num_consistency_images = 4
  ic.num_semantic_images = 3
  ic.num_variations = 2
  ic.manipulate_prototypes = (0, 1, 2, 3)
  ic.num_interpolation_pairs = 2
  ic.interpolation_steps = 5
  ic.num_emergence_samples = 32
  ic.num_diagnosis_samples = 16
  ic.diagnosis_bootstrap = 300
  ev = config.evaluate
  ev.num_samples = 128
  # 192 held-out images for the semantics scorecard instead of 256: its first 16 choose each
  # attribute's edited prototype (31 x 16 generations), which costs what the 64 images saved cost.
  ev.semantics_images = 192
  ev.fid_num_real = 500
  ev.probe_max_examples = 500
  ev.tad_max_examples = 500
  ev.dci_max_examples = 500
  ev.dci_num_estimators = 30
  return config
