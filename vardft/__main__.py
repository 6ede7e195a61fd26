import sys

from vardft.cli import main

sys.exit(main())
