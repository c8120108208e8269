"""`python -m eurosat.launch`: run one federated training job (see eurosat/launch/launcher.py)."""

import sys

from eurosat.launch.launcher import main

sys.exit(main())
