"""`python -m normalcy.apps.cli` = the `normalcy` command."""

from normalcy.apps.cli.main import main

raise SystemExit(main())
