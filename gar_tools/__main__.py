"""``python -m gar_tools``: the ``gar-tools`` command (for clients that start it with the venv's python)."""

from gar_tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
