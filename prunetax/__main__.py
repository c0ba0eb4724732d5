import sys

from prunetax.benchmarks.cli import main

sys.exit(main())
