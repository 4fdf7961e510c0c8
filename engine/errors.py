"""Error types shared by every layer.

`FlexsampleError` marks a problem with the user's input (a name, a value, a file): the CLI
prints its message as one line and exits with code 2. Anything else is a bug.
"""

from __future__ import annotations


class FlexsampleError(Exception):
    """A bad input: the message says what is wrong and what is accepted."""


class UnknownNameError(FlexsampleError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EstimatorError(FlexsampleError):
    """An estimator broke its contract (undeclared need, bad output)."""
