"""What the repository ships: its workflows and their example images."""
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
EXAMPLE_IMAGES = sorted(glob.glob(os.path.join(REPO, "workflows", "*.png")))
