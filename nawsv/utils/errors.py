"""User-facing errors.

Every problem a user can fix (a bad file, key, option or config value) raises a subclass of
:class:`NawsvError` whose message names the culprit and the fix. Entry points turn it into a
one-line ``ERROR: ...`` and a non-zero exit instead of a traceback.
"""


class NawsvError(Exception):
    """An error the user can act on; the message is shown as-is without a traceback."""

    exit_code = 2


class ConfigError(NawsvError):
    """Malformed YAML, unknown or invalid config keys, bad command-line values."""


class DataError(NawsvError):
    """Malformed Kaldi lists, trials, manifests or corpus layouts."""


class AudioError(DataError):
    """Missing, unreadable, empty, non-finite or too-short audio."""


class ExperimentError(NawsvError):
    """An experiment directory in a state that would be unsafe to continue (locked, config changed)."""


class OutputError(NawsvError):
    """An output cannot be written: read-only or forbidden directory, full disk or quota."""
