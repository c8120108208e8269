"""`python -m eurosat.export MODEL --to onnx`: a thin front; the exporters live in eurosat/deploy/export.py."""

from __future__ import annotations

import sys

from eurosat.deploy.export import main

if __name__ == "__main__":
    sys.exit(main())
