r"""Prototype visualisation and consistency (paper Sec. 3.3, Fig. "Prototype visualization").

  # CPU, minutes: a tiny shapes model trained on the spot, then its prototypes.
  python experiments/prototype_visualization.py --workdir=/tmp/vis_tiny --config=configs/shapes.py:tiny

  # The paper's figure: a trained CelebA workdir (or one imported from an official checkpoint
  # with `python -m patronus_jax.convert`), 100 prototypes, 20 random test images each (as the
  # official script), 100 DDIM steps: (1 + 100) x 20 regenerations + 20 inversions = 204,000
  # U-Net calls at 64x64. Expects one accelerator (a GPU or TPU host); not timed here.
  python experiments/prototype_visualization.py --workdir=runs/celeba --config=configs/celeba.py \
      --config.interpret.sample_steps=100 --config.interpret.num_visualize_images=20

For every prototype j: s_j of held-out images gives the plausible maximum; each image is
DDIM-inverted under its own s, regenerated from the same x_T with s_j at the maximum, and
re-encoded; the regeneration with the highest new s_j, its argmin patch and that patch's
receptive-field box make one column of DIR/interpret/prototypes.png, and the same prototype
over several images is DIR/interpret/consistency/prototype_XXX.png. Prints, per prototype,
the mean re-encoded s_j before and after raising it (the numbers are in
DIR/interpret/visualize.json and report.json).
"""

from __future__ import annotations

from patronus_jax import experiment


def show(report: dict) -> None:
  """Prints the numbers of the 'visualize' part of the interpret report."""
  vis = report['visualize']
  rows = [{k: p[k] for k in ('prototype', 'target', 'mean_s_reconstruction', 'mean_s_raised', 'mean_gain',
                             'fraction_raised', 'best_box')} for p in vis['prototypes']]
  experiment.print_json('prototype visualisation (per prototype)', rows)
  experiment.print_json('summary', {'mean_gain': vis['mean_gain'],
                                    'fraction_prototypes_raised': vis['fraction_prototypes_raised'],
                                    'seconds': vis['seconds'], 'model_calls': vis['model_calls'],
                                    'figures': sorted(vis['figures'])[:3] + ['...']})


if __name__ == '__main__':
  experiment.main(('visualize',), show, default_config=experiment.repo_config(__file__, 'shapes.py:tiny'))
