"""squeeze stage."""
