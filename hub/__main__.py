import sys

from common.cli.entry import run_stage

# parse and check with the torch-free hub.args first, then run hub.cli
sys.exit(run_stage("hub.args", "hub.cli"))
