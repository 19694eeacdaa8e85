"""The typed error tree. Every error a user can cause is an EdgekitError with a one-line message
saying what is wrong and what to do; the CLI prints it without a traceback and exits with `exit_code`."""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}; {hint}")


class UsageError(EdgekitError):
    """A flag or argument is wrong."""


class ModelLoadError(EdgekitError):
    """The model source cannot be found, read or built."""


class TargetError(EdgekitError):
    """The target name or target file is wrong."""


class CalibrationError(EdgekitError):
    """The calibration data is missing, empty or does not match the model's inputs."""


class CompressionError(EdgekitError):
    """A model cannot be compressed as asked (e.g. no layer's channels can be removed)."""


class ConversionError(EdgekitError):
    """Export, simplification or quantization failed."""

    exit_code = 3


class ValidationFailed(EdgekitError):
    """The artifact was written but its validation verdict is 'fail'."""

    exit_code = 4


class ArtifactError(EdgekitError):
    """An artifact folder is missing, incomplete or unreadable."""


class RuntimeMissing(EdgekitError):
    """No interpreter for the artifact's format is installed."""


class DeviceError(EdgekitError):
    """A device cannot be reached, refused a step, or lacks something the run needs."""

    exit_code = 5


class DeviceTimeout(DeviceError):
    """A device stopped answering within a step's time limit."""


class DeviceBusy(DeviceError):
    """Another edgekit bench holds the device's lock."""
