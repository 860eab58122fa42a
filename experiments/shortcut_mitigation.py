r"""Shortcut mitigation, end to end: train, diagnose, mitigate (every method of
`mitigation.methods`), diagnose again; the table.

  # shapes with the planted colour -> shape bias (0.95), quickstart-sized (stage 1: 4,000 steps of
  # batch 8, ~6 min alone on 2 CPU cores; each method fine-tunes 1,000 steps = 25 %; four
  # diagnoses of 128 samples; 43 min in all on 2 cores shared with another job):
  python experiments/shortcut_mitigation.py --workdir=runs/mitigation_bias --config=configs/shapes.py:bias,quick
  # the same without the bias: the diagnosis names no pair, the mode changes nothing
  python experiments/shortcut_mitigation.py --workdir=runs/mitigation_plain --config=configs/shapes.py:quick

Runs `--mode=train`, `train_latent` and `mitigate` on the workdir (each skips what is done), then
prints one row per model from DIR/mitigation/report.json: the suspected pairs its diagnosis names,
per edit that showed a pair the co-moved attribute's effect (probability mass moved, 95 % bootstrap
CI) and its reduction, the edit success of the controlled attribute (how often its classifier label
flips under the edit), fd_classifier of unconditional samples, and the fine-tuning cost; then per
model how often a held-out image's B comes back when it is regenerated from its s, for the combinations
of the pair that the training data hold rarely and for the common ones (a shortcut keeps the common
ones and turns the rare ones into common ones; cured, the two rates meet).
"""

from __future__ import annotations

import os
import time

from absl import flags

from patronus_jax import experiment
from patronus_jax import main as main_lib
from patronus_jax.core import files

FLAGS = flags.FLAGS


def _pairs(summary: dict) -> str:
  return ', '.join(' <-> '.join(p) for p in summary['suspected_pairs']) or 'none'


def _effect(e: dict) -> str:
  return f"{e['effect']:.2f} [{e['effect_ci'][0]:.2f}, {e['effect_ci'][1]:.2f}]"


def table(report: dict) -> str:
  """The before / after table of a mitigation report (markdown)."""
  before = report['before']
  if not report['mitigated']:
    return (f"| model | suspected pairs |\n|---|---|\n| original | {_pairs(before)} |\n\n"
            f"{report['reason']}")
  lines = ['| model | suspected pairs | edit | co-moved effect [95% CI] | reduction | edit success of A | '
           'fd_classifier (uncond.) | fine-tuning | targets met |', '|---' * 9 + '|']
  fd0 = before['sample_quality']['fd_classifier']
  first = next(iter(report['methods'].values()))['comparison']['edits']
  for i, e in enumerate(first):
    b = e['co_moved_before']
    lines.append(f"| original | {_pairs(before) if i == 0 else ''} | p{e['prototype']} {e['direction']}: "
                 f"{e['controlled']} -> {e['co_moved']} | {_effect(b)} | | "
                 f"{e['edit_success_before']:.2f} | {fd0:.1f} | | |")
  for method, r in report['methods'].items():
    c, ft = r['comparison'], r['fine_tuning']
    met = [k for k, v in c['targets'].items() if v]
    for i, e in enumerate(c['edits']):
      a = e['co_moved_after']
      lines.append(
          f"| {method} | {_pairs(r['after']) if i == 0 else ''} | p{e['prototype']} {e['direction']} | "
          f"{_effect(a)} | {100 * e['co_moved_reduction']:.0f}% | "
          f"{e['edit_success_after']:.2f} ({100 * (e['edit_success_ratio'] - 1):+.0f}%) | "
          f"{r['sample_quality']['fd_classifier']:.1f} ({100 * (c['fd_classifier_ratio'] - 1):+.0f}%) | "
          f"{ft['steps']} steps ({100 * ft['cost_fraction']:.0f}%), {ft['seconds']:.0f} s | "
          f"{len(met)}/{len(c['targets'])}: {', '.join(met) or '-'} |")
  return '\n'.join(lines) + f"\n\nselected: {report['selected_method']}"


def rare_table(report: dict) -> str:
  """Regenerations of held-out images from their s (markdown): per pair and model, how often B comes back
  for the combinations the training data hold rarely and for the common ones, and how often a rare one
  comes back with its A's usual B ('' when the report has none)."""
  rows = [('original', report['before'].get('rare_combinations'))]
  rows += [(m, r['after'].get('rare_combinations')) for m, r in report.get('methods', {}).items()]
  if not report.get('mitigated') or not rows[0][1]:
    return ''
  lines = ['| model | pair | rare: B kept | common: B kept | rare: usual B of A instead | images (rare / common) |',
           '|---' * 6 + '|']
  rate = lambda x: '-' if x is None else f'{x:.2f}'  # None: no held-out image of that kind
  for model, pairs in rows:
    for pair, r in (pairs or {}).items():
      lines.append(f"| {model} | {pair} | {rate(r['rare_keep_b'])} | {rate(r['common_keep_b'])} | "
                   f"{rate(r['rare_to_usual_b'])} | {r['rare_images']} / {r['common_images']} |")
  return '\n'.join(lines)


def main(argv) -> None:
  del argv
  config, workdir = FLAGS.config, FLAGS.workdir
  main_lib.quiet_library_logs()
  seconds = {}
  for mode in ('train', 'train_latent', 'mitigate'):
    t0 = time.time()
    main_lib.run(config, workdir, mode)
    seconds[mode] = round(time.time() - t0, 1)
  report = files.read_json(os.path.join(workdir, 'mitigation', 'report.json'))
  experiment.print_json('wall time of this run, seconds (a mode that was done already is skipped)', seconds)
  print(f'\n=== {experiment.config_filename()}: before / after ===')
  print(table(report))
  rare = rare_table(report)
  if rare:
    print('\n=== regenerated from held-out s: is B kept where the training data rarely pair it with A? ===')
    print(rare)


if __name__ == '__main__':
  experiment.define_config_flags(experiment.repo_config(__file__, 'shapes.py:bias,quick'))
  experiment.run_app(main)
