import sys

from memsinks.cli import main

sys.exit(main())
