# wmail developer commands. `make serve` and `make test` are the README's quick start.
SHELL := /bin/bash
ENV := source tools/dev/env.sh &&

.PHONY: serve test verify build bench

## serve: install build dependencies if missing, build, run a one-node server in ./wmail-data
serve:
	bash tools/dev/deps.sh build
	$(ENV) cargo run --locked -p wmail -- serve

## test: install test peers if missing, check format and lints, build, run every test
test:
	bash tests/run.sh

## verify: the same as test (format, clippy, tests), for people used to `make verify`
verify: test

## build: build every crate
build:
	bash tools/dev/deps.sh build
	$(ENV) cargo build --locked --workspace
