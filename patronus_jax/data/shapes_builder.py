"""TFDS builder `patronus_shapes`: the shapes dataset prepared offline as ArrayRecord.

The builder config is made from `config.data.shapes` (and `config.data.image_size` when
`shapes.resolution` is 0). Its name encodes every value that changes the data, e.g.
`r32_train20000_test2000_seed0` or `r32_train2000_test200_seed0_planted0.9_rc-gs-bt-yc`,
so different settings live side by side in `<data_dir>/patronus_shapes/<name>/1.0.0/` and a
prepared dataset is never silently reused for other settings.

Examples are written in generation order (`disable_shuffling=True`): record i of a split is
`shapes.sample_factors(...)` row i, so labels can be recomputed without reading images.
Preparation needs no network and takes a few seconds for a few thousand images.
"""

from __future__ import annotations

import dataclasses
import logging as logging_std

from absl import logging
from PIL import Image

from patronus_jax.data import shapes
from patronus_jax.data.tfds_compat import tfds

VERSION = '1.0.0'
_CHUNK = 512
_RELEASE_NOTES = {VERSION: 'First release.'}
_DEFAULT_MAPPING = 'red:circle,green:square,blue:triangle,yellow:circle'


@dataclasses.dataclass(eq=False)
class PatronusShapesConfig(tfds.core.BuilderConfig):
  """Split sizes, resolution, seed and optional planted colour -> shape correlation."""

  resolution: int = 32
  num_train: int = 20_000
  num_test: int = 2_000
  seed: int = 0
  planted_strength: float = -1.0
  planted_mapping: str = _DEFAULT_MAPPING


def config_name(resolution: int, num_train: int, num_test: int, seed: int,
                planted_strength: float, planted_mapping: str) -> str:
  name = f'r{resolution}_train{num_train}_test{num_test}_seed{seed}'
  if planted_strength >= 0:
    tied = shapes.planted_shape_of_color(planted_mapping)
    colors, shape_names = shapes.FACTOR_VALUES[2], shapes.FACTOR_VALUES[1]
    pairs = '-'.join(f'{colors[c][0]}{shape_names[s][0]}' for c, s in enumerate(tied) if s >= 0)
    name += f'_planted{planted_strength:g}_{pairs}'
  return name


def make_config(resolution: int = 32, num_train: int = 20_000, num_test: int = 2_000,
                seed: int = 0, planted_strength: float = -1.0,
                planted_mapping: str = _DEFAULT_MAPPING) -> PatronusShapesConfig:
  values = dict(resolution=int(resolution), num_train=int(num_train), num_test=int(num_test),
                seed=int(seed), planted_strength=float(planted_strength),
                planted_mapping=str(planted_mapping))
  return PatronusShapesConfig(
      name=config_name(**values), version=VERSION, release_notes=dict(_RELEASE_NOTES),
      description='Procedural shapes with known factors (patronus_jax).', **values)


def builder_config_from(data_cfg) -> PatronusShapesConfig:
  """The builder config for `config.data` (resolution 0 means data.image_size)."""
  s = data_cfg.shapes
  config = make_config(s.resolution or data_cfg.image_size, s.num_train, s.num_test, s.seed,
                       s.planted_strength, s.planted_mapping)
  # TFDS refuses a new instance named like a registered config: use the registered one.
  return PatronusShapes.builder_configs.get(config.name, config)


class _QuietCustomConfig(logging_std.Filter):
  """Every shapes config is 'custom' to TFDS, which warns on each open; that is expected."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return 'Using custom data configuration: PatronusShapesConfig' not in record.getMessage()


logging_std.getLogger('absl').addFilter(_QuietCustomConfig())


class PatronusShapes(tfds.core.GeneratorBasedBuilder):
  """Procedural single-object images whose generative factors are the labels."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = _RELEASE_NOTES
  BUILDER_CONFIGS = [make_config()]  # the quickstart's default

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    features = {'image': tfds.features.Image(shape=(c.resolution, c.resolution, 3),
                                             encoding_format='png'),
                'caption': tfds.features.Text()}
    for name, values in shapes.FACTORS:
      features[name] = tfds.features.ClassLabel(names=list(values))
    return tfds.core.DatasetInfo(
        builder=self,
        description=shapes.__doc__,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,  # record i = sample_factors row i
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    splits = {'train': self._generate_examples('train', c.num_train)}
    if c.num_test > 0:
      splits['test'] = self._generate_examples('test', c.num_test)
    return splits

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    factors = shapes.sample_factors(num, c.seed, split, c.planted_strength, c.planted_mapping)
    logging.info('Rendering %d shapes (%s, %dx%d).', num, split, c.resolution, c.resolution)
    for start in range(0, num, _CHUNK):
      part = {k: v[start:start + _CHUNK] for k, v in factors.items()}
      images = shapes.render(part, c.resolution)
      for offset, (image, labels) in enumerate(zip(images, part['labels'])):
        # A PIL image is PNG-encoded by PIL: preparation then needs no TensorFlow.
        example = {'image': Image.fromarray(image), 'caption': shapes.caption(labels)}
        example.update({name: int(v) for name, v in zip(shapes.FACTOR_NAMES, labels)})
        yield start + offset, example
