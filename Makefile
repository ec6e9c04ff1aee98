# Apus — developer entry points. `make test` is what CI runs (see .ci/run).
SHELL := /bin/bash
SWIFT ?= swift
SWIFT_BUILD_FLAGS ?=
BUILD_LOG := .build/last-build.log

.PHONY: run build test test-swift check-warnings manifests-check fmt fmt-check bench-informer bench-identity \
	bench-destination build-proxy bench-proxy bench-injector clean

## run: local mode: build the controller, proxy and demo, then run the demo manifests (examples/demo) as local
## processes with their proxies; state (CA, kubeconfig) in .apus/. Ctrl-C stops everything.
RUN_MANIFESTS ?= examples/demo
run:
	@# One product per call: `swift build` keeps only the last of several --product options.
	for product in apus-controller apus-proxy apus-demo; do \
		$(SWIFT) build $(SWIFT_BUILD_FLAGS) --product $$product || exit 1; \
	done
	"$$($(SWIFT) build $(SWIFT_BUILD_FLAGS) --show-bin-path)/apus-controller" --local $(RUN_MANIFESTS) --state-dir .apus

## build: compile every target (debug).
build:
	$(SWIFT) build $(SWIFT_BUILD_FLAGS)

## test: formatting check, build with the warning gate, all Swift tests, then the offline manifest checks.
test: fmt-check check-warnings test-swift manifests-check

## check-warnings: build all targets and tests; fail if our own sources produce any compiler warning.
check-warnings:
	@mkdir -p .build
	$(SWIFT) build --build-tests $(SWIFT_BUILD_FLAGS) 2>&1 | tee $(BUILD_LOG); test $${PIPESTATUS[0]} -eq 0
	@if grep -E "^$(CURDIR)/(Sources|Tests|Benchmarks)/.*: warning:" $(BUILD_LOG); then \
		echo "error: the build has warnings in Apus sources (Swift 6, no warnings allowed)"; exit 1; fi

## test-swift: the tests in three groups, so the process-heavy end-to-end suites (real proxies, controllers and demo
## apps) do not compete with each other and with the rest for the CI machine's two cores.
HEAVY_TESTS := ApusProxyTests|ApusLocalTests|ApusDemoTests
test-swift:
	$(SWIFT) test --skip-build $(SWIFT_BUILD_FLAGS) --skip "$(HEAVY_TESTS)"
	$(SWIFT) test --skip-build $(SWIFT_BUILD_FLAGS) --filter "ApusProxyTests"
	$(SWIFT) test --skip-build $(SWIFT_BUILD_FLAGS) --filter "ApusLocalTests|ApusDemoTests"

## manifests-check: kustomize, helm lint/template and kubernetes-validate, all offline.
manifests-check:
	hack/validate-manifests.sh

## fmt: format the sources in place with the toolchain's swift-format and the checked-in .swift-format.
fmt:
	$(SWIFT) format --in-place --recursive --configuration .swift-format Package.swift Sources Tests Benchmarks

## fmt-check: fail if any file is not formatted.
fmt-check:
	$(SWIFT) format lint --strict --recursive --configuration .swift-format Package.swift Sources Tests Benchmarks

## bench-informer: decode+apply rate and store RSS for 10,000 Pods through the API test server (release build).
bench-informer:
	$(SWIFT) run -c release InformerBenchmark

## bench-identity: CSRs certified per second on one thread (goal >= 2,000/s) and p50/p99 latency, next to the
## ECDSA sign/verify floor measured in the same run (release build).
bench-identity:
	$(SWIFT) run -c release IdentityBenchmark

## bench-destination: EndpointSlice change → destination subscribers p50/p99 with 1, 100 and 1,000 subscribers
## (goal p99 <= 100 ms at 1,000) next to the informer's own delivery latency, and controller RSS with 10,000 Pods /
## 1,000 Services loaded (goal <= 150 MiB) (release build).
bench-destination:
	$(SWIFT) run -c release DestinationBenchmark

## bench-injector: proxy injector webhook latency p50/p99 at 200 AdmissionReviews/s over HTTPS for 20 s
## (goal p99 <= 5 ms), with the request count (release build).
bench-injector:
	$(SWIFT) run -c release InjectorBenchmark $(BENCH_FLAGS)

## build-proxy: the release apus-proxy as it ships: on Linux with a static Swift runtime, packed relocations and no
## exported symbols (Package.swift, proxyReleaseLinkerSettings), for the smallest resident memory per pod.
build-proxy:
	$(SWIFT) build -c release $(SWIFT_BUILD_FLAGS) --product apus-proxy

## bench-proxy: wrk → nginx directly, through one apus-proxy, HAProxy, NGINX and an apus-proxy pair with mTLS:
## req/s, p50/p99, proxy RSS idle/peak, ratios to direct and to HAProxy (needs nginx, haproxy, wrk; release build).
bench-proxy: build-proxy
	$(SWIFT) run -c release $(SWIFT_BUILD_FLAGS) ProxyBenchmark $(BENCH_FLAGS)

clean:
	rm -rf .build
