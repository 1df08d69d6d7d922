# QNet entry points. `make test` is what CI runs on a fresh Debian 12 machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVNET_DIR ?= .devnet
VALIDATORS ?= 4
HOSTS ?= 5

.PHONY: help system-deps venv tools web test unit integration lint bench bench-network loadtest drill devnet \
	devnet-down testbed-up testbed-down artifacts testnet testnet-down clean

help:
	@echo "make testnet  4 validators (na, eu, ap, sa) and monitoring on testbed hosts, by Ansible"
	@echo "make testnet-down  stop and remove the testnet's hosts"
	@echo "make artifacts     the qnet wheel and its wheelhouse (build/artifacts/VERSION/)"
	@echo "make test     install what is needed and run the whole test suite"
	@echo "make web      build the wallet and status pages the nodes serve (node/qnet/webroot/)"
	@echo "make devnet   VALIDATORS (default 4) local validators with a funded faucet wallet"
	@echo "make bench    throughput benchmark (prints figures, writes bench-results/)"
	@echo "make bench-network  100 node processes: block propagation and memory per node type"
	@echo "make loadtest a load campaign (CAMPAIGN, default the short step) against the devnet:"
	@echo "              committed TPS, latency from intended send times, the knee, reports/"
	@echo "make drill    on a testnet of its own: UPGRADES (10) rolling upgrades under load, then"
	@echo "              DRILLS (20) faults: detect/act/recover times per kind"
	@echo "make lint     ruff, ansible-lint (production profile), promtool and amtool checks"
	@echo "make testbed-up    HOSTS (default 5) Debian hosts with systemd and sshd on 10.77.0.0/24"
	@echo "make testbed-down  stop them and remove everything testbed-up made"

# System packages the tests use: iproute2 (network namespaces for partition tests), Node.js
# and npm (the web pages' build), Chromium (the browser tests). Installed as root when missing.
SYSTEM_PACKAGES := ip:iproute2 node:nodejs npm:npm chromium:chromium
system-deps:
	@missing=$$(for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null || \
		echo $${pair#*:}; done); [ -z "$$missing" ] || [ "$$(id -u)" != 0 ] || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; }

# The wallet and status pages: web/build.mjs runs npm ci when web/package-lock.json changed,
# then bundles web/src with esbuild into node/qnet/webroot/ (git-ignored; the wheel ships it).
web: system-deps
	node web/build.mjs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -e '.[dev,load,plots]'
	touch $@

venv: $(STAMP)

# promtool and amtool, which check the monitoring configuration, from Debian's prometheus
# and prometheus-alertmanager packages (the releases the monitoring hosts run), unpacked
# here rather than installed: no daemon is set up on this machine.
TOOLS := build/tools
PROMTOOL := $(TOOLS)/usr/bin/promtool
$(TOOLS)/.unpacked:
	rm -rf $(TOOLS) && mkdir -p $(TOOLS)/debs
	cd $(TOOLS)/debs && { apt-get download -q prometheus prometheus-alertmanager || \
		{ apt-get update -qq && apt-get download -q prometheus prometheus-alertmanager; }; }
	for deb in $(TOOLS)/debs/*.deb; do dpkg-deb -x "$$deb" $(TOOLS); done
	touch $@
tools: $(TOOLS)/.unpacked

test: system-deps $(STAMP) $(TOOLS)/.unpacked web
	$(BIN)/python -m pytest -p no:cacheprovider --durations=30 tests

unit: $(STAMP) web
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit

integration: $(STAMP) web
	$(BIN)/python -m pytest -p no:cacheprovider tests/integration

# ruff finds Python files by their suffix; the alert log program has none.
ALERT_LOG := monitoring/alertmanager/qnet-alert-log
lint: $(STAMP) $(TOOLS)/.unpacked
	$(BIN)/ruff check node recovery tests loadtest ops monitoring $(ALERT_LOG)
	$(BIN)/ruff format --check node recovery tests loadtest ops monitoring $(ALERT_LOG)
	$(ANSIBLE_LINT)
	$(PROMTOOL) check rules monitoring/rules/*.yml
	cd monitoring && ../$(PROMTOOL) test rules tests/*.yml
	rm -rf build/monitoring
	# Renders what the roles write for the example inventory; each file is written only
	# once `promtool check config` or `amtool check-config` passed it.
	PATH="$(abspath $(TOOLS))/usr/bin:$$PATH" $(ANSIBLE_EXAMPLE) $(BIN)/ansible-playbook \
		-i ops/inventory/example ops/playbooks/render-monitoring.yml \
		-e monitoring_render_dir=$(abspath build/monitoring)

bench: $(STAMP) web
	$(BIN)/python loadtest/bench.py --validators 1 --rate 12000 --target 10000
	$(BIN)/python loadtest/bench.py --validators 4 --rate 5000 --target 4000

# A load campaign (Locust, headless) against the running devnet; LOADTEST_ARGS to aim it
# elsewhere (--url URL..., or --inventory INV for the campaign's targets.group, --keystore
# DIR --from WALLET to fund it). Reports in reports/<time>-<name>/.
CAMPAIGN ?= loadtest/campaigns/short-step.yml
LOADTEST_ARGS ?= --url http://127.0.0.1:7370 --url http://127.0.0.1:7372 \
	--keystore $(DEVNET_DIR)/wallets --from faucet
loadtest: $(STAMP)
	QNET_WALLET_PASSWORD=$${QNET_WALLET_PASSWORD:-devnet} \
		$(BIN)/python loadtest/campaign.py run $(CAMPAIGN) $(LOADTEST_ARGS)

bench-network: $(STAMP) web
	$(BIN)/python loadtest/network.py --nodes 100 --seconds 30

# Its own testnet (testbed hosts qt-*, test intervals): UPGRADES rolling upgrades in a row
# under load (every accepted transaction committed?), then DRILLS faults one at a time on
# random validators; a table of detect/act/recover times per fault kind, JSON in
# drill-results/.
DRILLS ?= 20
UPGRADES ?= 10
drill: system-deps $(STAMP)
	$(BIN)/python tests/drills.py --drills $(DRILLS) --upgrades $(UPGRADES) --out drill-results

devnet: $(STAMP) web
	$(BIN)/python -m qnet.devnet up --data-dir $(DEVNET_DIR) --validators $(VALIDATORS)

devnet-down: $(STAMP)
	$(BIN)/python -m qnet.devnet down --data-dir $(DEVNET_DIR)

# ansible-lint and the render of the monitoring configuration find the roles through
# ops/ansible.cfg, and decrypt the example vault.
ANSIBLE_EXAMPLE := ANSIBLE_CONFIG=ops/ansible.cfg \
	ANSIBLE_VAULT_PASSWORD_FILE=ops/inventory/example/vault-password.example
ANSIBLE_LINT := $(ANSIBLE_EXAMPLE) $(BIN)/ansible-lint --offline --profile production ops/

# The wheel and wheelhouse Ansible ships (ARTIFACTS=DIR, SOURCE=TREE to build elsewhere).
ARTIFACTS ?= build/artifacts
SOURCE ?= .
artifacts: system-deps $(STAMP)
	$(BIN)/python ops/testnet.py artifacts --out $(ARTIFACTS) --source $(SOURCE)

# Testbed hosts, artifacts, inventory, ops/playbooks/testnet.yml, a status table; all in
# ops/testnet.py. Run again, it rolls out again to the same hosts (and changes nothing).
testnet: system-deps $(STAMP)
	$(BIN)/python ops/testnet.py up

testnet-down: $(STAMP)
	$(BIN)/python ops/testnet.py down

testbed-up: $(STAMP)
	$(BIN)/python tests/testbed.py up --hosts $(HOSTS)

testbed-down: $(STAMP)
	$(BIN)/python tests/testbed.py down

clean:
	rm -rf $(VENV) $(DEVNET_DIR) bench-results drill-results reports node/qnet/webroot web/node_modules
