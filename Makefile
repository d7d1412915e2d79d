# ermc: `make test` and `make bench` install what they need on a fresh
# Debian machine (memcached, nutcracker, sasl2-bin) and run.

GO        ?= go
FUZZTIME  ?= 30s
SERVERS   := memcached nutcracker saslpasswd2
APT_PKGS  := memcached nutcracker sasl2-bin libsasl2-modules

.PHONY: deps test race alloc bench profile fuzz lint

# deps installs the servers the tests start, when any is missing.
deps:
	@missing=0; for b in $(SERVERS); do command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing $(APT_PKGS)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

# test: vet, the whole suite under the race detector, then once more
# without it so the allocation assertions (skipped under -race) run.
test: deps lint
	$(GO) test -race -count=1 -timeout 15m ./...
	$(GO) test -count=1 -timeout 15m ./...

lint:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: files above need formatting" && exit 1)
	$(GO) vet ./...

# bench: the package's own benchmarks, each driver against a memcached the
# benchmark starts on a free loopback port.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count 1 .

# fuzz: every Fuzz target of the package, one after the other, for
# FUZZTIME each (default 30s). Targets and corpora: fuzz/README.md.
# Each new input is minimized for 3s at most: the default (60s) spends
# a short run minimizing instead of exploring.
fuzz:
	@set -e; for t in $$($(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
		echo "== $$t ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 3s .; \
	done

# fuzz-smoke: every Fuzz target for 3s, for CI.
.PHONY: fuzz-smoke
fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=3s
