import sys

from sftbench.plan.cli import main

sys.exit(main())
