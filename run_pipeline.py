#!/usr/bin/env python
"""prefstack command line; see ``python run_pipeline.py --help``."""
import os
import sys

# LightGBM and torch share OpenMP: passive waiting must be set before either starts its
# thread pool, or spinning threads make LightGBM many times slower on small machines.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
