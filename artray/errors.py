"""The base of errors a user can fix: the CLI prints their message (no traceback) and exits 2."""


class UserError(Exception):
    """Bad input, config or environment; the message names what and how to fix it."""
