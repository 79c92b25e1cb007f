"""``python -m common.hub``: the old name of ``python -m hub``, kept for one release.

The hub is now the top-level package ``hub/`` (registry, download, extraction,
class-folder mapping, pack); this module only forwards the command.
"""
if __name__ == "__main__":
    import sys

    from common.errors import run_cli
    from hub.cli import main

    print("note: python -m common.hub is now python -m hub (this alias goes in the next release)", file=sys.stderr)
    sys.exit(run_cli(main))
