"""`python -m trainopt.tune RECIPE OUT`: one rank of a tuning trial under torchrun (tune/trial.py)."""

from .trial import main

raise SystemExit(main())
