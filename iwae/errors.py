"""Errors caused by the user's input (config, files, checkpoints).

`train.py` prints a `UserError` as one line, ``error: <message>``, and exits with status 2,
so every message must name the problem and, where there is one, the fix.
"""


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise a one-line `UserError` if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
