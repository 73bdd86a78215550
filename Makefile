# provision — build, test, demo.
#
#   make demo      the main job on a built-in example, step by step
#   make test      everything: format, lints, the guide, unit, integration and end-to-end tests
#   make guide     the user guide (docs/src) into target/guide, with mdBook
#   make install   binary and systemd units into $(DESTDIR)$(PREFIX)

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
# Debian packages the build and the demo use, plus the package of every tool
# a test requires (testkit/tools.txt: real git daemon, sshd, nginx, Prometheus,
# Chromium, ansible for the inventory...), so nothing the tests use comes
# only from `make bench` or by hand.
TEST_TOOL_PACKAGES := $(shell awk '!/^\#/ && NF { print $$2 }' testkit/tools.txt | sort -u)
APT_PACKAGES := $(sort git pkg-config libssl-dev python3 python3-yaml tzdata man-db bash-completion $(TEST_TOOL_PACKAGES))
# The peers `make bench` compares provision with, and an independent timer.
BENCH_APT_PACKAGES := ansible-core hyperfine valgrind
# mdBook builds the user guide; only its HTML renderer and search are built.
MDBOOK_VERSION := 0.5.4

.PHONY: all build release deps test lint unit guide demo install clean deb rpm version previous-deb

all: build

build:
	$(CARGO) build

release:
	@if [ -n "$(VERSION)" ]; then $(MAKE) version VERSION=$(VERSION); fi
	$(CARGO) build --release

# Installs what is missing, and nothing else: safe to run on every make test.
deps:
	@bash scripts/deps.sh $(APT_PACKAGES)
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	@command -v mdbook >/dev/null || $(CARGO) install --locked --version $(MDBOOK_VERSION) --no-default-features --features search mdbook

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Examples are built by clippy above; they hold no tests. The tools check
# names a missing tool and its package before any test runs; --no-fail-fast
# runs every test binary even after one fails, and the last line is the total
# over all of them.
unit: deps deb rpm previous-deb
	@bash scripts/check-tools.sh
	@mkdir -p target
	@status=0; bash -o pipefail -c '$(CARGO) test --no-fail-fast --lib --bins --tests 2>&1 | tee target/test.log' || status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test.log; \
	exit $$status

test: lint guide unit

# The guide must build without a warning; its links are checked by the
# integration test docs:: (every page, every anchor, every page in SUMMARY).
guide: deps
	@mkdir -p target
	@status=0; mdbook build docs > target/guide.log 2>&1 || status=$$?; cat target/guide.log; \
	test $$status -eq 0 && ! grep -qE 'WARN|ERROR' target/guide.log

demo: deps release
	@$(CARGO) run --quiet --release --example demo -- $(CURDIR)/target/release/provision

# Measures provision's reconcile pass against the git CLI, ansible-pull and
# the one-round-trip floor, and writes docs/BENCHMARKS.md. Not part of test.
.PHONY: bench
bench: deps release
	@bash scripts/deps.sh $(BENCH_APT_PACKAGES)
	$(CARGO) bench --bench reconcile -- --out $(CURDIR)/docs/BENCHMARKS.md
	$(CARGO) bench --bench fleet -- --out $(CURDIR)/docs/BENCHMARKS.md
	$(CARGO) bench --bench rollout -- --out $(CURDIR)/docs/BENCHMARKS.md
	$(CARGO) bench --bench transport -- --out $(CURDIR)/docs/BENCHMARKS.md
	$(CARGO) bench --bench scale -- --out $(CURDIR)/docs/BENCHMARKS.md
	$(CARGO) bench --bench push -- --out $(CURDIR)/docs/BENCHMARKS.md

UNITDIR ?= /etc/systemd/system
GENERATORDIR ?= $(PREFIX)/lib/systemd/system-generators
UNITS := provision@.service provision@.timer provision-mount@.service provision-config.path provision-activate.service

ASSETS := target/assets
MANDIR ?= $(PREFIX)/share/man/man1
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

# Man pages from the clap definitions, completion scripts, and the units
# with the binary's installed path ($(BINPATH)).
BINPATH ?= /usr/bin/provision
.PHONY: assets deb
assets: release
	rm -rf $(ASSETS) && mkdir -p $(ASSETS)/units
	$(CARGO) run --quiet --example assets -- $(ASSETS)
	gzip -9nf $(ASSETS)/man/*.1
	for u in $(UNITS) provision-generator; do \
		sed 's|/usr/local/bin/provision|$(BINPATH)|' units/$$u > $(ASSETS)/units/$$u; done

# target/debian/provision_<version>_<arch>.deb
deb: deps
	$(MAKE) assets BINPATH=/usr/bin/provision
	$(CARGO) deb --no-build

# target/generate-rpm/provision-<version>-1.x86_64.rpm, for RHEL, Fedora,
# openSUSE: RPM's own rpmbuild (Debian's rpm package) from rpm/provision.spec,
# over the same assets as the .deb, at Fedora's paths.
PKG_VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
rpm: deps
	$(MAKE) assets BINPATH=/usr/bin/provision
	rm -rf target/rpmbuild && mkdir -p target/generate-rpm
	{ cat rpm/provision.spec; python3 scripts/changelog.py rpm; } > target/provision.spec
	rpmbuild -bb --quiet --define "_topdir $(CURDIR)/target/rpmbuild" \
	  --define "srcroot $(CURDIR)" --define "pkgversion $(PKG_VERSION)" target/provision.spec
	cp target/rpmbuild/RPMS/x86_64/provision-$(PKG_VERSION)-1.x86_64.rpm target/generate-rpm/

# The .deb of an earlier commit, for the in-place upgrade test: built once
# (a release build of that commit, some minutes) and kept outside the tree.
PREVIOUS ?= 239f65b
PREVIOUS_DEB ?= $(HOME)/.cache/provision-test/provision-$(PREVIOUS).deb
previous-deb: $(PREVIOUS_DEB)
$(PREVIOUS_DEB):
	rm -rf target/previous && git worktree prune
	git worktree add -f --detach target/previous $(PREVIOUS)
	$(MAKE) -C target/previous assets BINPATH=/usr/bin/provision
	mkdir -p $(dir $@)
	cd target/previous && $(CARGO) deb --no-build --deb-version 0.1.0~prev-1 -o $@.tmp && mv $@.tmp $@
	git worktree remove --force target/previous

# One version, in Cargo.toml, drives the .deb, the .rpm, --version and the
# man pages. `make version VERSION=x.y.z` sets it and turns CHANGELOG.md's
# "Unreleased" entries into x.y.z's (today), regenerating debian/changelog;
# `make release VERSION=x.y.z` does that and builds.
version:
	@test -n "$(VERSION)" || { echo "make version VERSION=x.y.z"; exit 2; }
	@echo "$(VERSION)" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+$$' || { echo "VERSION must be x.y.z"; exit 2; }
	sed -i '0,/^version = ".*"/s//version = "$(VERSION)"/' Cargo.toml
	python3 scripts/changelog.py release $(VERSION) $$(date -u +%F)
	python3 scripts/changelog.py debian > debian/changelog

install: release
	$(MAKE) assets BINPATH=$(PREFIX)/bin/provision
	install -D -m 0755 target/release/provision $(DESTDIR)$(PREFIX)/bin/provision
	for u in $(UNITS); do install -D -m 0644 $(ASSETS)/units/$$u $(DESTDIR)$(UNITDIR)/$$u; done
	install -D -m 0755 $(ASSETS)/units/provision-generator $(DESTDIR)$(GENERATORDIR)/provision-generator
	for m in $(ASSETS)/man/*.1.gz; do install -D -m 0644 $$m $(DESTDIR)$(MANDIR)/$$(basename $$m); done
	install -D -m 0644 $(ASSETS)/completions/provision $(DESTDIR)$(BASHCOMPDIR)/provision
	install -D -m 0644 $(ASSETS)/completions/_provision $(DESTDIR)$(ZSHCOMPDIR)/_provision
	install -D -m 0644 $(ASSETS)/completions/provision.fish $(DESTDIR)$(FISHCOMPDIR)/provision.fish
	mkdir -p $(DESTDIR)/etc/provision

clean:
	$(CARGO) clean

# Fuzzing of the config parser; long, so not part of `make test` (which runs
# the bounded property test tests/it/config_fuzz.rs). First coverage-guided with
# libFuzzer through cargo-fuzz, on the stable toolchain: RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its -Z flags. No sanitizer (the parser is safe Rust); debug
# assertions on, so an arithmetic overflow is a crash. Corpus and crash
# artifacts stay in fuzz/ (ignored by git). Then the property test's
# structure-aware and mutation generators with many cases and a fresh seed.
#   make fuzz FUZZ_SECONDS=600 FUZZ_ITERS=200000 FUZZ_SEED=42
FUZZ_SECONDS ?= 300
FUZZ_ITERS ?= 50000
FUZZ_SEED ?= $(shell date +%s)
CARGO_FUZZ_VERSION := 0.13.2

.PHONY: fuzz
fuzz: deps
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked --version $(CARGO_FUZZ_VERSION) cargo-fuzz
	@mkdir -p fuzz/corpus/config
	@cp examples/config.toml fuzz/corpus/config/example-config.toml
	@cp fuzz/seeds/*.toml fuzz/corpus/config/
	@status=0; \
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none --debug-assertions config fuzz/corpus/config -- \
		-max_total_time=$(FUZZ_SECONDS) -dict=fuzz/config.dict -max_len=8192 -print_final_stats=1 || status=1; \
	echo "corpus: $$(ls fuzz/corpus/config | wc -l) inputs in fuzz/corpus/config"; \
	mkdir -p fuzz/corpus/allowed_signers && cp fuzz/seeds/allowed_signers fuzz/corpus/allowed_signers/; \
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none --debug-assertions allowed_signers fuzz/corpus/allowed_signers -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 || status=1; \
	PROVISION_FUZZ_ITERS=$(FUZZ_ITERS) PROVISION_FUZZ_SEED=$(FUZZ_SEED) \
		$(CARGO) test --test it config_fuzz:: -- --nocapture || status=1; \
	exit $$status
