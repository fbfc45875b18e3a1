"""A custom node package only the browser tests' ComfyUI server loads: it gives that server the
tests' stand-ins (tests/stand_ins.py) for what a CPU test run cannot load. It adds no nodes."""
import stand_ins  # the tests' folder is on the server's PYTHONPATH (tools/browser_support.comfyui_server)

stand_ins.install()
NODE_CLASS_MAPPINGS = {}
