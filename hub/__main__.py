import sys

from common.cli.errors import run_cli
from hub.cli import main

sys.exit(run_cli(main))
