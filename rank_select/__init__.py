"""rank_select stage."""
