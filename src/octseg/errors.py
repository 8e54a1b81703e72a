"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations


class OctsegError(Exception):
    """Base class: a problem with the user's input, data or configuration."""


class DataError(OctsegError):
    """A data file or folder is unreadable or inconsistent. The message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(OctsegError):
    """A configuration key or value is invalid."""


class CheckpointError(OctsegError):
    """A checkpoint cannot be loaded (corrupt, unsafe, incompatible)."""
