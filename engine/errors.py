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


class PluginError(FlexsampleError):
    """A plugin (an estimator, policy, allocation or anchor strategy that is not part of
    flexsample) raised an exception or returned something outside its contract. The message
    names the plugin, where it comes from (entry point or --plugin module) and the cause."""


class RegistrationError(FlexsampleError, ValueError):
    """A registration that cannot be accepted: a name taken by a built-in or another plugin,
    or no name at all. A ValueError too, as registration errors were before."""


class ParameterError(FlexsampleError, ValueError):
    """A bad value of a named parameter of the engine (`Curriculum(rounds=0)`).

    The message names the parameters as Python callers spell them (`rounds`); `params` lists
    them, so that the command line can say `--rounds` instead (`as_flags`).
    """

    def __init__(self, message: str, *params: str) -> None:
        super().__init__(message)
        self.params = params

    def as_flags(self) -> str:
        """The message with each parameter named as its flag (`rounds` -> `--rounds`)."""
        import re

        text = str(self)
        for param in self.params:
            flag = "--" + param.replace("_", "-")
            text = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w-])", flag, text)
        return text
