"""A stand-in for ModelArts' moxing, for tests: obs://bucket/path maps to
$FAKE_OBS_ROOT/bucket/path on the local disk. Only what modelarts.py uses."""
from moxing import file  # noqa: F401
