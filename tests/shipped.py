"""What the repository ships (scripts/shipped.py), as the tests use it."""
from shipped_files import EXAMPLE_IMAGES, REPO, WORKFLOWS  # noqa: F401

IMAGE_SIZE = (128, 96)  # example inputs for engine runs: small and non-square, to keep CPU runs short
