"""One exception type for mistakes a user can fix.

Every message names what is wrong and how to fix it. Front ends show the message as it is (the CLI
prints one line and exits non-zero, the studio raises gr.Error); anything else is a bug and keeps
its traceback.
"""


class TunerError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""
