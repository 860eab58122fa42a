r"""The paper's table rows (FID, probe AUROC, TAD, DCI) from evaluated workdirs.

  python experiments/tables.py runs/celeba runs/cifar10 runs/ffhq
  python experiments/tables.py --evaluate runs/celeba          # run --mode=evaluate where needed
  python experiments/tables.py --format=csv runs/*              # markdown (default), csv or json

Each workdir's `metrics.json` (written by `--mode=evaluate`) gives one row; with --evaluate,
workdirs without an up-to-date metrics.json are evaluated first with the config they were
trained with (`<workdir>/config.json`; `--set evaluate.num_samples=10000` overrides fields).
The paper's numbers are printed under each dataset they exist for. Without Inception weights
the FID columns stay empty and the `fd_classifier` columns (a Fréchet distance on the
attribute classifier's features, not comparable to FID) are filled instead.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys

from absl import flags

from patronus_jax import config as config_lib
from patronus_jax import experiment
from patronus_jax import main as main_lib

# Patronus (ICLR 2026), as /work/shared/DESIGN.md lists them: FID of generated samples, probe
# AUROC on standardised s (5-fold CV, mean over binary attributes), TAD.
PAPER = {
    'celeb_a': dict(fid=14.6, auroc=0.87, tad=0.43),
    'cifar10': dict(fid=32.9),
    'ffhq': dict(fid=37.3, auroc=0.92),
}

COLUMNS = (
    ('run', 'run'),
    ('dataset', 'dataset'),
    ('stage1_step', 'stage-1 step'),
    ('fid_conditional', 'FID cond'),
    ('fid_unconditional', 'FID uncond'),
    ('fd_classifier_conditional', 'fd_clf cond'),
    ('fd_classifier_unconditional', 'fd_clf uncond'),
    ('fd_classifier_real', 'fd_clf real'),
    # mean over the binary attributes only (the paper's number; CelebA's 40 are all binary);
    # on a dataset with few binary attributes read the next column
    ('auroc', 'probe AUROC (binary attrs)'),
    ('auroc_all', 'probe AUROC (all attrs)'),
    ('tad', 'TAD'),
    ('tad_captured', 'attrs captured'),
    ('dci_d', 'DCI D'),
    ('dci_c', 'DCI C'),
    ('dci_i', 'DCI I'),
    # the semantics scorecard (evaluate/semantics.py), means over the attributes
    ('keep_rate', 'keep'),
    ('keep_rate_chance', 'keep at chance'),
    ('edit_success', 'edit success'),
    ('alive_prototypes', 'alive protos'),
    ('duplicate_pairs', 'duplicate pairs'),
    ('num_samples', 'samples'),
)


def _mean(d) -> float | None:
  return float(sum(d.values()) / len(d)) if isinstance(d, dict) and d else None


def _get(d, *path):
  for key in path:
    if not isinstance(d, dict) or key not in d:
      return None
    d = d[key]
  return d


def row_from_metrics(run: str, metrics: dict) -> dict:
  """One table row (None where a metric was not computed)."""
  counts = metrics.get('sample_counts') or {}
  return dict(
      run=run, dataset=metrics.get('dataset'), stage1_step=_get(metrics, 'checkpoints', 'stage1_step'),
      fid_conditional=_get(metrics, 'fid', 'conditional'),
      fid_unconditional=_get(metrics, 'fid', 'unconditional'),
      fd_classifier_conditional=_get(metrics, 'fd_classifier', 'conditional'),
      fd_classifier_unconditional=_get(metrics, 'fd_classifier', 'unconditional'),
      fd_classifier_real=_get(metrics, 'fd_classifier', 'real_eval_baseline'),
      auroc=_get(metrics, 'probe', 'mean_auroc'),
      auroc_all=_get(metrics, 'probe', 'mean_auroc_all'),
      tad=_get(metrics, 'tad', 'tad'), tad_captured=_get(metrics, 'tad', 'num_captured'),
      dci_d=_get(metrics, 'dci', 'disentanglement'), dci_c=_get(metrics, 'dci', 'completeness'),
      dci_i=_get(metrics, 'dci', 'informativeness'),
      keep_rate=_mean(_get(metrics, 'semantics', 'keep_rate')),
      keep_rate_chance=_mean(_get(metrics, 'semantics', 'keep_rate_chance')),
      edit_success=_mean(_get(metrics, 'semantics', 'edit_success')),
      alive_prototypes=_get(metrics, 'semantics', 'alive_prototypes'),
      duplicate_pairs=_get(metrics, 'semantics', 'duplicate_pairs'),
      num_samples='/'.join(str(counts[k]) for k in ('conditional', 'unconditional') if k in counts) or None,
  )


def paper_row(dataset: str) -> dict | None:
  ref = PAPER.get(dataset)
  if ref is None:
    return None
  row = {key: None for key, _ in COLUMNS}
  row.update(run='paper', dataset=dataset, fid_unconditional=ref.get('fid'), auroc=ref.get('auroc'),
             tad=ref.get('tad'))
  return row


def _format(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    if math.isnan(value):
      return 'nan'
    return f'{value:.3f}' if abs(value) < 100 else f'{value:.1f}'
  return str(value)


def render(rows: list[dict], fmt: str) -> str:
  if fmt == 'json':
    return json.dumps(rows, indent=2)
  # Only the columns some row fills (plus the run and dataset).
  cols = [(k, h) for k, h in COLUMNS if k in ('run', 'dataset') or any(r.get(k) is not None for r in rows)]
  if fmt == 'csv':
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([k for k, _ in cols])
    for r in rows:
      writer.writerow([_format(r.get(k)) for k, _ in cols])
    return out.getvalue()
  lines = ['| ' + ' | '.join(h for _, h in cols) + ' |', '|' + '---|' * len(cols)]
  for r in rows:
    lines.append('| ' + ' | '.join(_format(r.get(k)) for k, _ in cols) + ' |')
  return '\n'.join(lines)


def evaluate_workdir(workdir: str, overrides: list[str]) -> None:
  """Runs --mode=evaluate with the workdir's own config (it skips itself when up to date)."""
  config = config_lib.load_workdir_config(workdir)
  for item in overrides:
    name, _, text = item.partition('=')
    section = config
    *parents, leaf = name.split('.')
    for p in parents:
      section = section[p]
    default = section[leaf]
    section[leaf] = type(default)(json.loads(text)) if not isinstance(default, str) else text
  main_lib.run(config, workdir, 'evaluate')


def define_flags() -> flags.FlagValues:
  """The script's absl flags (patronus_jax/experiment.py), in their own FlagValues so that `main`
  can be called with an argument list (tests)."""
  fv = flags.FlagValues()
  flags.DEFINE_bool('help', False, 'Show this help.', short_name='h', flag_values=fv)
  flags.DEFINE_bool('evaluate', False, 'Run --mode=evaluate where needed first.', flag_values=fv)
  flags.DEFINE_multi_string('set', [], 'FIELD=VALUE config override for --evaluate, e.g. '
                            'evaluate.num_samples=10000', flag_values=fv)
  flags.DEFINE_enum('format', 'markdown', ['markdown', 'csv', 'json'], 'Table format.', flag_values=fv)
  flags.DEFINE_bool('no-paper', False, "Leave out the paper's rows.", flag_values=fv)
  return fv


def main(argv=None) -> int:
  """argv: the arguments after the program name (default: the command line). Returns the exit status."""
  args = define_flags()
  summary = __doc__.split('\n')[0]
  usage = f'usage: {os.path.basename(sys.argv[0])} [flags] WORKDIR|NAME=WORKDIR ...\n{summary}'
  workdirs, status = experiment.parse_positional(args, argv, usage, 'Evaluated workdirs (NAME=PATH names a row).\n\n')
  if status is not None:
    return status
  if not workdirs:
    print(f'{usage}\nerror: give at least one workdir', file=sys.stderr)
    return 2
  rows, datasets, missing = [], [], []
  for item in workdirs:
    name, _, path = item.rpartition('=') if '=' in item else (None, None, item)
    name = name or os.path.basename(os.path.normpath(path))
    if args.evaluate:
      evaluate_workdir(path, args.set)
    metrics_path = os.path.join(path, 'metrics.json')
    if not os.path.exists(metrics_path):
      missing.append(path)
      continue
    with open(metrics_path) as f:
      row = row_from_metrics(name, json.load(f))
    rows.append(row)
    if row['dataset'] not in datasets:
      datasets.append(row['dataset'])
  if not args['no-paper'].value:
    rows += [r for r in (paper_row(d) for d in datasets) if r is not None]
  if rows:
    print(render(rows, args.format))
  for path in missing:
    print(f'{path}: no metrics.json; run python -m patronus_jax.main --workdir={path} --mode=evaluate '
          '(with the config it was trained with) or pass --evaluate', file=sys.stderr)
  return 1 if missing else 0


if __name__ == '__main__':
  sys.exit(main())
