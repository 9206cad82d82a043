"""What a user is told: the one exception type a user can cause, and notes.

Anything raised as ``AfdError`` is printed by the CLI as a single sentence (no traceback) and
exits with status 2. Its message must name what is wrong and where: the file, row and field,
the option, or the model name.

:func:`note` tells the user, once, something afd did on their behalf that they may not expect
(an option it ignored, columns it does not read, the turns it trains), on stderr, from the main
process only.
"""

import os
import sys

_said: set[str] = set()


class AfdError(Exception):
    """A problem with the user's input, options, files or environment."""


class DataError(AfdError):
    """A malformed data file, row or field."""


class ConfigError(AfdError):
    """An unknown or ill-typed option, in a YAML file or on the command line."""


def note(message: str) -> None:
    """Print ``afd: note: MESSAGE`` to stderr once per process (the main one, under a launcher)."""
    if message in _said or os.environ.get("RANK", "0") != "0":
        return
    _said.add(message)
    print(f"afd: note: {message}", file=sys.stderr, flush=True)
