"""Matplotlib figures of the interpretation results (titles, prototype indices, axes in words).

Every function returns a Figure; the mode saves it with `io.save_figure` (atomic PNG).
Images are NHWC in [-1, 1] (grayscale shown with a gray colour map).
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import patches as mpatches  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

BOX_COLOR = 'red'


def _show(ax, image, box: Optional[Sequence[int]] = None, title: str = '', fontsize: int = 8):
  image = np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=1, interpolation='nearest')
  else:
    ax.imshow(image, interpolation='nearest')
  if box is not None:
    y0, y1, x0, x1 = box
    ax.add_patch(mpatches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                    edgecolor=BOX_COLOR, linewidth=1.5))
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=fontsize)


def image_table(images, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                boxes=None, cell_titles=None, cell: float = 1.3):
  """A grid of images[r][c] with row labels on the left and column labels on top."""
  rows, cols = len(images), len(images[0])
  fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.8, cell * rows + 0.8), squeeze=False)
  for r in range(rows):
    for c in range(cols):
      ax = axes[r, c]
      img = images[r][c]
      if img is None:
        ax.axis('off')
        continue
      t = cell_titles[r][c] if cell_titles is not None else (col_labels[c] if r == 0 else '')
      _show(ax, img, boxes[r][c] if boxes is not None else None, t, fontsize=7)
      if c == 0 and row_labels:
        ax.set_ylabel(row_labels[r], fontsize=8)
  if cell_titles is not None and col_labels:
    for c in range(cols):
      axes[0, c].set_title(f'{col_labels[c]}\n{cell_titles[0][c]}', fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def prototype_overview(prototypes, originals, regenerated, boxes, patches, s_before, s_after, title: str):
  """The paper's prototype figure: per column a prototype; rows: x0, x0 regenerated with s_j
  raised (box: most activated patch), the patch."""
  n = len(prototypes)
  fig, axes = plt.subplots(3, n, figsize=(1.4 * n + 0.8, 4.8), squeeze=False)
  for c, j in enumerate(prototypes):
    _show(axes[0, c], originals[c], title=f'p{j}\ns_j={s_before[c]:.2f}', fontsize=7)
    _show(axes[1, c], regenerated[c], boxes[c], title=f's_j={s_after[c]:.2f}', fontsize=7)
    _show(axes[2, c], patches[c], title=f'patch of p{j}', fontsize=7)
  axes[0, 0].set_ylabel('$x_0$', fontsize=9)
  axes[1, 0].set_ylabel("$\\hat x_{0,s'}$ (s_j raised)", fontsize=8)
  axes[2, 0].set_ylabel('most activated patch', fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def consistency(j, originals, regenerated, boxes, s_before, s_after, title: str):
  n = len(originals)
  fig, axes = plt.subplots(2, n, figsize=(1.4 * n + 0.8, 3.4), squeeze=False)
  for c in range(n):
    _show(axes[0, c], originals[c], title=f's_{j}={s_before[c]:.2f}', fontsize=7)
    _show(axes[1, c], regenerated[c], boxes[c], title=f's_{j}={s_after[c]:.2f}', fontsize=7)
  axes[0, 0].set_ylabel('$x_0$', fontsize=9)
  axes[1, 0].set_ylabel(f's_{j} raised', fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def _step_axis(ax, timesteps):
  k = len(timesteps)
  ticks = np.unique(np.linspace(0, k - 1, min(k, 6)).round().astype(int))
  ax.set_xticks(ticks)
  ax.set_xticklabels([str(timesteps[i]) for i in ticks], fontsize=6)
  ax.set_xlim(0, k - 1)


def emergence_curves(report: dict, labels: Sequence[str], title: str):
  """Small multiples: (s_j(t) - s_j(final)) / spread_j, mean +- std over trajectories."""
  mean = np.asarray(report['curves']['normalized_mean'])
  std = np.asarray(report['curves']['normalized_std'])
  p, k = mean.shape
  cols = int(np.ceil(np.sqrt(p)))
  rows = int(np.ceil(p / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.7 * rows + 0.6), squeeze=False, sharex=True)
  x = np.arange(k)
  tol = report['tolerance']
  for j in range(rows * cols):
    ax = axes.flat[j]
    if j >= p:
      ax.axis('off')
      continue
    ax.fill_between(x, mean[j] - std[j], mean[j] + std[j], alpha=0.3)
    ax.plot(x, mean[j], lw=1.2)
    ax.axhspan(-tol, tol, color='green', alpha=0.12, lw=0)
    med = report['prototypes'][j]['step']['median']
    ax.axvline(med, color='k', ls='--', lw=0.8)
    ax.set_title(f'p{j} {labels[j]}'.strip(), fontsize=7)
    ax.tick_params(labelsize=6)
    _step_axis(ax, report['timesteps'])
  fig.supxlabel('diffusion timestep t of the DDIM step (sampling runs left to right)', fontsize=8)
  fig.supylabel('(s_j(x̂0) − s_j(final)) / observed spread', fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def emergence_steps_plot(report: dict, labels: Sequence[str], title: str, steps_by_prototype: np.ndarray):
  """Box plot of each prototype's emergence step over trajectories, earliest first."""
  order = report['prototype_order']
  k = report['num_steps']
  fig, ax = plt.subplots(figsize=(7, 0.28 * len(order) + 1.4))
  ax.boxplot([steps_by_prototype[:, j] / max(k - 1, 1) for j in order], vert=False, widths=0.6)
  ax.set_yticks(np.arange(1, len(order) + 1))
  ax.set_yticklabels([f'p{j} {labels[j]}'.strip() for j in order], fontsize=7)
  ax.invert_yaxis()
  ax.set_xlim(-0.02, 1.02)
  ax.set_xlabel('emergence step / (K − 1)   (0 = first, noisiest DDIM step; 1 = final image)', fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return fig


def emergence_attributes(report: dict, title: str):
  """Per attribute: chance-corrected agreement (kappa) of x̂0's predicted class with the final one."""
  attrs = report['attributes']
  ranking = report['attribute_ranking']
  k = report['num_steps']
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={'width_ratios': [3, 2]})
  x = np.arange(k)
  for name in ranking:
    a = attrs[name]
    ax0.plot(x, a['kappa_curve'], lw=1.5,
             label=f"{name}: {a['settling']:.2f} [{a['settling_ci'][0]:.2f}, {a['settling_ci'][1]:.2f}]")
  ax0.axhline(report['kappa_threshold'], color='gray', ls=':', lw=0.8)
  _step_axis(ax0, report['timesteps'])
  ax0.set_ylim(-0.05, 1.02)
  ax0.set_xlabel('diffusion timestep t of the DDIM step', fontsize=8)
  ax0.set_ylabel("Cohen's κ: class of x̂0 vs class of the final image", fontsize=8)
  ax0.legend(fontsize=7, loc='lower right', title='settling = mean(1 − κ), 95% CI', title_fontsize=7)
  means = [attrs[n]['settling'] for n in ranking]
  err = np.array([[attrs[n]['settling'] - attrs[n]['settling_ci'][0],
                   attrs[n]['settling_ci'][1] - attrs[n]['settling']] for n in ranking]).T
  ax1.barh(np.arange(len(ranking)), means, xerr=np.maximum(err, 0), color='tab:blue', alpha=0.8)
  ax1.set_yticks(np.arange(len(ranking)))
  ax1.set_yticklabels(ranking, fontsize=8)
  ax1.invert_yaxis()
  ax1.set_xlim(0, 1)
  ax1.set_xlabel('settling: fraction of the trajectory before the attribute is fixed (earliest first)', fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def emergence_snapshots(x0_hats: np.ndarray, timesteps: Sequence[int], title: str, columns: int = 8):
  """Rows: trajectories; columns: x̂0 at evenly spaced steps (uint8 or [-1, 1] images)."""
  n, k = x0_hats.shape[:2]
  idx = np.unique(np.linspace(0, k - 1, min(columns, k)).round().astype(int))
  images = [[_to_unit(x0_hats[r, i]) for i in idx] for r in range(n)]
  return image_table(images, [f'sample {r}' for r in range(n)], [f't={timesteps[i]}' for i in idx], title)


def _to_unit(image):
  image = np.asarray(image)
  return image.astype(np.float32) / 127.5 - 1.0 if image.dtype == np.uint8 else image


def diagnosis_matrix(report: dict, names: Sequence[str], title: str):
  """Heat map of the probability mass each edit moves per attribute.

  Rows: prototype and direction; columns: attributes. 'C' marks the controlled attribute,
  '!' a co-moved one (suspected learned correlation).
  """
  rows, labels, marks = [], [], []
  for entry in report['prototypes']:
    for direction, d in entry['directions'].items():
      rows.append([d['effects'][n]['effect'] for n in names])
      labels.append(f"p{entry['prototype']} {'↑' if direction == 'raise' else '↓'}")
      marks.append(['C' if n == d['controlled'] else ('!' if n in d['co_moved'] else '') for n in names])
  m = np.asarray(rows)
  fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 0.22 * len(rows) + 1.6))
  im = ax.imshow(m, aspect='auto', cmap='viridis', vmin=0, vmax=max(float(m.max()), 0.05))
  for r in range(m.shape[0]):
    for c in range(m.shape[1]):
      if marks[r][c]:
        ax.text(c, r, marks[r][c], ha='center', va='center', color='white' if m[r, c] < 0.5 * m.max() else 'black',
                fontsize=7, fontweight='bold')
  ax.set_xticks(np.arange(len(names)))
  ax.set_xticklabels(names, rotation=30, ha='right', fontsize=8)
  ax.set_yticks(np.arange(len(labels)))
  ax.set_yticklabels(labels, fontsize=6)
  fig.colorbar(im, ax=ax, label='probability mass moved (½Σ|Δp|)')
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def diagnosis_findings(report: dict, title: str):
  """Each co-moved attribute (with its bootstrap CI) beside the controlled attribute's effect."""
  findings = report['findings']
  fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(findings), 1) + 1.5))
  if not findings:
    ax.text(0.5, 0.5, 'no attribute co-moves beyond the thresholds: no suspected learned correlation',
            ha='center', va='center', fontsize=9, transform=ax.transAxes)
    ax.axis('off')
  else:
    y = np.arange(len(findings))
    eff = np.array([f['effect'] for f in findings])
    ci = np.array([f['effect_ci'] for f in findings])
    ctrl = np.array([f['controlled_effect'] for f in findings])
    cci = np.array([f['controlled_effect_ci'] for f in findings])
    ax.barh(y - 0.2, ctrl, height=0.4, xerr=np.abs(np.stack([ctrl - cci[:, 0], cci[:, 1] - ctrl])),
            color='tab:gray', label='controlled attribute')
    ax.barh(y + 0.2, eff, height=0.4, xerr=np.abs(np.stack([eff - ci[:, 0], ci[:, 1] - eff])),
            color='tab:red', label='co-moved attribute')
    ax.set_yticks(y)
    ax.set_yticklabels([f"p{f['prototype']} {'↑' if f['direction'] == 'raise' else '↓'}: "
                        f"{f['controlled']}→{f['controlled_towards']} ; {f['co_moved']}→{f['towards']}"
                        for f in findings], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel('probability mass moved, mean over samples (bootstrap CI)', fontsize=8)
    ax.legend(fontsize=7, loc='lower right')
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig
