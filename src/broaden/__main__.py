import sys

from broaden.cli import main

sys.exit(main())
