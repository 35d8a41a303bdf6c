#!/usr/bin/env python
"""Run a script under torchrun (directly, or via srun on a multi-node Slurm allocation)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.launch import main  # noqa: E402

main()
