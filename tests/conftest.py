"""Lets test modules import their shared helpers (``policy_contract``) by name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
