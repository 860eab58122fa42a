"""Config machinery shared by every section: field and type checks against a schema, dotted
overrides from code or the command line, and the one way a validator reports a bad value.

The schema itself (which sections and fields exist) is assembled in `patronus_jax.config`;
each section is defined next to the code that reads it.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Callable

import ml_collections

from patronus_jax.core.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

_NUMBER = (int, float)


def fail(field: str, message: str) -> None:
  """Raises ConfigError for `field`: "config field 'FIELD' MESSAGE"."""
  raise ConfigError(f"config field '{field}' {message}")


def require(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless ok."""
  if not ok:
    raise ConfigError(message)


def section_checker(section: ConfigDict, prefix: str) -> Callable[[bool, str, str], None]:
  """check(ok, field, what) for a section's validator: names 'PREFIX.FIELD' and its value."""

  def check(ok: bool, field: str, what: str) -> None:
    if not ok:
      fail(f'{prefix}.{field}', f'{what}, got {section[field]!r}')

  return check


def one_of(config: ConfigDict, name: str, choices: tuple[str, ...]) -> None:
  """Raises ConfigError unless the dotted field `name` of `config` is one of `choices`."""
  value = config
  for part in name.split('.'):
    value = value[part]
  require(value in choices, f"config field '{name}' must be one of {choices}, got {value!r}")


def _type_name(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    inner = sorted({type(v).__name__ for v in value})
    return f'sequence of {"/".join(inner) or "anything"}'
  return type(value).__name__


def _compatible(default: Any, value: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, _NUMBER)
  if isinstance(default, int):
    return isinstance(value, int)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      return False
    if not default:
      return True
    return all(_compatible(default[0], v) for v in value)
  return True


def check_fields(config: ConfigDict, schema: ConfigDict, prefix: str = '') -> None:
  """Raises ConfigError for the first field not in the schema or of the wrong type."""
  for key in config.keys():
    name = f'{prefix}{key}'
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f"; did you mean '{prefix}{close[0]}'?" if close else ''
      raise ConfigError(f"unknown config field '{name}'{hint}")
    value, default = config[key], schema[key]
    if isinstance(default, ConfigDict):
      if not isinstance(value, (ConfigDict, dict)):
        raise ConfigError(f"config field '{name}' must be a section (ConfigDict), got {_type_name(value)}")
      check_fields(ConfigDict(value) if isinstance(value, dict) else value, default, name + '.')
    elif not _compatible(default, value):
      raise ConfigError(
          f"config field '{name}' must be {_type_name(default)} (like the default {default!r}), "
          f'got {_type_name(value)} {value!r}')


def set_field(config: ConfigDict, dotted: str, value) -> None:
  """config['a.b.c'] = value; ConfigError naming the field (and a close match) when it does not
  exist, TypeError (from ConfigDict) when the type does not fit."""
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    if p not in node:
      raise ConfigError(f"unknown config field '{dotted}'")
    node = node[p]
  if leaf not in node:
    close = difflib.get_close_matches(leaf, list(node.keys()), n=1)
    hint = f"; did you mean '{'.'.join(parents + [close[0]])}'?" if close else ''
    raise ConfigError(f"unknown config field '{dotted}'{hint}")
  node[leaf] = value


def set_field_from_text(config: ConfigDict, dotted: str, text: str) -> None:
  """`set_field` for a command-line string: a Python literal where the field takes one, else
  the text itself (e.g. a path field given '2024')."""
  try:
    parsed = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    parsed = text
  try:
    set_field(config, dotted, parsed)
  except TypeError:
    if parsed is text:
      raise
    set_field(config, dotted, text)


def parse_set_flags(items) -> dict[str, str]:
  """['FIELD=VALUE', ...] (repeated --set flags) -> {FIELD: VALUE}; ConfigError on a bad item."""
  out = {}
  for item in items:
    field, sep, value = item.partition('=')
    if not sep:
      raise ConfigError(f'--set {item!r}: expected FIELD=VALUE')
    out[field.strip()] = value.strip()
  return out


def config_module(path: str):
  """The module of a config file (configs are files, not a package), e.g. to share its helpers."""
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path} not found (from {os.getcwd()}); expected configs/<name>.py[:variant]')
  module_spec = importlib.util.spec_from_file_location(
      f'patronus_config_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def config_from_file(spec: str) -> ConfigDict:
  """`get_config(variant)` of 'configs/<name>.py[:variant]' (not validated)."""
  path, _, arg = spec.partition(':')
  return config_module(path).get_config(arg or None)
