"""Pure policies: snapshots in, decisions out. No I/O, no clock, no asyncio.

Every body (the local runtime, the Kubernetes runtime, the simulator) calls the same
functions; ``tests/unit/test_imports.py`` keeps this package free of I/O imports.
"""
