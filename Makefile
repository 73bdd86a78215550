# provision — build, test, demo.
#
#   make demo      the main job on a built-in example, step by step
#   make test      everything: format, lints, unit, integration and end-to-end tests
#   make install   binary and systemd units into $(DESTDIR)$(PREFIX)

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
# Debian packages the tests and the demo use (real git daemon, real sshd).
APT_PACKAGES := git pkg-config libssl-dev openssh-server prometheus prometheus-node-exporter

.PHONY: all build release deps test lint unit demo install clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Installs what is missing, and nothing else: safe to run on every make test.
deps:
	@bash scripts/deps.sh $(APT_PACKAGES)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Examples are built by clippy above; they hold no tests. The last line is
# the total over every test binary.
unit: deps
	@mkdir -p target
	bash -o pipefail -c '$(CARGO) test --lib --bins --tests 2>&1 | tee target/test.log'
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test.log

test: lint unit

demo: deps release
	@$(CARGO) run --quiet --release --example demo -- $(CURDIR)/target/release/provision

UNITDIR ?= /etc/systemd/system
GENERATORDIR ?= $(PREFIX)/lib/systemd/system-generators
UNITS := provision@.service provision@.timer provision-mount@.service

install: release
	install -D -m 0755 target/release/provision $(DESTDIR)$(PREFIX)/bin/provision
	for u in $(UNITS); do install -D -m 0644 units/$$u $(DESTDIR)$(UNITDIR)/$$u; done
	install -D -m 0755 units/provision-generator $(DESTDIR)$(GENERATORDIR)/provision-generator
	sed -i 's|/usr/local/bin/provision|$(PREFIX)/bin/provision|' \
		$(DESTDIR)$(UNITDIR)/provision@.service $(DESTDIR)$(UNITDIR)/provision-mount@.service \
		$(DESTDIR)$(GENERATORDIR)/provision-generator

clean:
	$(CARGO) clean
