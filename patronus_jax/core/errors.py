"""The one family of user errors: a mistake a user can fix, reported in one line.

Entry points (`main`, `convert`, the scripts) catch `UserError` and print its message alone,
with `exit_status` (2: a usage mistake such as a wrong config field; 1: the rest). Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """A mistake in what the user gave (config, data, workdir, checkpoint); the message says how
  to fix it."""
  exit_status = 1


class ConfigError(UserError, ValueError):
  """A configuration field is unknown, of the wrong type, or has an impossible value."""
  exit_status = 2


class DataError(UserError, ValueError):
  """Missing, corrupt or malformed data; the message says what and how to fix it."""


class WorkdirError(UserError, ValueError):
  """The workdir holds something this run cannot use (another run's config, a corrupt file)."""


class CheckpointError(UserError, FileNotFoundError):
  """A checkpoint that a mode needs is missing or unreadable; the message names the mode that
  writes it."""


class CheckpointMismatch(UserError, ValueError):
  """A checkpoint does not match the model the config describes (the message lists the paths)."""
