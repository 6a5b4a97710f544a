"""Errors a user can fix: the CLI prints their message and exits without a traceback (``cli.main``).

Every check of a user's input (a config value, an option combination, the data, a checkpoint, the devices)
raises one of these, with a message that says what to change. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: the input is wrong, not the code. The message says what to change."""


class ConfigurationError(UserError, ValueError):
    """A config value or a combination of options that cannot work."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or not one of ours."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint was trained with another configuration than the one given."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset's files are missing (and could not be downloaded) or are corrupt."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A local loss became NaN or inf (training diverged); the message names the block and the remedies."""


class ImageFileError(UserError, ValueError):
    """An image to predict (``data.predict_path``) that is missing or not a readable PNG/JPEG; the message names it."""
