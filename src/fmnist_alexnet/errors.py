"""The one exception type for user errors: the CLI prints its message and exits with 2."""


class FmnistError(Exception):
    """A problem the user can fix (bad input, missing data, bad flag value).

    The message is one line, says what went wrong and, where possible, how to fix it.
    """


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Why a text file could not be read, in words: where its first non-UTF-8 byte is."""
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
