import sys

from common.cli.entry import run_stage

# parse and check with the torch-free relabel_eval.args first, then import torch and train (relabel_eval.train)
sys.exit(run_stage("relabel_eval.args", "relabel_eval.train"))
