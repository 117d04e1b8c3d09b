"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem the user can fix (bad name, bad value, missing file, ...).

    The message must say what is wrong and how to fix it, in one line.
    """


class TrainingDiverged(UserError):
    """A loss became NaN/inf; the last good checkpoint is left untouched."""
