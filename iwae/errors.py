"""Errors caused by the user's input (config, files, checkpoints).

Every entry point (``train.py``, ``mode=eval``, each ``python -m iwae.reports.*``) prints a
`UserError` as one line, ``error: <message>``, and exits with status 2 (`exit_on_user_error`),
so every message must name the problem and, where there is one, the fix.
"""

import functools
import math
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""


def exit_for(err: UserError) -> NoReturn:
    """Print ``err`` as the one line ``error: <message>`` on stderr and exit with status 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def exit_on_user_error(main: Callable[P, R]) -> Callable[P, R]:
    """``main`` with a `UserError` raised anywhere below it turned into `exit_for`'s one line:
    the one error path of every command-line entry point."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            exit_for(err)

    return wrapper


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise a one-line `UserError` if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(
    name: str, value: object, minimum: float = 0.0, maximum: float | None = None
) -> float:
    """Return ``value`` as a float, or raise a one-line `UserError` unless it is a finite number
    in ``[minimum, maximum)`` (``maximum`` None: no upper bound)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and value >= minimum and (maximum is None or value < maximum):
        return float(value)
    upper = f" and < {maximum:g}" if maximum is not None else ""
    raise UserError(f"{name} must be a finite number >= {minimum:g}{upper}, got {value!r}")


def check_optional_int(name: str, value: object, minimum: int = 1, meaning: str = "") -> None:
    """`check_positive_int` that also accepts null; ``meaning`` says what null does."""
    if value is not None:
        try:
            check_positive_int(name, value, minimum)
        except UserError:
            raise UserError(
                f"{name} must be an integer >= {minimum} or null{meaning}, got {value!r}"
            ) from None


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")
    return value
