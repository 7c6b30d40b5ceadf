# piman — `make demo` runs the manager with a simulated fleet; `make test` runs every check.
# Both create .venv and install what they need; `make test` run as root also installs the Debian
# packages the tests use (real DHCP/TFTP/SNMP/Prometheus peers, Chromium, QEMU, PostgreSQL).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

APT_PACKAGES := gcc libc6-dev python3-dev busybox-static isc-dhcp-client tftp-hpa atftp curl dnsmasq-base tftpd-hpa kea-admin snmp snmpsim prometheus prometheus-node-exporter victoria-metrics qemu-system-x86 ipxe-qemu openssh-server chromium iproute2 linux-image-amd64 cpio postgresql-15 \
  bmap-tools nginx-light e2fsprogs dosfstools mtools fdisk qemu-system-arm qemu-utils cloud-init xz-utils zstd debian-archive-keyring strace fakeroot systemd pssh openssl

.PHONY: demo test lint typecheck pytest apt-deps clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "python3 -m venv failed: install python3-venv (Debian) and retry" >&2; exit 1; fi; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.manager: pyproject.toml setup.py src/piman/netboot/tftp/_lanes.c | $(BIN)/python
	$(BIN)/pip install -q -e '.[manager]'
	touch $@

$(VENV)/.test: pyproject.toml setup.py src/piman/netboot/tftp/_lanes.c | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.manager

# What the demo's virtual Pis need to reinstall (the installer runs under busybox; the demo OS
# image is made with sfdisk, mkfs.vfat, mcopy, mke2fs). Without them the demo runs, minus that.
DEMO_APT_PACKAGES := busybox-static openssl fdisk dosfstools mtools e2fsprogs

demo: $(VENV)/.manager
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(DEMO_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; fi
	$(BIN)/piman demo

apt-deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	  fi; \
	else echo "not root: skipping Debian packages (tests that need them will skip)"; fi

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.test
	$(BIN)/mypy

pytest: $(VENV)/.test
	@$(BIN)/pytest $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "pytest ran no tests: that is a failure" >&2; exit 1; fi; \
	  exit $$code

test: apt-deps lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
