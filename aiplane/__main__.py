"""``python -m aiplane``: the ``aiplane`` command, for processes that know only an interpreter."""

from aiplane.cli.main import main

main()
