import sys

from common.cli.entry import run_stage

# parse and check with the torch-free rank_select.args first, then import torch and run rank_select.rank
sys.exit(run_stage("rank_select.args", "rank_select.rank"))
