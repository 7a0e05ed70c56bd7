"""``python -m ov3d_ros.labelling --scene DIR ...``: the ``ov3d-train label`` command on its own."""
import sys

from .cli import label_main

sys.exit(label_main())
