import sys

from common.errors import run_cli
from recover.synthesize import main

sys.exit(run_cli(main))
