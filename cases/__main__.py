import sys

from cases.command import main

sys.exit(main())
