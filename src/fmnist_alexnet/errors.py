"""The one exception type for user errors: the CLI prints its message and exits with 2."""


class FmnistError(Exception):
    """A problem the user can fix (bad input, missing data, bad flag value).

    The message is one line, says what went wrong and, where possible, how to fix it.
    """
