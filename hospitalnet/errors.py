"""User-facing errors.

Anything a user can cause (a bad config key, a missing file, an unknown label) raises a subclass of
:class:`HospitalnetError` whose message is one line naming the file, key or value. The command line
prints that line and exits non-zero; it never shows a traceback for a user mistake.
Messages must never contain a patient identifier or the path of a patient image.
"""


class HospitalnetError(Exception):
    """Base class of every error that is the user's to fix."""


class ConfigError(HospitalnetError):
    """A configuration or manifest file is invalid (names the file and the key)."""


class DataError(HospitalnetError):
    """Site data is missing or malformed (names the file/column/value, never a patient id)."""


class NetworkError(HospitalnetError):
    """A peer, certificate or message problem that the user must fix."""


class CheckpointError(HospitalnetError):
    """No usable checkpoint, or one from another model or toolkit version."""
