"""recover stage."""
