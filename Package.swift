// swift-tools-version:6.0
import PackageDescription

/// How release builds link `apus-proxy` on Linux. Every pod runs one proxy, so its resident memory counts (issue 4:
/// ≤ 20 MiB idle): the Swift runtime and FoundationEssentials are linked statically (shared copies map whole
/// libraries; the two `_Foundation*` archives are what static FoundationEssentials needs and the dynamic module it
/// was compiled against does not autolink), and lld packs relative relocations (DT_RELR: the loader no longer
/// reads ~1.7 MB of relocation records) and leaves our symbols unexported (nothing looks them up; ~2.5 MB of
/// tables). Link step only, so module compilation is the same as for every other product.
///
/// Test bundles link the executable's module too and cannot take a static runtime next to the shared XCTest and
/// Testing libraries, so release-mode test builds set `APUS_PROXY_SHARED_RUNTIME=1` (`swift test -c release`).
let proxyReleaseLinkerSettings: [LinkerSetting] =
    Context.environment["APUS_PROXY_SHARED_RUNTIME"] != nil
    ? []
    : [
        .unsafeFlags(
            [
                "-static-stdlib", "-l_FoundationCShims", "-l_FoundationCollections", "-use-ld=lld",
                "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic",
            ],
            .when(platforms: [.linux], configuration: .release))
    ]

let package = Package(
    name: "apus",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "apus-controller", targets: ["apus-controller"]),
        .executable(name: "apus-proxy", targets: ["apus-proxy"]),
        .executable(name: "apus", targets: ["apus"]),
        .executable(name: "apus-demo", targets: ["apus-demo"]),
        .library(name: "ApusCore", targets: ["ApusCore"]),
        .library(name: "KubernetesClient", targets: ["KubernetesClient"]),
        .library(name: "KubernetesTestServer", targets: ["KubernetesTestServer"]),
        .library(name: "ApusIdentity", targets: ["ApusIdentity"]),
        .library(name: "ApusIdentityClient", targets: ["ApusIdentityClient"]),
        .library(name: "ApusInjector", targets: ["ApusInjector"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
    ],
    targets: [
        // Pure vocabulary shared by control and data plane: resource model, durations, route matching.
        .target(
            name: "ApusCore",
            dependencies: []
        ),
        // The system OpenSSL 3 (libcrypto/libssl), used only through ApusX509.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // X.509 keys, certificates and CSRs on OpenSSL with a pointer-free Swift API.
        .target(
            name: "ApusX509",
            dependencies: ["COpenSSL"]
        ),
        // Workload identity CA (Linkerd-compatible names, CSR checks, leaf issuing) and the Certify wire types;
        // CPU-only, no networking or Kubernetes I/O.
        .target(
            name: "ApusIdentity",
            dependencies: ["ApusCore", "ApusX509"]
        ),
        // Kubernetes API client: config, typed REST, watch, informers, work queue, leader election, events.
        .target(
            name: "KubernetesClient",
            dependencies: [
                "ApusCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // An in-process kube-apiserver look-alike for tests (HTTP and HTTPS).
        .target(
            name: "KubernetesTestServer",
            dependencies: [
                "ApusCore",
                "ApusX509",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The controller-manager's components: caches, leader election, and (as they land) identity,
        // destination, injector and reconcilers.
        .target(
            name: "ApusController",
            dependencies: [
                "ApusCore",
                "ApusInjector",
                "KubernetesClient",
                "ApusDestinationClient",
                "ApusIdentity",
                "ApusIdentityClient",
                "ApusX509",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Proxy-side identity client: key + CSR in memory, Certify over TLS, refresh; deliberately small (no
        // AsyncHTTPClient) because every proxy links it.
        .target(
            name: "ApusIdentityClient",
            dependencies: [
                "ApusIdentity",
                "ApusX509",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Proxy-side destination client and the destination protocol's wire types (shared with the server).
        .target(
            name: "ApusDestinationClient",
            dependencies: [
                "ApusCore",
                "ApusIdentity",
                "ApusIdentityClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // A C shim for local mode's process spawning: fork + own process group + parent-death signal + reset signal
        // dispositions + exec, none of which Foundation's Process or posix_spawn offers together.
        .target(
            name: "CApusSpawn",
            dependencies: []
        ),
        // Counts the heap allocations of opted-in threads (interposes glibc's malloc family in the test
        // executable) for the proxy's allocation-budget test.
        .target(
            name: "CApusMallocCounter",
            dependencies: []
        ),
        // Local mode (`apus-controller --local DIR`): the embedded API server as the cluster, manifests from a
        // folder, a process-running kubelet, the EndpointSlice controller and proxy spawning.
        .target(
            name: "ApusLocal",
            dependencies: [
                "ApusCore",
                "ApusController",
                "ApusIdentity",
                "ApusInjector",
                "CApusSpawn",
                "KubernetesClient",
                "KubernetesTestServer",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Proxy injection as a pure function of the pod and its namespace: the decision, the rendered sidecar and
        // the JSON patch, shared by the admission webhook and `apus inject`. No I/O.
        .target(
            name: "ApusInjector",
            dependencies: ["ApusCore", "ApusX509"]
        ),
        .executableTarget(
            name: "apus-controller",
            dependencies: [
                "ApusCore",
                "ApusController",
                "ApusInjector",
                "ApusLocal",
                "KubernetesClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The data plane: listeners, protocol detection, HTTP/1.1 and HTTP/2 forwarding on the event loop, mesh
        // mTLS, discovery through the destination client, metrics and the admin server.
        .target(
            name: "ApusProxy",
            dependencies: [
                "ApusCore",
                "ApusIdentity",
                "ApusIdentityClient",
                "ApusDestinationClient",
                "ApusX509",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "apus-proxy",
            dependencies: [
                "ApusCore",
                "ApusProxy",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            linkerSettings: proxyReleaseLinkerSettings
        ),
        .executableTarget(
            name: "apus",
            dependencies: [
                "ApusCore",
                "ApusIdentity",
                "ApusInjector",
                "KubernetesClient",
                .product(name: "Yams", package: "Yams"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The demo workloads of examples/demo (books app, hello/world, traffic generator); what local mode runs.
        .executableTarget(
            name: "apus-demo",
            dependencies: [
                "ApusCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What the informer and destination benchmarks share: RSS/CPU readers, the JSON-lines child protocol, the
        // Pod factory, statistics and table formatting.
        .target(
            name: "BenchmarkSupport",
            dependencies: [
                "ApusCore", "KubernetesClient", "KubernetesTestServer",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Benchmarks/BenchmarkSupport"
        ),
        .executableTarget(
            name: "InformerBenchmark",
            dependencies: [
                "ApusCore", "BenchmarkSupport", "KubernetesClient", "KubernetesTestServer",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Benchmarks/InformerBenchmark"
        ),
        .executableTarget(
            name: "DestinationBenchmark",
            dependencies: [
                "ApusCore", "ApusController", "ApusDestinationClient", "BenchmarkSupport", "KubernetesClient",
                "KubernetesTestServer",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Benchmarks/DestinationBenchmark"
        ),
        .executableTarget(
            name: "ProxyBenchmark",
            dependencies: [
                "ApusController", "ApusDestinationClient", "ApusIdentity", "BenchmarkSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Benchmarks/ProxyBenchmark"
        ),
        // Proxy injector webhook latency over HTTPS at a fixed request rate (`make bench-injector`).
        .executableTarget(
            name: "InjectorBenchmark",
            dependencies: [
                "ApusController", "ApusCore", "ApusIdentity", "ApusInjector",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Benchmarks/InjectorBenchmark"
        ),
        .executableTarget(
            name: "IdentityBenchmark",
            dependencies: ["ApusIdentity", "ApusX509"],
            path: "Benchmarks/IdentityBenchmark"
        ),
        .testTarget(name: "ApusCoreTests", dependencies: ["ApusCore", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "ApusX509Tests", dependencies: ["ApusX509"]),
        .testTarget(
            name: "ApusInjectorTests",
            dependencies: ["ApusInjector", "ApusCore", "apus", .product(name: "Yams", package: "Yams")],
            exclude: ["Golden"]
        ),
        .testTarget(
            name: "ApusIdentityTests",
            dependencies: [
                "ApusIdentity", "ApusX509",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .testTarget(
            name: "ApusControllerTests",
            dependencies: [
                "apus", "apus-controller",
                "ApusCore", "ApusController", "ApusInjector", "KubernetesClient", "KubernetesTestServer",
                "ApusDestinationClient", "ApusX509",
                "ApusIdentity", "ApusIdentityClient",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "ApusIdentityClientTests",
            dependencies: [
                "ApusIdentity", "ApusIdentityClient", "ApusX509",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "ApusDestinationClientTests",
            dependencies: [
                "ApusCore", "ApusDestinationClient", "ApusX509",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "KubernetesClientTests",
            dependencies: [
                "ApusCore", "KubernetesClient", "KubernetesTestServer", "ApusX509",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .testTarget(
            name: "ApusProxyTests",
            dependencies: [
                "apus-proxy", "CApusMallocCounter",
                "ApusCore", "ApusProxy", "ApusController", "ApusIdentity", "ApusIdentityClient",
                "ApusDestinationClient", "ApusX509", "KubernetesClient", "KubernetesTestServer",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "ApusLocalTests",
            dependencies: [
                "apus", "apus-controller", "apus-proxy", "apus-demo",
                "ApusCore", "ApusLocal", "ApusController", "ApusIdentity", "KubernetesClient", "KubernetesTestServer",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "ApusDemoTests",
            dependencies: [
                "apus-demo",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Offline checks of crds/, config/, charts/ and examples/; reads them from the checkout via #filePath.
        .testTarget(
            name: "ManifestTests",
            dependencies: ["ApusCore", .product(name: "Yams", package: "Yams")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
