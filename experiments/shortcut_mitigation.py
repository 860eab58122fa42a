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
flips under the edit), fd_classifier of unconditional samples, and the fine-tuning cost.
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


if __name__ == '__main__':
  experiment.define_config_flags(experiment.repo_config(__file__, 'shapes.py:bias,quick'))
  experiment.run_app(main)
