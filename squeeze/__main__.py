import sys

from common.errors import run_cli
from squeeze.train import main

sys.exit(run_cli(main))
