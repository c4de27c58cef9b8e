"""The one exception type the data loaders raise for a user-facing problem."""


class DataError(ValueError):
    """A data set is missing, malformed, unsafe, or asked for with bad arguments.

    The message names the bad value or file and says what would be accepted,
    so the training program can print it as is (no TensorFlow traceback).
    """
