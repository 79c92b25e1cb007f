import sys

from common.cli.entry import run_stage

# parse and check with the torch-free squeeze.args first, then import torch and train (squeeze.train)
sys.exit(run_stage("squeeze.args", "squeeze.train"))
