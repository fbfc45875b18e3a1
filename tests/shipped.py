"""What the repository ships, as the tests see it."""
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
EXAMPLE_IMAGES = sorted(glob.glob(os.path.join(REPO, "workflows", "*.png")))
IMAGE_SIZE = (128, 96)  # example inputs for engine runs: small and non-square, to keep CPU runs short
