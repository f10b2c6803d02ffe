"""User-facing errors: raised for bad input, printed as one line by launch.py."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, ...).

    `launch.py` prints the message as a single line and exits non-zero, without a
    traceback. Raise it with a message that says what to do.
    """


class AbandonedWrites(UserError):
    """A UserError after which background writes (a failed checkpoint save's other threads) may
    still be failing: `launch.py` prints the line and exits at once, since their shutdown would
    print tracebacks from callbacks no Python hook sees (e.g. asyncio's 'Event loop is closed')."""
