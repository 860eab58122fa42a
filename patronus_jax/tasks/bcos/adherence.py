"""Token relevance as a prompt-adherence detector (the poster: "the relevance score can be used to
check prompt adherence").

For every generation and every attribute its prompt names (shapes: background, shape, colour,
size, position, stripes when striped), the attribute classifier says whether the image shows the
named value (followed) or not (a missed word), and the whole-generation explanation gives the
word's relevance S (the sum of S_i over the value's tokens, S_i = |C_i| / Σ_j |C_j|, explain.py).
If low relevance flags misses, the AUROC of -S for "missed" is well above 0.5:

  relevance_adherence_auroc[attribute] = P(S of a missed word < S of a followed word)
                                         (ties count 1/2; 0.5 = no signal, 1 = perfect)

with a percentile bootstrap CI (missed and followed words resampled apart, so that every
resample has both). Relevance differs a lot between the values of one attribute (a colour word
can carry little in every prompt), so `auroc_within_word` also compares a miss only with followed
instances of the same word (pairs pooled over words: a stratified AUROC). `misses_figure` shows the misses the relevance
explains best (lowest S) and worst (highest S).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from patronus_jax.core import files as pio
from patronus_jax.evaluate.probes import auroc_matrix
from patronus_jax.tasks.bcos import explain as explain_lib
from patronus_jax.tasks.bcos import tokenizer as text_lib
from patronus_jax.tasks.bcos.task import generation_batches


def named_attributes(tokens: Sequence[str], attribute_names: Sequence[str],
                     attribute_values: Sequence[Sequence[str]]) -> dict[str, tuple[int, list[int]]]:
  """attribute -> (value index, token positions) for each attribute whose value the tokens name
  exactly once as consecutive words (ambiguous or absent attributes are left out)."""
  out = {}
  for name, values in zip(attribute_names, attribute_values):
    found = []
    for v, value in enumerate(values):
      words = text_lib.words(value)
      for i in range(len(tokens) - len(words) + 1):
        if list(tokens[i:i + len(words)]) == words:
          found.append((v, list(range(i, i + len(words)))))
    if len(found) == 1:
      out[name] = found[0]
  return out


def whole_generation_relevance(task, params, variables: dict, token_ids: np.ndarray, *, seed: int,
                               batch_size: int) -> np.ndarray:
  """(N, L) whole-generation token relevance S_i of the generations `task.generate` makes from the
  same ids, seed and batch size (same x_T); 0 at padding."""
  out = []
  for _, n, ids, x_T in generation_batches(task.config, token_ids, seed, batch_size):
    w = explain_lib.explain_whole_generation(task, params, variables, {'token_ids': ids}, x_T)
    out.append(np.asarray(jax.device_get(w['token_relevance']))[:n])
  return np.concatenate(out)


def word_records(tokens: Sequence[Sequence[str]], relevance: np.ndarray, prompt_labels: np.ndarray,
                 predicted: dict[str, np.ndarray], attribute_names: Sequence[str],
                 attribute_values: Sequence[Sequence[str]]) -> list[dict]:
  """One record per (generation, named attribute): index, attribute, word, relevance, followed,
  seen (the value the classifier found). `prompt_labels` (N, A) are the prompts' attribute labels;
  `predicted` attribute -> (N,) predicted value indices."""
  names = list(attribute_names)
  records = []
  for b, toks in enumerate(tokens):
    for name, (value, positions) in named_attributes(toks, names, attribute_values).items():
      if name not in predicted:
        continue
      a = names.index(name)
      if int(prompt_labels[b, a]) != value:
        raise ValueError(f'prompt {b} names {name}={attribute_values[a][value]!r} but its label is '
                         f'{attribute_values[a][int(prompt_labels[b, a])]!r}')
      seen = int(predicted[name][b])
      records.append(dict(index=b, attribute=name, word=' '.join(toks[i] for i in positions),
                          relevance=float(np.sum(relevance[b, positions])), followed=seen == value,
                          seen=attribute_values[a][seen]))
  return records


def auroc_missed(relevance: np.ndarray, missed: np.ndarray) -> float:
  """AUROC of -relevance for `missed` (nan when one class is empty)."""
  return float(auroc_matrix(-np.asarray(relevance, np.float64), np.asarray(missed, bool))[0, 0])


def stratified_bootstrap_auroc(relevance: np.ndarray, missed: np.ndarray, level: float = 0.95,
                               num_bootstrap: int = 1000, seed: int = 0) -> tuple[float, float]:
  """Percentile CI of `auroc_missed`, resampling missed and followed words each within their class."""
  rng = np.random.default_rng(seed)
  pos, neg = relevance[missed], relevance[~missed]
  labels = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
  boot = [auroc_missed(np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]), labels)
          for _ in range(num_bootstrap)]
  alpha = (1.0 - level) / 2.0
  return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1.0 - alpha))


def within_word_auroc(relevance: np.ndarray, missed: np.ndarray, words: Sequence[str]) -> Optional[float]:
  """P(S of a miss < S of a followed instance of the same word), ties 1/2, over all such pairs;
  None when no word was both missed and followed."""
  good = total = 0.0
  for word in dict.fromkeys(words):
    same = np.asarray([w == word for w in words])
    pos, neg = relevance[same & missed], relevance[same & ~missed]
    if len(pos) and len(neg):
      good += np.sum(pos[:, None] < neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
      total += len(pos) * len(neg)
  return float(good / total) if total else None


def relevance_auroc(records: Sequence[dict], level: float = 0.95, num_bootstrap: int = 1000,
                    seed: int = 0) -> dict[str, dict]:
  """Per attribute: AUROC of low relevance for a missed word with its bootstrap CI, the counts and
  the mean relevance of missed and followed words. AUROC and CI are None when the attribute was
  never (or always) missed."""
  out = {}
  for name in dict.fromkeys(r['attribute'] for r in records):
    rel = np.asarray([r['relevance'] for r in records if r['attribute'] == name], np.float64)
    missed = np.asarray([not r['followed'] for r in records if r['attribute'] == name], bool)
    entry = dict(auroc=None, ci_low=None, ci_high=None, ci_level=level, auroc_within_word=None,
                 num_missed=int(missed.sum()), num_followed=int((~missed).sum()),
                 mean_relevance_missed=float(rel[missed].mean()) if missed.any() else None,
                 mean_relevance_followed=float(rel[~missed].mean()) if (~missed).any() else None)
    if missed.any() and (~missed).any():
      entry['auroc'] = auroc_missed(rel, missed)
      words = [r['word'] for r in records if r['attribute'] == name]
      entry['auroc_within_word'] = within_word_auroc(rel, missed, words)
      entry['ci_low'], entry['ci_high'] = stratified_bootstrap_auroc(rel, missed, level, num_bootstrap, seed)
    out[name] = entry
  return out


# ----------------------------------------------------------------------------- figure

def _wrap(text: str, width: int) -> list[str]:
  lines, line = [], ''
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f'{line} {word}'.strip()
  return lines + ([line] if line else [])


def misses_figure(images: np.ndarray, prompts: Sequence[str], records: Sequence[dict],
                  attributes: Sequence[str], num: int = 4, size: int = 128) -> Optional[np.ndarray]:
  """uint8 (H, W, 3): two rows of missed words of `attributes`: the `num` with the lowest relevance
  (best explained: the relevance flags them) and the `num` with the highest (worst explained).
  Each tile: the generation, its prompt, the missed word, what the classifier saw, and S with
  its percentile among the followed words of that attribute. None when nothing was missed."""
  misses = sorted((r for r in records if r['attribute'] in attributes and not r['followed']),
                  key=lambda r: r['relevance'])
  if not misses:
    return None
  followed = {a: np.sort([r['relevance'] for r in records if r['attribute'] == a and r['followed']])
              for a in attributes}
  rows = [('Best-explained misses: the lowest relevance of a missed word', misses[:num]),
          ('Worst-explained misses: the highest relevance of a missed word', misses[::-1][:num])]
  font = ImageFont.load_default()
  pad, line, text_lines = 10, 13, 7
  tile_h = size + line * text_lines
  width = pad + num * (size + 60 + pad)
  height = pad + line * 2 + len(rows) * (line + tile_h + pad)
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  draw.text((pad, pad), f'Missed prompt words ({", ".join(attributes)}) and their whole-generation '
            'relevance S (share of all token contributions)', fill='black', font=font)
  y = pad + 2 * line
  for title, chosen in rows:
    draw.text((pad, y), title, fill='black', font=font)
    y += line
    for i, r in enumerate(chosen):
      x = pad + i * (size + 60 + pad)
      k = size // images.shape[1]
      tile = np.repeat(np.repeat(pio.to_uint8(images[r['index']]), k, axis=0), k, axis=1)
      canvas.paste(Image.fromarray(tile), (x, y))
      ref = followed.get(r['attribute'], np.zeros(0))
      pct = 100.0 * np.searchsorted(ref, r['relevance']) / len(ref) if len(ref) else float('nan')
      text = (_wrap(f'"{prompts[r["index"]]}"', 30)[:3]
              + [f'missed: {r["word"]} ({r["attribute"]})', f'classifier saw: {r["seen"]}',
                 f'S = {r["relevance"]:.3f} ({pct:.0f}th pct of followed)'])
      for j, t in enumerate(text):
        draw.text((x, y + size + 2 + j * line), t, fill='black', font=font)
    y += tile_h + pad
  return np.asarray(canvas)
