"""The benchmarks, a package: run each from the repository root as `.venv/bin/python -m bench.<name>`
(`make bench` is `-m bench.suite`). The modules import each other as `bench.<name>`; bench/serving.py is
the one `qwen-chat serve` launcher, which the tests use too (tests/support/serve_process.py)."""
