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


class VideoError(ValueError):
    """A video file that does not decode, or decodes with errors (a damaged stream): names the file and ffmpeg's
    first error."""


class TrajectoryError(ValueError):
    """A commanded camera path that cannot be one: fewer than 2 poses, non-finite or non-rigid poses, or another
    frame count than the video's (unless resampling was asked for)."""


class IntrinsicsError(ValueError):
    """A field of view or pinhole intrinsics no camera has: non-finite, a focal length <= 0, a field of view
    outside (0, 180) degrees."""


class WeightsError(ValueError):
    """A weights file (``--dit_path``, ``--wan_model_path``, a checkpoint) that does not load, or whose tensors do
    not fit the model: names the file and what is wrong with it."""
