"""relabel_eval stage."""
