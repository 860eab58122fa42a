r"""Semantics of the prototype space (paper Sec. 4.2): reconstruction and variation,
extrapolation, interpolation, manipulation.

  # CPU, minutes: a tiny shapes model trained on the spot.
  python experiments/semantics.py --workdir=/tmp/sem_tiny --config=configs/shapes.py:tiny

  # The paper's CelebA / CheXpert figures from a trained (or imported) workdir; expects one
  # accelerator (GPU or TPU host); not timed here. Choose prototypes and amounts:
  python experiments/semantics.py --workdir=runs/celeba --config=configs/celeba.py \
      --config.interpret.ddim_steps=100 --config.interpret.manipulate_prototypes='(3,17,42)' \
      --config.interpret.manipulate_amounts='(-1.0,-0.5,0.5,1.0,2.0)'

Figures in DIR/interpret/: reconstruction.png (own s + inverted x_T, then new x_T),
extrapolation.png (s_j along and beyond its observed range), interpolation.png (s linear,
x_T spherical), manipulation.png (s_j += amount x observed spread). Prints the numbers
behind them: inversion MSE, s-correlation of variations, Spearman correlation between the
requested and the re-encoded s_j (extrapolation, manipulation), interpolation smoothness.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs', 'shapes.py:tiny'),
    'Config file[:variant] of the model.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Experiment directory.', required=True)
_TRAIN = flags.DEFINE_bool('train', True, 'Train the model first if the workdir has no checkpoint.')


def main(argv):
  del argv
  from patronus_jax import experiment  # pylint: disable=g-import-not-at-top
  report = experiment.run_parts(_CONFIG.value, _WORKDIR.value, ('semantics',), train_missing=_TRAIN.value)
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
  app.run(main)
