r"""Emergence of prototypes and attributes along the sampling trajectory (paper Sec. 4.4 (b)).

  # CPU, minutes: a tiny shapes model trained on the spot.
  python experiments/emergence.py --workdir=/tmp/em_tiny --config=configs/shapes.py:tiny

  # The shapes result (background colour, a global low-frequency factor, settles before the
  # stripe texture, a local high-frequency one): a stage-1 + latent shapes model, then
  python experiments/emergence.py --workdir=/tmp/shapes_plain --config=configs/shapes.py \
      --config.interpret.sample_steps=20 --config.interpret.num_emergence_samples=128
  # (CPU, 2 cores: see the README's interpret section for the measured times.)

  # CelebA ("wearing red" before "curly hair"): one accelerator; not timed here.
  python experiments/emergence.py --workdir=runs/celeba --config=configs/celeba.py \
      --config.interpret.sample_steps=100 --config.interpret.num_emergence_samples=256

At every DDIM step the predicted x̂0 is encoded (s(t)) and classified by the workdir's
attribute classifier. A prototype emerges at the first step from which s_j stays within
`emergence_tolerance` x its observed spread of its final value; an attribute settles at the
first step from which x̂0's predicted class stays the final one. Prints the attribute ranking
with mean settling step (fraction of the trajectory) and 95% bootstrap CIs, the paired
difference between every two attributes, and the classifier-free ranking from the
prototypes that carry each attribute (eta^2 on held-out data).
"""

from __future__ import annotations

from patronus_jax import experiment


def show(report: dict) -> None:
  """Prints the numbers of the 'emergence' part of the interpret report."""
  em = report['emergence']
  if 'attributes' in em:
    experiment.print_json('attribute settling, chance-corrected (mean over steps of 1 - kappa) [95% CI]', {
        name: f"{em['attributes'][name]['settling']:.3f} "
              f"[{em['attributes'][name]['settling_ci'][0]:.3f}, {em['attributes'][name]['settling_ci'][1]:.3f}]"
        f" (raw per-trajectory settling {em['attributes'][name]['fraction']['mean']:.3f})"
        for name in em['attribute_ranking']})
    experiment.print_json('paired differences (first - second; negative: first settles earlier)',
                          em['pairwise_settling_difference'])
  if 'association_ranking' in em:
    experiment.print_json('classifier-free ranking (eta^2-weighted emergence of carrier prototypes)', {
        name: em['by_prototype_association'][name] for name in em['association_ranking']})
  experiment.print_json('summary', {'attribute_ranking': em.get('attribute_ranking'),
                                    'prototype_order': em['prototype_order'], 'source': em['source'],
                                    'num_trajectories': em['num_trajectories'], 'num_steps': em['num_steps'],
                                    'seconds': em['seconds'], 'model_calls': em['model_calls']})


if __name__ == '__main__':
  experiment.main(('emergence',), show, default_config=experiment.repo_config(__file__, 'shapes.py:tiny'))
