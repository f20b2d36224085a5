"""Run every benchmark script (`bench_*.py`), each at its default settings, one after another; what each prints is
in docs/performance.md (most a ratio of two ways of doing the same work, measured side by side).

make bench
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

if __name__ == "__main__":
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        failed |= subprocess.call([sys.executable, str(script)], cwd=HERE)
    sys.exit(failed)
