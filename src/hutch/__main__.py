"""``python -m hutch`` runs the ``hutch`` command."""

from hutch.cli import main

raise SystemExit(main())
