"""`python -m ltx_demo`: see ltx_demo.cli."""

from ltx_demo.cli import main

raise SystemExit(main())
