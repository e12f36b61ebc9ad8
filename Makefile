# The two commands of the README: `make run` (the local pipeline end to end) and `make test`.
.PHONY: install run run-kafka test lint bench package

install:
	bash scripts/install.sh

run: install
	.venv/bin/python -m pipeline.local_run

run-kafka: install
	.venv/bin/python -m pipeline.local_run --broker kafka

test:
	bash scripts/test.sh

lint: install
	.venv/bin/ruff check . && .venv/bin/mypy common trainer devservices pipeline bench
	for fn in functions/*/main.py; do .venv/bin/mypy "$$fn" || exit 1; done

bench: install
	for script in bench/bench_*.py; do .venv/bin/python "$$script" || exit 1; done

package: install
	.venv/bin/python -m pipeline.packaging --out build/functions
