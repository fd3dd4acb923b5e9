#!/usr/bin/env python3
"""Print the Debian archive URI this machine's apt uses: runs hugepfn/crosscheck/mirror.py
(standard library only) from the checkout, before any virtual environment exists."""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).resolve().parent.parent / "crosscheck" / "mirror.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
