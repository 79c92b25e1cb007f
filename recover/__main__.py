import sys

from common.cli.entry import run_stage

# parse and check with the torch-free recover.args first, then import torch and run recover.synthesize
sys.exit(run_stage("recover.args", "recover.synthesize"))
