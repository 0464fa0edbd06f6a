"""The deployment tests import their process helpers as ``processes`` (test folders are not packages).

Appended, not prepended, to sys.path: this folder's conftest.py must never shadow another folder's."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
