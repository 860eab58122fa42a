r"""Semantics of the prototype space (paper Sec. 4.2): reconstruction and variation,
extrapolation, interpolation, manipulation.

  # CPU, minutes: a tiny shapes model trained on the spot.
  python experiments/semantics.py --workdir=/tmp/sem_tiny --config=configs/shapes.py:tiny

  # The paper's CelebA / CheXpert figures from a trained (or imported) workdir; expects one
  # accelerator (GPU or TPU host); not timed here. Choose prototypes and amounts:
  python experiments/semantics.py --workdir=runs/celeba --config=configs/celeba.py \
      --config.interpret.sample_steps=100 --config.interpret.manipulate_prototypes='(3,17,42)' \
      --config.interpret.manipulate_amounts='(-1.0,-0.5,0.5,1.0,2.0)'

Figures in DIR/interpret/: reconstruction.png (own s + inverted x_T, then new x_T),
extrapolation.png (s_j along and beyond its observed range), interpolation.png (s linear,
x_T spherical), manipulation.png (s_j += amount x observed spread). Prints the numbers
behind them: inversion MSE, s-correlation of variations, Spearman correlation between the
requested and the re-encoded s_j (extrapolation, manipulation), interpolation smoothness.
"""

from __future__ import annotations

from patronus_jax import experiment


def show(report: dict) -> None:
  """Prints the numbers of the 'semantics' part of the interpret report."""
  sem = report['semantics']
  experiment.print_json('reconstruction and variation', sem['reconstruction'])
  experiment.print_json('extrapolation: Spearman(requested, re-encoded s_j) per prototype',
                        {r['prototype']: round(r['spearman'], 3) for r in sem['extrapolation']})
  experiment.print_json('manipulation: mean re-encoded s_j per amount',
                        {r['prototype']: dict(zip(r['amounts'], [round(v, 3) for v in r['mean_re_encoded']]))
                         for r in sem['manipulation']})
  experiment.print_json('interpolation', sem['interpolation'])
  experiment.print_json('summary', {'mean_extrapolation_spearman': sem['mean_extrapolation_spearman'],
                                    'seconds': sem['seconds'], 'model_calls': sem['model_calls']})


if __name__ == '__main__':
  experiment.main(('semantics',), show, default_config=experiment.repo_config(__file__, 'shapes.py:tiny'))
