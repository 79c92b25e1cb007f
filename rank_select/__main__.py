import sys

from common.errors import run_cli
from rank_select.rank import main

sys.exit(run_cli(main))
