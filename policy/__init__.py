"""Decision policy around the bandit: catalogue, eligibility (and, as they land, arbitration, levers, caps)."""
