"""Benchmarks for openclaw-http-compat: ``python -m benchmarks`` (see ``benchmarks/README.md``)."""
