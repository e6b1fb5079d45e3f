"""The one exception a user can cause; the CLI turns it into one ``error:`` line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad file, wrong shape, unknown name, corrupt checkpoint).

    The message must name the input and the fix. The CLI prints ``error: <message>`` on
    stderr with no traceback and exits with code 2. Anything else that escapes a verb is
    an internal failure (exit 1, traceback printed).
    """

    def __init__(self, message: str = "", *, ui_message: str | None = None) -> None:
        """``ui_message``: the same error phrased for a Gradio page (no CLI flags), if the
        CLI message does not read well there; ``demo_helpers.gradio_errors`` shows it."""
        super().__init__(message)
        self.ui_message = ui_message
