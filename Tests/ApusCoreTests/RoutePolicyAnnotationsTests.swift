import ApusCore
import Foundation
import Testing

@Suite struct RoutePolicyAnnotationsTests {
    typealias Annotations = RoutePolicyAnnotations

    static func seconds(_ value: Int64) -> GoDuration { GoDuration(nanoseconds: value * 1_000_000_000) }
    static func milliseconds(_ value: Int64) -> GoDuration { GoDuration(nanoseconds: value * 1_000_000) }

    struct ValidCase: Sendable, CustomStringConvertible {
        var annotations: [String: String]
        var expected: Annotations
        var description: String { annotations.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: " ") }
    }

    static let validCases: [ValidCase] = [
        ValidCase(annotations: [:], expected: Annotations()),
        ValidCase(annotations: ["unrelated.io/key": "x"], expected: Annotations()),
        ValidCase(
            annotations: ["retry.linkerd.io/http": "5xx"], expected: Annotations(retryHTTP: [.serverErrors])),
        ValidCase(
            annotations: ["retry.linkerd.io/http": "gateway-error, 429,500-501"],
            expected: Annotations(retryHTTP: [
                .gatewayErrors, HTTPStatusRange(lower: 429, upper: 429), HTTPStatusRange(lower: 500, upper: 501),
            ])),
        ValidCase(
            annotations: [
                "retry.linkerd.io/grpc": "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable"
            ],
            expected: Annotations(retryGRPC: [
                .cancelled, .deadlineExceeded, .internal, .resourceExhausted, .unavailable,
            ])),
        ValidCase(
            annotations: ["retry.linkerd.io/limit": "0", "retry.linkerd.io/timeout": "150ms"],
            expected: Annotations(retryLimit: 0, retryTimeout: milliseconds(150))),
        ValidCase(
            annotations: [
                "timeout.linkerd.io/request": "1m30s", "timeout.linkerd.io/response": "2s",
                "timeout.linkerd.io/idle": "0s",
            ],
            expected: Annotations(requestTimeout: seconds(90), responseTimeout: seconds(2), idleTimeout: .zero)),
        ValidCase(
            annotations: [
                "balancer.linkerd.io/failure-accrual": "consecutive",
                "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "3",
                "balancer.linkerd.io/failure-accrual-consecutive-min-penalty": "500ms",
                "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "30s",
                "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio": "0.25",
            ],
            expected: Annotations(
                consecutiveFailureAccrual: true, maxFailures: 3, minPenalty: milliseconds(500),
                maxPenalty: seconds(30), jitterRatio: 0.25)),
        // Tuning keys without the mode do nothing, as in Linkerd.
        ValidCase(
            annotations: ["balancer.linkerd.io/failure-accrual-consecutive-max-failures": "3"],
            expected: Annotations()),
    ]

    @Test("valid annotations parse to typed values with no issue", arguments: validCases)
    func parsesValid(_ validCase: ValidCase) {
        let parsed = Annotations.parse(validCase.annotations, on: .service)
        #expect(parsed.issues.isEmpty)
        #expect(parsed.annotations == validCase.expected)
    }

    struct InvalidCase: Sendable, CustomStringConvertible {
        var key: String
        var value: String
        var message: String
        var description: String { "\(key)=\(value)" }
    }

    static let invalidCases: [InvalidCase] = [
        InvalidCase(key: "retry.linkerd.io/http", value: "5xx,600", message: "'600' is not a status code"),
        InvalidCase(key: "retry.linkerd.io/http", value: "504-500", message: "'504-500' is not a status code"),
        InvalidCase(key: "retry.linkerd.io/http", value: "4xx", message: "'4xx'"),
        InvalidCase(key: "retry.linkerd.io/http", value: "500,", message: "'' is not a status code"),
        InvalidCase(key: "retry.linkerd.io/grpc", value: "internal,flaky", message: "'flaky' is not a gRPC status"),
        InvalidCase(key: "retry.linkerd.io/limit", value: "-1", message: "'-1' is not an integer in 0-"),
        InvalidCase(key: "retry.linkerd.io/limit", value: "two", message: "'two' is not an integer"),
        InvalidCase(key: "retry.linkerd.io/timeout", value: "10", message: "10"),
        InvalidCase(key: "timeout.linkerd.io/request", value: "-1s", message: "must not be negative"),
        InvalidCase(key: "timeout.linkerd.io/idle", value: "1d", message: "1d"),
        InvalidCase(key: "balancer.linkerd.io/failure-accrual", value: "success-rate", message: "not supported"),
    ]

    @Test("an invalid value drops only its key and names it in the issue's field", arguments: invalidCases)
    func dropsInvalidKey(_ invalid: InvalidCase) throws {
        let annotations = [invalid.key: invalid.value, "timeout.linkerd.io/response": "5s"]
        let parsed = Annotations.parse(annotations, on: .service)
        let issue = try #require(parsed.issues.first)
        #expect(parsed.issues.count == 1)
        #expect(issue.field == "metadata.annotations[\(invalid.key)]")
        #expect(issue.message.contains(invalid.message), "\(issue.message)")
        // The valid key still applies, and the invalid one left no value behind.
        #expect(parsed.annotations == Annotations(responseTimeout: Self.seconds(5)))
    }

    @Test("failure-accrual bounds are checked: max failures ≥ 1, penalties > 0 and ordered, jitter 0-100")
    func failureAccrualBounds() {
        let base = ["balancer.linkerd.io/failure-accrual": "consecutive"]
        func parse(_ extra: [String: String]) -> (annotations: Annotations, issues: [ValidationIssue]) {
            Annotations.parse(base.merging(extra) { $1 }, on: .service)
        }
        let zeroFailures = parse(["balancer.linkerd.io/failure-accrual-consecutive-max-failures": "0"])
        #expect(
            zeroFailures.issues.map(\.field) == [
                "metadata.annotations[balancer.linkerd.io/failure-accrual-consecutive-max-failures]"
            ])
        #expect(zeroFailures.annotations.policy.failureAccrual?.consecutiveMaxFailures == 7)

        // A min above the default max (1m) conflicts; both bounds fall back to the defaults.
        let reversed = parse(["balancer.linkerd.io/failure-accrual-consecutive-min-penalty": "2m"])
        #expect(reversed.issues.first?.message.contains("must not exceed max penalty 1m0s") == true)
        let policy = reversed.annotations.policy.failureAccrual
        #expect(policy?.minPenalty == Self.seconds(1) && policy?.maxPenalty == Self.seconds(60))

        let jitter = parse(["balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio": "101"])
        #expect(jitter.issues.count == 1 && jitter.annotations.jitterRatio == nil)
        let zeroPenalty = parse(["balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "0s"])
        #expect(zeroPenalty.issues.first?.message == "max penalty must be greater than 0")
    }

    @Test("defaults: consecutive accrual is 7 / 1s / 1m / 0.5; retries default to limit 1 on 5xx")
    func defaults() {
        let accrual = Annotations.parse(["balancer.linkerd.io/failure-accrual": "consecutive"], on: .service)
        #expect(
            accrual.annotations.policy.failureAccrual
                == RoutePolicy.FailureAccrual(
                    consecutiveMaxFailures: 7, minPenalty: Self.seconds(1), maxPenalty: Self.seconds(60),
                    jitterRatio: 0.5))

        let timeoutOnly = Annotations.parse(["retry.linkerd.io/timeout": "300ms"], on: .route).annotations.policy
        let expectedRetry = RoutePolicy.Retry(
            limit: 1, httpStatuses: [.serverErrors], timeout: Self.milliseconds(300))
        #expect(timeoutOnly.retry == expectedRetry)
        let grpcOnly = Annotations.parse(["retry.linkerd.io/grpc": "unavailable"], on: .route).annotations.policy
        #expect(grpcOnly.retry == RoutePolicy.Retry(limit: 1, grpcCodes: [.unavailable]))
        #expect(grpcOnly.retry?.grpcCodes.map(\.code) == [14])

        // Limit 0 disables retries; zero timeouts mean none; no annotation means an empty policy.
        let disabled = Annotations.parse(
            ["retry.linkerd.io/http": "5xx", "retry.linkerd.io/limit": "0", "timeout.linkerd.io/request": "0s"],
            on: .service
        ).annotations.policy
        #expect(disabled.isEmpty)
        #expect(Annotations.parse(nil, on: .service).annotations.policy.isEmpty)
    }

    @Test("failure-accrual keys on a route are reported and ignored: they configure the Service's balancer")
    func failureAccrualOnRoute() {
        let parsed = Annotations.parse(
            ["balancer.linkerd.io/failure-accrual": "consecutive", "retry.linkerd.io/limit": "2"], on: .route)
        #expect(parsed.issues.map(\.field) == ["metadata.annotations[balancer.linkerd.io/failure-accrual]"])
        #expect(parsed.annotations.policy.failureAccrual == nil)
        #expect(parsed.annotations.retryLimit == 2)
        #expect(
            Annotations.ignoredAnnotationsMessage(parsed.issues)
                == "ignored invalid annotations: metadata.annotations[balancer.linkerd.io/failure-accrual]: "
                + "failure accrual configures the Service's load balancer; set it on the Service")
        #expect(Annotations.ignoredAnnotationsMessage([]) == nil)
    }

    @Test("a route's retry keys replace all of the Service's retry keys; groups it does not set are kept")
    func routeWinsPerGroup() {
        let service = Annotations.parse(
            [
                "retry.linkerd.io/http": "gateway-error", "retry.linkerd.io/limit": "3",
                "retry.linkerd.io/timeout": "1s", "timeout.linkerd.io/request": "10s",
                "timeout.linkerd.io/idle": "1m", "balancer.linkerd.io/failure-accrual": "consecutive",
            ], on: .service
        ).annotations
        let route = Annotations.parse(["retry.linkerd.io/limit": "2"], on: .route).annotations
        let policy = service.overridden(by: route).policy
        // Linkerd: any retry key on the route overrides the whole retry group, so the Service's `gateway-error`
        // and per-try timeout do not leak into the route; the route's limit retries the default 5xx.
        #expect(policy.retry == RoutePolicy.Retry(limit: 2, httpStatuses: [.serverErrors]))
        #expect(policy.timeouts == RoutePolicy.Timeouts(request: Self.seconds(10), idle: Self.seconds(60)))
        #expect(policy.failureAccrual?.consecutiveMaxFailures == 7)

        let routeTimeouts = Annotations.parse(["timeout.linkerd.io/response": "3s"], on: .route).annotations
        let overridden = service.overridden(by: routeTimeouts).policy
        #expect(overridden.timeouts == RoutePolicy.Timeouts(response: Self.seconds(3)))
        let serviceRetry = RoutePolicy.Retry(limit: 3, httpStatuses: [.gatewayErrors], timeout: Self.seconds(1))
        #expect(overridden.retry == serviceRetry)

        // A route with no policy annotation inherits everything.
        #expect(service.overridden(by: Annotations()) == service)
    }

    @Test("an HTTPRoute rule's timeouts.request and backendRequest win over the annotations for that rule")
    func ruleTimeoutsWin() throws {
        let route = HTTPRoute(
            metadata: ObjectMeta(
                name: "web", namespace: "shop",
                annotations: ["timeout.linkerd.io/request": "10s", "timeout.linkerd.io/response": "4s"]),
            spec: HTTPRoute.Spec(
                parentRefs: [HTTPRoute.ParentReference(group: "core", kind: "Service", name: "web", port: 80)],
                rules: [
                    HTTPRoute.Rule(
                        backendRefs: [HTTPRoute.BackendRef(name: "web", port: 80)],
                        timeouts: HTTPRoute.Timeouts(request: "2s", backendRequest: "500ms")),
                    HTTPRoute.Rule(backendRefs: [HTTPRoute.BackendRef(name: "web", port: 80)]),
                ]))
        let compiled = try route.compile()
        let policy = Annotations.parse(route.metadata.annotations, on: .route).annotations.policy
        let first = policy.applying(compiled.rules[0])
        #expect(
            first.timeouts
                == RoutePolicy.Timeouts(
                    request: Self.seconds(2), response: Self.seconds(4), backendRequest: Self.milliseconds(500)))
        #expect(policy.applying(compiled.rules[1]).timeouts.request == Self.seconds(10))
    }

    @Test("the policy round-trips through JSON with durations as Go strings")
    func codable() throws {
        let policy = RoutePolicy(
            retry: RoutePolicy.Retry(limit: 2, httpStatuses: [.gatewayErrors], grpcCodes: [.deadlineExceeded]),
            timeouts: RoutePolicy.Timeouts(request: Self.seconds(90)))
        let data = try JSONEncoder().encode(policy)
        let json = try #require(String(data: data, encoding: .utf8))
        #expect(json.contains("\"1m30s\"") && json.contains("\"deadline-exceeded\""))
        #expect(try JSONDecoder().decode(RoutePolicy.self, from: data) == policy)
    }
}
