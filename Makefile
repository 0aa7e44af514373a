# The two entry points of the README: `make demo` and `make test`.
.PHONY: demo test lint unit venv wheelhouse oracle system-deps install bench

# Creates .venv, or completes/repairs it after an interrupted install; quick when done.
venv:
	@scripts/venv.sh

# Wheels of every dependency in .cache/wheelhouse, so the wheel test installs offline.
wheelhouse: venv
	@scripts/venv.sh wheelhouse

demo: venv
	.venv/bin/cloudvac demo

lint: venv
	.venv/bin/ruff check cloudvac tests benchmarks
	.venv/bin/mypy

oracle:
	@bash tests/oracle/setup.sh

system-deps:
	@scripts/system-deps.sh

# The set-up steps after the venv are independent: they run side by side (the install
# steps prefix their progress lines with their names), about a minute off a fresh clone.
test: venv
	@$(MAKE) --no-print-directory -j4 wheelhouse lint oracle system-deps
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30

unit: venv
	.venv/bin/python -m pytest -q tests/unit

# Every benchmark in a small configuration, each within its own budget (8 minutes in all
# on the loaded 2-core machine; `faults` needs `make oracle`, `ha_postgres` `make
# system-deps`, else they are skipped), JSON into BENCH_OUT; the full figures' commands are
# in benchmarks/README.md.  Not run by `make test`.
BENCH_OUT ?= benchmarks/results/small
bench: venv
	.venv/bin/python -m benchmarks.all --out $(BENCH_OUT)

# Install cloudvac as a systemd service (root): a virtualenv under /opt/cloudvac, the units,
# the cloudvac user, tmpfiles, logrotate, man pages.  Options in deploy/install.sh's header,
# e.g. `make install INSTALL_ARGS="--extras postgresql --log-file"`.
install:
	deploy/install.sh $(INSTALL_ARGS)
