"""The exception of bad input, for the messages the command lines print.

Bad input found before any work starts raises a ``ValueError`` (or ``FileNotFoundError``) that names the input
and what is wrong with it; the recipes and ``lyra-rl`` print it as one line ``PROG: error: ...`` and exit with
status 2. Bad input that can only be found once a run has started (every checkpoint of a ``--resume`` fails to
load) raises :class:`InputError`, which they print the same way; any other exception during training is a fault
and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input found once a run has started: printed as one line by the recipes, like a ``ValueError`` raised
    before it started."""
