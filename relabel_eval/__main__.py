import sys

from common.errors import run_cli
from relabel_eval.train import main

sys.exit(run_cli(main))
