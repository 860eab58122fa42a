"""grain pipelines over the record sources: training streams and in-order evaluation arrays.

The training stream is built from index-level operations on a `grain.MapDataset`, so every
element is a pure function of (seed, position) and the iterator state is one integer:

  source (records of the split, bias applied)
    -> shuffle(seed)           global shuffle; grain reseeds every epoch (seed + epoch)
    -> repeat(num_epochs)      None: an endless stream of reshuffled epochs
    -> [: multiple of B]       finite streams with drop_remainder: every host has as many batches
    -> [process_index::P]      each host reads only its own positions of the global stream
    -> map(preprocess)         decode, resize, scale (threads; optionally worker processes)
    -> batch(B / P)            the local share of global batch j is global positions
                               j*B + process_index + P*k, k = 0..B/P-1

Consequently the union of the hosts' batches is the same global batch whatever the number
of processes, and the worker count (`config.data.num_workers`, element-level
`mp_prefetch`) changes nothing but speed. `iterator.get_state()` is grain's JSON-friendly
state ({'next_index': ...}-like dicts); `set_state` on an iterator built with the same
arguments resumes exactly at the next batch.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import grain
import numpy as np

from patronus_jax.data import preprocess as preprocess_lib
from patronus_jax.data import sources
from patronus_jax.data.errors import DataError, DatasetInfo
import jax
from absl import flags


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count={process_count})')
  return int(process_index), int(process_count)


def _ensure_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app (tests, notebooks) the
  flags were never parsed, so take their defaults rather than failing in the workers."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _preprocess(data_cfg, opened: sources.OpenedSplit) -> preprocess_lib.Preprocess:
  return preprocess_lib.Preprocess(
      dataset=opened.name, image_size=int(data_cfg.image_size), channels=int(data_cfg.channels),
      crop=data_cfg.crop, strict=bool(data_cfg.strict), has_captions=opened.has_captions,
      num_records=len(opened.records))


def _read_options(data_cfg) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(data_cfg.read_threads),
                           prefetch_buffer_size=int(data_cfg.prefetch_buffer_size))


def get_info(data_cfg) -> DatasetInfo:
  """Describes the configured dataset; prepares shapes if missing, DataError if real data is."""
  splits = {}
  for split in dict.fromkeys((data_cfg.train_split, data_cfg.eval_split)):
    if (data_cfg.name == 'patronus_shapes' and split.split('[')[0] == 'test'
        and data_cfg.shapes.num_test == 0):
      continue  # the shapes dataset was configured without a test split
    splits[split] = sources.open_split(data_cfg, split)
  train = splits[data_cfg.train_split]
  bias_report = train.bias_report
  if (bias_report is not None and data_cfg.bias.enabled and data_cfg.bias.apply_to_eval
      and data_cfg.eval_split in splits and data_cfg.eval_split != data_cfg.train_split):
    bias_report = dict(bias_report, eval=splits[data_cfg.eval_split].bias_report)
  return DatasetInfo(
      name=data_cfg.name,
      image_shape=(int(data_cfg.image_size), int(data_cfg.image_size), int(data_cfg.channels)),
      attribute_names=tuple(train.attribute_names),
      attribute_values=tuple(tuple(v) for v in train.attribute_values),
      num_examples={split: len(opened.records) for split, opened in splits.items()},
      has_captions=train.has_captions,
      bias_report=bias_report)


def make_iterator(data_cfg, split: str, *, global_batch_size: int, seed: int,
                  shuffle: bool = True, num_epochs: int | None = None,
                  drop_remainder: bool = True, process_index: int | None = None,
                  process_count: int | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator of this process's share of each global batch (see module doc).

  Batches are dicts: 'image' float32 (b, H, W, C) in [-1, 1]; 'attributes' int32 (b, A);
  'caption' object array of str (b,) when the dataset has captions; 'index' int64 (b,),
  with b = global_batch_size // process_count.
  """
  process_index, process_count = _processes(process_index, process_count)
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive multiple of '
                     f'process_count={process_count}: every process reads an equal share')
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f'num_epochs must be None (endless) or >= 1, got {num_epochs}')
  opened = sources.open_split(data_cfg, split)
  num = len(opened.records)
  if num == 0:
    raise DataError(f'split {split!r} of {data_cfg.name!r} has no examples')
  if drop_remainder and num_epochs is not None and num * num_epochs < global_batch_size:
    raise DataError(f'split {split!r} of {data_cfg.name!r} has {num} examples, fewer than one '
                    f'global batch of {global_batch_size} over {num_epochs} epoch(s)')

  ds = grain.MapDataset.source(opened.records)
  if shuffle:
    ds = ds.shuffle(seed=int(seed) % 2**32)
  ds = ds.repeat(num_epochs)
  if drop_remainder and num_epochs is not None:
    ds = ds[:len(ds) // global_batch_size * global_batch_size]
  if process_count > 1:
    ds = ds[process_index::process_count]
  ds = ds.map(_preprocess(data_cfg, opened))
  it = ds.to_iter_dataset(_read_options(data_cfg))
  if data_cfg.num_workers > 0:
    _ensure_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(data_cfg.num_workers),
        per_worker_buffer_size=int(data_cfg.worker_buffer_size)))
  it = it.batch(global_batch_size // process_count, drop_remainder=drop_remainder,
                batch_fn=preprocess_lib.stack_examples)
  logging.info('Data %s/%s: %d examples, global batch %d, process %d of %d, shuffle=%s seed=%d, '
               'epochs=%s, workers=%d.', data_cfg.name, split, num, global_batch_size,
               process_index, process_count, shuffle, seed, num_epochs, data_cfg.num_workers)
  return iter(it)


def load_arrays(data_cfg, split: str, max_examples: int | None = None) -> dict[str, Any]:
  """The first `max_examples` examples of a split (all when None), in order, as numpy arrays.

  Same keys and preprocessing as the batches of `make_iterator`; the bias selection applies.
  Deterministic: no shuffling, no sharding (every process gets the same arrays).
  """
  opened = sources.open_split(data_cfg, split)
  ds = grain.MapDataset.source(opened.records)
  if max_examples is not None:
    ds = ds[:max(0, int(max_examples))]
  ds = ds.map(_preprocess(data_cfg, opened))
  batches = list(ds.to_iter_dataset(_read_options(data_cfg)).batch(
      256, batch_fn=preprocess_lib.stack_examples))
  if not batches:
    size, channels = int(data_cfg.image_size), int(data_cfg.channels)
    empty = {'image': np.zeros((0, size, size, channels), np.float32),
             'attributes': np.zeros((0, len(opened.attribute_names)), np.int32),
             'index': np.zeros((0,), np.int64)}
    if opened.has_captions:
      empty['caption'] = np.zeros((0,), object)
    return empty
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
