"""`python -m eurosat.predict MODEL IMAGES...`: a thin front; the code lives in eurosat/deploy/predict.py."""

from __future__ import annotations

import sys

from eurosat.deploy.predict import main

if __name__ == "__main__":
    sys.exit(main())
