"""``python -m alumi_edge`` runs the CLI."""

from alumi_edge.cli import main

raise SystemExit(main())
