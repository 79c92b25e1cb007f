"""Command line: the torch-free entry of every command, one-line errors, typed flags, output-path checks."""
