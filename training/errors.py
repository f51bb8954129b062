"""The one exception type for a user's mistake: the CLI prints its message as one line."""


class UserError(Exception):
    """Bad data, a bad option, a missing file: something the user can fix.

    The CLI catches it and prints `error: <message>` without a traceback.
    """
