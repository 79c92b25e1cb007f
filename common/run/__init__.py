"""Run bookkeeping: resume state and output ownership, manifests, atomic writes."""
