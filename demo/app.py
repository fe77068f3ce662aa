"""Entry point of the hosted demo: ``python demo/app.py [--host H] [--port P] [--model M] [--allow-any-model]``.

The app is `crossattn.app`; this file takes the same options as ``crossattn demo`` and works from a checkout
without installing the package.
"""

import sys
from pathlib import Path

try:
    import crossattn  # noqa: F401
except ImportError:  # a checkout, not installed: the package sits next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crossattn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
