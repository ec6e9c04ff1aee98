import ApusCore
import ApusDestinationClient
import Foundation

/// The routed row's destination: a ServiceProfile of ``routeCount`` regex routes where only the last matches
/// (so every request tries all of them, the worst case of first-match routing) and that route is retryable
/// (so every request pays for the budget deposit and the replay bookkeeping), given to the proxy through
/// `APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS` / `…_STATIC_PROFILES`.
enum RoutedFixture {
    static let authority = "bench.default.svc.cluster.local:80"
    static let routeCount = 20

    static func environment(backendPort: Int) throws -> [String: String] {
        var routes: [ServiceProfile.Route] = (1..<routeCount).map { index in
            ServiceProfile.Route(
                name: "GET /api/v1/resource\(index)/{id}",
                condition: ServiceProfile.RequestMatch(pathRegex: "/api/v1/resource\(index)/[0-9]+", method: "GET"))
        }
        routes.append(
            ServiceProfile.Route(
                name: "everything else", condition: ServiceProfile.RequestMatch(pathRegex: "/.*"), isRetryable: true,
                timeout: "10s"))
        let profile = DestinationProfile(
            fullyQualifiedName: "bench.default.svc.cluster.local", port: 80, source: .serviceProfile, routes: routes)
        let endpoints = [authority: [Endpoint(address: "127.0.0.1", port: backendPort)]]
        let encoder = JSONEncoder()
        return [
            "APUS_PROXY_OUTBOUND_STATIC_ENDPOINTS": String(decoding: try encoder.encode(endpoints), as: UTF8.self),
            "APUS_PROXY_OUTBOUND_STATIC_PROFILES": String(
                decoding: try encoder.encode([authority: profile]), as: UTF8.self),
        ]
    }
}
