"""``python -m trainer ...`` runs the command line (see ``trainer.cli``)."""

from trainer.cli import main

raise SystemExit(main())
