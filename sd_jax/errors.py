"""User-facing errors: raised for bad input, printed as one line by launch.py."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, ...).

    `launch.py` prints the message as a single line and exits non-zero, without a
    traceback. Raise it with a message that says what to do.
    """
