# Two commands for users: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The offline wheelhouse beside the checkout, when there is one (CI and the dev machines);
# elsewhere pip uses its normal index.
WHEELHOUSE ?= $(wildcard $(abspath ../shared/wheelhouse))
PIP_ENV := $(if $(WHEELHOUSE),PIP_NO_INDEX=1 PIP_FIND_LINKS=$(WHEELHOUSE),)
export CHEF_LICENSE := accept-no-persist
export BACKUP_AGENT_WHEELHOUSE := $(WHEELHOUSE)
export BACKUP_AGENT_WHEELS := $(abspath build/wheels)
# The agent the cookbook carries (a node asks no index for it), and the hash lock of its
# dependencies, which nodes install from the mirror their attributes name.
COOKBOOK_AGENT := cookbooks/backup_agent/files/agent
# The agent's extras the cookbook can install (node['backup_agent']['install']['extras']): each has
# a lock of its own beside requirements.lock (requirements-EXTRA.lock) with what it adds.
COOKBOOK_EXTRAS := chunking
AGENT_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' agent/pyproject.toml)
AGENT_WHEEL := backup_agent-$(AGENT_VERSION)-py3-none-any.whl
# hatchling's reproducible build, with the timestamp fixed here rather than by the caller's
# environment: the same agent/ gives the same wheel bytes wherever it is built.
WHEEL_EPOCH := 1580601600

.PHONY: demo test deps venv bundle wheel cookbook-wheel cookbook-lock check-cookbook lint lint-python lint-ruby chefspec pytest test-converge test-e2e test-containers test-storage-cluster images bench bench-datasets clean

demo: venv
	$(BIN)/python tests/support/demo.py

test: deps venv bundle wheel check-cookbook lint chefspec pytest

deps:
	bash .ci/deps.sh

venv: $(VENV)/.installed
$(VENV)/.installed: agent/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/pip install --quiet --upgrade pip
	$(PIP_ENV) $(BIN)/pip install --quiet -e 'agent[dev]'
	touch $@

bundle: vendor/bundle/.installed
vendor/bundle/.installed: Gemfile Gemfile.lock
	bundle config set --local path vendor/bundle
	bundle install --jobs 2 --quiet
	touch $@

# The agent as a wheel, built from agent/ (reproducible: see WHEEL_EPOCH).
wheel: venv
	rm -rf build/wheels && mkdir -p build/wheels
	SOURCE_DATE_EPOCH=$(WHEEL_EPOCH) $(PIP_ENV) $(BIN)/pip wheel --quiet --no-deps -w build/wheels ./agent

# After changing agent/: put its wheel into the cookbook (commit it); after changing the agent's
# dependencies: regenerate the locks (commit them). check-cookbook (in `make test`) fails until both are.
cookbook-wheel: wheel
	rm -f $(COOKBOOK_AGENT)/backup_agent-*.whl
	cp build/wheels/$(AGENT_WHEEL) $(COOKBOOK_AGENT)/
# LOCK_WHEELS: more folders whose files of the pinned versions are hashed too (another Python's builds).
cookbook-lock: wheel
	$(PIP_ENV) $(BIN)/python .ci/cookbook_agent.py lock build/wheels/$(AGENT_WHEEL) $(COOKBOOK_AGENT)/requirements.lock $(addprefix --extra ,$(COOKBOOK_EXTRAS)) $(addprefix --wheels ,$(WHEELHOUSE) $(LOCK_WHEELS))
check-cookbook: wheel
	$(PIP_ENV) $(BIN)/python .ci/cookbook_agent.py check build/wheels/$(AGENT_WHEEL) $(COOKBOOK_AGENT)/$(AGENT_WHEEL) $(COOKBOOK_AGENT)/requirements.lock $(addprefix --extra ,$(COOKBOOK_EXTRAS)) $(addprefix --wheels ,$(WHEELHOUSE))

lint: lint-python lint-ruby
lint-python: venv
	$(BIN)/ruff check agent tests bench
	$(BIN)/mypy --config-file agent/pyproject.toml
lint-ruby: bundle
	bundle exec cookstyle cookbooks/backup_agent Berksfile cookbooks/backup_agent/ohai/backup_agent.rb

chefspec: bundle
	cd cookbooks/backup_agent && bundle exec rspec

# Suites that change this machine (a real converge, knife bootstrap: packages, /etc, /opt;
# systemd containers: overlays, cgroups) run one after the other, after the rest, one engineer or
# CI job at a time; they run where CI=true (or when asked), else skip saying why.
MACHINE_SUITES := tests/converge $(wildcard tests/e2e) tests/containers
MACHINE_LOCK := flock /tmp/machine-suite.lock
# Three workers on two cores: the suites wait on servers and subprocesses a good part of the time
# (2026-12-04: 758 s with two workers, 631 s with three, same tests).
pytest: venv wheel
	$(BIN)/pytest -n 3 --dist loadfile $(addprefix --ignore=,$(MACHINE_SUITES))
	$(MACHINE_LOCK) $(BIN)/pytest $(MACHINE_SUITES)

test-converge: deps venv bundle
	BACKUP_AGENT_CONVERGE=1 $(BIN)/pytest tests/converge -v

# knife against chef-zero and an sshd on loopback, bootstrapping this machine (root).
test-e2e: deps venv bundle
	BACKUP_AGENT_E2E=1 $(BIN)/pytest tests/e2e -v

# Debian 12 and 13 containers with systemd as PID 1 (tests/support/containers.py): the service
# under real systemd, knife bootstrap into a fresh node. The images are built once per machine
# (debootstrap, cached in /var/cache/backup-agent-test; `make images` builds them alone).
test-containers: deps venv wheel bundle
	BACKUP_AGENT_CONTAINERS=1 $(MACHINE_LOCK) $(BIN)/pytest tests/containers -v

# The backup storage cluster alone (part of test-containers): three storage-node containers and a
# client, knife bootstrap from chef-zero, one node powered off and back (docs/STORAGE_CLUSTER.md).
test-storage-cluster: deps venv wheel bundle
	BACKUP_AGENT_CONTAINERS=1 BACKUP_AGENT_CONTAINER_SUITES=bookworm $(MACHINE_LOCK) $(BIN)/pytest tests/containers/test_storage_cluster.py -v

images: deps venv
	cd tests && ../$(BIN)/python -m support.containers build bookworm trixie

bench: venv
	$(PIP_ENV) $(BIN)/pip install --quiet -e 'agent[dev,bench]'
	$(BIN)/python bench/files_bench.py

# Realistic data (a real-file tree, a growing log, a database file changed in place, a sparse
# image) against restic and s5cmd: the figures issue #20's goals are set in.
bench-datasets: venv
	$(PIP_ENV) $(BIN)/pip install --quiet -e 'agent[dev,bench]'
	$(BIN)/python bench/datasets_bench.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
