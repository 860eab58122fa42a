r"""Shortcut diagnosis (paper Sec. 4.4 (a)): which attributes move when a prototype is edited.

  # CPU, minutes: a tiny shapes model with the planted colour -> shape bias, trained on the spot
  # (too small to learn much: the run shows the mechanics, not the finding).
  python experiments/shortcut_diagnosis.py --workdir=/tmp/diag_tiny --config=configs/shapes.py:bias,tiny

  # The shapes result: one model trained with the planted bias, one without (CPU, 2 cores: see
  # the README's interpret section for the training lengths and the measured times).
  python experiments/shortcut_diagnosis.py --workdir=/tmp/shapes_bias --config=configs/shapes.py:bias \
      --config.interpret.sample_steps=20 --config.interpret.num_diagnosis_samples=48 --notrain
  python experiments/shortcut_diagnosis.py --workdir=/tmp/shapes_plain --config=configs/shapes.py \
      --config.interpret.sample_steps=20 --config.interpret.num_diagnosis_samples=48 --notrain

  # The paper's CelebA hair colour <-> smile: one accelerator; not timed here.
  python experiments/shortcut_diagnosis.py --workdir=runs/celeba_bias --config=configs/celeba_bias.py \
      --config.interpret.sample_steps=100 --config.interpret.num_diagnosis_samples=128

For every prototype, s_j is set to the low and the high end of its observed held-out range
and N held-out images are regenerated from their own DDIM-inverted x_T (all other s_k kept):
paired counterfactuals, judged by the workdir's attribute classifier (held-out accuracy
printed). An attribute moves when its mean probability change is significant (Bonferroni-
corrected paired z test) and at least `diagnosis_min_effect`; the one that moves most is the
attribute the prototype controls; any other moving by >= `diagnosis_relative_threshold` x as
much is a suspected learned correlation. Prints the suspected attribute pairs with the edits
that show them (effect sizes = probability mass moved, bootstrap CIs).
"""

from __future__ import annotations

from patronus_jax import experiment


def show(report: dict) -> None:
  """Prints the numbers of the 'diagnosis' part of the interpret report."""
  d = report['diagnosis']
  if 'skipped' in d:
    print(f"diagnosis skipped: {d['skipped']}")
    return
  experiment.print_json('attribute classifier (held-out accuracy)', d['classifier'].get('accuracy'))
  experiment.print_json('what each prototype controls (largest effect over both directions)', {
      p['prototype']: f"{p['controls']} ({p['controls_effect']:.2f})" for p in d['prototypes']})
  experiment.print_json('findings (co-moved attributes)', [
      f"p{f['prototype']} {f['direction']}: {f['controlled']}->{f['controlled_towards']} "
      f"{f['controlled_effect']:.2f} {[round(v, 2) for v in f['controlled_effect_ci']]}; "
      f"{f['co_moved']}->{f['towards']} {f['effect']:.2f} {[round(v, 2) for v in f['effect_ci']]} "
      f"(z={f['z']:.1f}, {f['relative_effect']:.2f} x controlled)" for f in d['findings']])
  experiment.print_json('summary', {'suspected_pairs': d['suspected_pairs'] or 'none',
                                    'num_samples': d['num_samples'], 'z_critical': d['z_critical'],
                                    'bystander_effect': d['bystander_effect'],
                                    'seconds': d['seconds'], 'model_calls': d['model_calls']})


if __name__ == '__main__':
  experiment.main(('diagnosis',), show, default_config=experiment.repo_config(__file__, 'shapes.py:bias,tiny'))
