"""The exit codes every command shares, named in one place."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # anything not named below
    USAGE = 2  # a bad flag or argument
    CONNECTION_FAILED = 3
    CREDENTIALS_REFUSED = 4
    TIMED_OUT = 5
    HTTP_ERROR = 6  # the other side answered with an HTTP error
    BAD_INPUT = 7  # malformed data given to us (JSON to decode, say)
    INTERRUPTED = 130  # Ctrl-C
