"""The one exception type a user can cause.

Anything raised as ``AfdError`` is printed by the CLI as a single sentence (no traceback) and
exits with status 2. Its message must name what is wrong and where: the file, row and field,
the option, or the model name.
"""


class AfdError(Exception):
    """A problem with the user's input, options, files or environment."""


class DataError(AfdError):
    """A malformed data file, row or field."""


class ConfigError(AfdError):
    """An unknown or ill-typed option, in a YAML file or on the command line."""
