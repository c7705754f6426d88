"""User-facing errors: each one is printed as a single line by the CLI, which then exits non-zero."""

from __future__ import annotations


class RomeBenchError(Exception):
    """An error the user can fix; its message names what is wrong and how to fix it."""


class UnknownEntryError(RomeBenchError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(RomeBenchError, ValueError):
    """A configuration or flag value is invalid."""


class DataNotFoundError(RomeBenchError, FileNotFoundError):
    """A dataset cannot be found locally and cannot be downloaded."""


class CheckpointError(RomeBenchError):
    """A checkpoint or run directory is missing, corrupt or would be overwritten."""


class ThreatOutputError(RomeBenchError):
    """A threat returned an input outside its declared budget, outside [0,1], or not finite."""


class TrainingError(RomeBenchError):
    """Training cannot go on (e.g. its loss became NaN or infinite); checkpoints written before are intact."""


class ModelOutputError(RomeBenchError):
    """A model's output is not one finite logit per class for each image."""


class StoreError(RomeBenchError):
    """The results store cannot be opened or written (not a database, read-only, a folder, disk full)."""


class MissingExtraError(RomeBenchError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""
