"""Errors that end a command with a one-line message and a documented exit code (DESIGN.md §3)."""

from __future__ import annotations


class LabgenError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(LabgenError):
    """Bad input or usage: name the file, the YAML path, and what to do."""

    exit_code = 2


class InfraError(LabgenError):
    """The lab itself could not run: name the resource in the way."""

    exit_code = 3
