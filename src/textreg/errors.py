"""Errors the user can fix, and how entry scripts report them."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix (config, data, paths): reported as one line, without a traceback."""


def run_reporting_user_errors(action: Callable[[], object]) -> int:
    """Exit code of an entry script: 0, or 2 with `error: ...` on stderr for a UserError."""
    try:
        action()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
