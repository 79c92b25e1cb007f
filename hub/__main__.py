import sys

from common.errors import run_cli
from hub.cli import main

sys.exit(run_cli(main))
