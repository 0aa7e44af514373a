# The two entry points of the README: `make demo` and `make test`.
.PHONY: demo test lint unit venv oracle system-deps

venv:
	@scripts/venv.sh

demo: venv
	.venv/bin/cloudvac demo

lint: venv
	.venv/bin/ruff check cloudvac tests benchmarks
	.venv/bin/mypy

oracle:
	@bash tests/oracle/setup.sh

system-deps:
	@scripts/system-deps.sh

test: venv lint oracle system-deps
	.venv/bin/python -m pytest -q -p no:cacheprovider

unit: venv
	.venv/bin/python -m pytest -q tests/unit
