"""Benchmarks: each prints figures against Prosody run on the same machine in the same run.

Not tests: nothing here asserts behaviour. Run them through their entry scripts in scripts/
(e.g. scripts/bench-idle), which set PYTHONPATH so that `benchlib` is importable.
"""
