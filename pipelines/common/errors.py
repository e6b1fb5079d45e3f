"""The one exception a user can cause; the CLI turns it into one ``error:`` line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad file, wrong shape, unknown name, corrupt checkpoint).

    The message must name the input and the fix. The CLI prints ``error: <message>`` on
    stderr with no traceback and exits with code 2. Anything else that escapes a verb is
    an internal failure (exit 1, traceback printed).
    """
