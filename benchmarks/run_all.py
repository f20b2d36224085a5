"""Run every benchmark; each prints a ratio measured side by side in one process.

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
