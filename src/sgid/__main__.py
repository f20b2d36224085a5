import sys

from sgid.cli import main

sys.exit(main())
