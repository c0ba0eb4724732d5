import sys

from prunetax.benchmarks.cli import main

if __name__ == "__main__":  # spawned worker processes (dask, loky) re-import this module
    sys.exit(main())
