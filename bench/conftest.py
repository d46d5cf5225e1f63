import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import dp_config, maps, syncer, tc, xdp  # noqa: E402,F401  (shared fixtures)
