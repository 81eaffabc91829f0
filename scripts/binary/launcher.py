"""PyInstaller's entry script for the `appliance` binary: the same `main` as the console script.
It lives outside the package so the package's directory never lands on sys.path as a top level."""

from appliance.cli import main

raise SystemExit(main())
