# umld: `make demo` and `make test` work on a fresh Debian machine.
# Every target installs what is missing first (apt packages, .venv, umld
# itself with its C parts), so nothing needs to be installed by hand.

SHELL := /bin/bash
# Debian's interpreter: every user can run it (a pyenv under /root cannot
# be run by the ordinary users the tests and the demo run umld as).
PYTHON ?= /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := .stamp-apt .stamp-ids .stamp-venv .stamp-pkg .stamp-pyc .stamp-bench
# What the package build (setup.py) reads: a change rebuilds the C parts.
PKG_SRC := pyproject.toml setup.py MANIFEST.in $(wildcard c_tracer/*.c c_tracer/*.h c_tracer/build_ffi.py)
PY_SRC := $(wildcard umld/*.py umld/*/*.py umld/*/*/*.py)

# Debian packages: compiler and headers for the C tracer and pyfuse3, the
# FUSE runtime, the peers the benchmark compares against, the programs
# the tests run as guests, and clang-format for `make lint`.
APT_PACKAGES := gcc make pkg-config python3 python3-venv python3-dev libffi-dev \
	fuse3 libfuse3-dev strace proot git tar procps psmisc hostname util-linux \
	libpython3.11-testsuite e2fsprogs fuse2fs systemd keyutils tmux gcc-multilib clang-format \
	passt slirp4netns iproute2 curl
# VDE virtual Ethernet (umld/core/vde.py: vde_switch, vde_plug, dpipe; ip and
# nsenter drive them), and what its tests use: ping, tcpdump, and socat for a
# TCP stream between two network namespaces standing for two hosts, and
# busybox's udhcpc as a guest's DHCP client of slirpvde.
APT_PACKAGES += vde2 iputils-ping tcpdump socat udhcpc
# strace, gdb and ltrace run inside guests in the tests (the guest's own ptrace).
APT_PACKAGES += gdb ltrace
# The OCI runtime's tests compare umld oci with runc on the same bundles,
# whose root file systems are made from busybox, and podman and containerd with each.
APT_PACKAGES += runc busybox podman containerd
# ...and check its JSON against the runtime-spec's own schemas (shipped in
# Debian's Go package of the spec; runtime-tools' validation suite is not).
APT_PACKAGES += golang-github-opencontainers-specs-dev
# What the Linux Test Project's build needs (make conformance, conformance/ltp.py).
APT_PACKAGES += autoconf automake m4 bison flex libaio-dev libacl1-dev libcap-dev \
	libnuma-dev libselinux1-dev libssl-dev libtirpc-dev libmnl-dev libkeyutils-dev

.PHONY: all install install-systemd demo test test-fast lint bench bench-quick conformance clean

all: install

install: .stamp-apt .stamp-ids .stamp-pkg .stamp-pyc

.stamp-apt: scripts/install-deps.sh Makefile
	scripts/install-deps.sh $(APT_PACKAGES)
	touch $@

# The `umld` user whose subordinate ids root-run machines get.
.stamp-ids: scripts/install-ids.sh
	scripts/install-ids.sh
	touch $@

.stamp-venv: | .stamp-apt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	touch $@

# umld itself, as `pip install .` installs it but editable: the same build
# (setup.py) compiles the C tracer extension and umld-sandbox, here in
# place (umld/tracer/_c_tracer*.so, umld/core/umld-sandbox).
.stamp-pkg: .stamp-venv $(PKG_SRC)
	$(VPY) -m pip install -q -e '.[test,export]'
	touch $@

# Byte-compile now: a start that finds no .pyc compiles every module
# (~10 ms of each `umld run`), and PYTHONDONTWRITEBYTECODE may be set.
.stamp-pyc: .stamp-pkg $(PY_SRC)
	$(VPY) -m compileall -q umld
	touch $@

demo: install
	@scripts/demo.sh

test: install
	$(VPY) -m pytest -q

test-fast: install
	$(VPY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check umld tests bench conformance examples c_tracer setup.py
	clang-format --dry-run --Werror c_tracer/*.c c_tracer/*.h
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict bench/run.py bench/w7_source.py bench/tty.py bench/net.py bench/oci.py
	$(VENV)/bin/mypy --strict conformance/run.py conformance/ltp.py examples/app_channel.py
	$(VENV)/bin/mypy --strict c_tracer/build_ffi.py c_tracer/bench.py

# The bench draws its ratios as a PNG; matplotlib is only needed here.  Its
# peers: bubblewrap (the namespace floor) and PRoot 5.4 with its seccomp
# accelerator, built from the shared anchors when they are there (the
# bench says n/a otherwise); apache2 and ab for the server case.
BENCH_PACKAGES := bubblewrap libtalloc-dev uthash-dev apache2 apache2-utils
ANCHORS ?= ../shared/anchors
.stamp-bench: .stamp-venv
	scripts/install-deps.sh $(BENCH_PACKAGES)
	$(VPY) -m pip install -q matplotlib
	if [ -x $(ANCHORS)/build-proot.sh ] && [ ! -x bench/out/peers/proot ]; then \
		$(ANCHORS)/build-proot.sh bench/out/peers; fi
	touch $@

bench: install .stamp-bench
	$(VPY) bench/run.py --json bench/out/results.json --plot bench/out/ratios.png $(BENCH_ARGS)
	$(VPY) bench/export.py --json bench/out/export.json
	$(VPY) bench/tty.py --json bench/out/tty.json
	$(VPY) bench/net.py --json bench/out/net.json
	$(VPY) bench/server.py --json bench/out/server.json
	$(VPY) bench/server.py --keepalive --json bench/out/server-keepalive.json
	$(VPY) bench/scale.py --soak 60 --json bench/out/scale.json --plot bench/out/soak.png $(SCALE_ARGS)
	$(VPY) bench/oci.py --json bench/out/oci.json

bench-quick: install .stamp-bench
	$(VPY) bench/run.py --quick --plot bench/out/ratios.png $(BENCH_ARGS)

conformance: install
	$(VPY) conformance/run.py $(CONFORMANCE_ARGS)
	$(VPY) conformance/run.py --suite issue3 $(CONFORMANCE_ARGS)
	$(VPY) conformance/run.py --nested $(CONFORMANCE_ARGS)
	$(VPY) conformance/ltp.py $(LTP_ARGS)
	if [ "$$(id -u)" = 0 ]; then $(VPY) conformance/ltp.py --as-user umld-tester $(LTP_ARGS); fi

# The daemon as a systemd service: units, tmpfiles snippet, and the umld
# command on PATH (a link to this checkout's venv).
install-systemd: install
	ln -sf $(CURDIR)/$(VENV)/bin/umld /usr/local/bin/umld
	install -m 0644 systemd/umld.service systemd/umld@.service /etc/systemd/system/
	install -m 0644 systemd/umld.tmpfiles.conf /etc/tmpfiles.d/umld.conf
	install -d -m 0755 /etc/umld/machines
	if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemd-tmpfiles --create umld.conf; fi

clean:
	rm -rf $(VENV) $(STAMPS) .stamp-ctracer build dist *.egg-info umld/tracer/_c_tracer*.so \
		umld/tracer/_c_tracer.c umld/tracer/_c_tracer.o umld/core/umld-sandbox bench/out conformance/out \
		umld/__pycache__ umld/*/__pycache__ umld/*/*/__pycache__
