"""`python -m tests.fuzz` (make fuzz): the full fuzz run; see tests/fuzz/run.py."""
import sys

from tests.fuzz.run import main

sys.exit(main())
