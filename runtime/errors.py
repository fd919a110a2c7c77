"""The one exception type a user ever sees: the CLI prints its message on one line, no stack trace."""


class AgptError(Exception):
    """A user error (bad path, foreign checkpoint, altered bundle, malformed input): message names what and where."""
