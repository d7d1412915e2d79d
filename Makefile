# ermc: `make test` and `make bench` install what they need on a fresh
# Debian machine (memcached, nutcracker, sasl2-bin) and run.

GO               ?= go
FUZZTIME         ?= 30s
FUZZMINTIME      ?= 3s
FUZZBOUND        ?=
FUZZ_SMOKE_EXECS ?= 20000x
# Latency medians over 9 rounds: in 11 interleaved rounds on a shared
# 2-core machine, one client's p99 at a quarter of gomemcache's capacity
# ranged from 0.2 ms to 1.4-1.8 ms, more than the clients differ.
BENCH_LATENCY_ROUNDS ?= 9
export BENCH_LATENCY_ROUNDS
SERVERS          := memcached nutcracker saslpasswd2
APT_PKGS         := memcached nutcracker sasl2-bin libsasl2-modules

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
# without it so the allocation assertions (skipped under -race) run; then
# the benchmark harness's own tests (bench/ is a module of its own), and
# the OpenTelemetry adapter's (otel/, likewise).
test: deps lint
	$(GO) test -race -count=1 -timeout 15m ./...
	$(GO) test -count=1 -timeout 15m ./...
	cd bench && $(GO) vet ./... && $(GO) test -count=1 -timeout 5m ./...
	cd otel && $(GO) vet ./... && $(GO) test -race -count=1 ./...

lint:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: files above need formatting" && exit 1)
	$(GO) vet ./...

# bench: ermc (text, binary, ultra) against gomemcache on a throwaway
# memcached on a free loopback port (or ERMC_BENCH_ADDR) and over an
# in-memory responder, clients alternated round by round; then open-loop
# latency at fixed offered rates. Prints the tables of medians and writes
# bench/results.md, bench/chart.svg and bench/latency.svg (and .png), the
# README's latency block, and ermc's CPU and allocation profiles into
# profiles/. Tune with BENCH_ROUNDS (3), BENCH_TIME (500ms per
# measurement), BENCH_WORKLOADS, BENCH_TRANSPORTS, BENCH_LATENCY_ROUNDS (9), BENCH_LATENCY_TIME (1s)
# and the other BENCH_LATENCY_* variables; see bench/README.md.
bench: deps
	@sh bench/install-tools.sh
	cd bench && $(GO) run ./cmd/ermcbench -cmd "make bench" -out results.md -chart chart.svg -latency-chart latency.svg -readme ../README.md -profiles ../profiles

# profile: only ermc's CPU and allocation profiles (and their call graphs)
# into profiles/; BENCH_PROFILE_TIME (3s) per workload.
profile: deps
	@sh bench/install-tools.sh
	cd bench && $(GO) run ./cmd/ermcbench -cmd "make profile" -only-profiles -profiles ../profiles

# fuzz: every Fuzz target of the package, one after the other, for
# FUZZTIME each (default 30s; a count of executions such as 50000x works
# too). Targets and corpora: fuzz/README.md. Each new input is minimized
# for FUZZMINTIME at most (3s): the default (60s) spends a short run
# minimizing instead of exploring.
fuzz:
	@set -e; for t in $$($(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
		echo "== $$t ($(FUZZTIME))"; \
		$(FUZZBOUND) $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) . || \
			{ rc=$$?; echo "== $$t FAILED (exit status $$rc; 124: ran past FUZZBOUND)"; exit 1; }; \
	done

# fuzz-smoke: every Fuzz target for FUZZ_SMOKE_EXECS executions (a few
# seconds each on two cores), for CI. Counts, not durations: with a
# duration, Go 1.26's fuzzing coordinator can fail a clean run with
# "context deadline exceeded" at the deadline (golang/go#75804, fixed in
# Go 1.27); a count sets no deadline, so only a real finding fails.
# go test sets no -timeout while fuzzing, so each run is bounded from
# outside: one that takes 5 minutes (a few seconds is the norm) is a hang.
.PHONY: fuzz-smoke
fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZ_SMOKE_EXECS) FUZZMINTIME=1000x \
		FUZZBOUND="timeout -k 30 300"
