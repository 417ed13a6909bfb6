import sys

from klingflow.cli import main

sys.exit(main())
