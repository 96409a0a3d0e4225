"""Decision policy around the bandit: catalogue and eligibility, arbitration, levers, holdout, contact caps,
stickiness, and the pipeline that composes them (see policy/README.md)."""
