"""``python -m distill_eval`` is the ``distill-eval`` command."""

from distill_eval.cli import main

raise SystemExit(main())
