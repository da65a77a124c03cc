#!/usr/bin/env python3
"""A chaos run (the same as ``grapevine chaos``): see ``grapevine chaos --help``.

    python scripts/chaos.py --nodes 5 --users 100 --messages 2000 --rate 50 --kill-every 10
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["chaos", *sys.argv[1:]]))
