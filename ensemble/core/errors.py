"""User-facing errors: bad input or settings, reported as one clear line and a non-zero exit."""


class UserError(Exception):
    """Something the user can fix (file, column, rows, params key); never a library traceback."""


class ModelLoadError(UserError, RuntimeError):
    """A backbone/tokenizer that cannot be loaded; the message names it and the fix."""


class DataError(UserError, ValueError):
    """Bad input: the message names the file, column and rows; CLIs turn it into exit code 2."""
