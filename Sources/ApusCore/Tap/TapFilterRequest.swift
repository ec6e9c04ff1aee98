/// The body of a tap request (`POST /apus.tap.v1/Observe` on a proxy's control port, `docs/tap.md`): which
/// requests to stream. Absent fields match everything. The proxy decodes and checks it (`TapFilter.parse`); `apus
/// tap` builds it from its flags, so both sides share this one wire shape.
public struct TapFilterRequest: Codable, Sendable, Hashable {
    /// A workload as `kubectl` names it, `kind/name` (`deploy/web`, `pod/web-0`), in `namespace` when given.
    public struct Resource: Codable, Sendable, Hashable {
        public var namespace: String?
        public var resource: String?

        public init(namespace: String? = nil, resource: String? = nil) {
            self.namespace = namespace
            self.resource = resource
        }
    }

    public var pathPrefix: String?
    public var pathRegex: String?
    public var method: String?
    public var authority: String?
    public var to: Resource?
    public var from: Resource?
    /// Events the proxy may hold for this subscriber before it drops (and counts) the rest.
    public var bufferSize: Int?

    public init(
        pathPrefix: String? = nil, pathRegex: String? = nil, method: String? = nil, authority: String? = nil,
        to: Resource? = nil, from: Resource? = nil, bufferSize: Int? = nil
    ) {
        self.pathPrefix = pathPrefix
        self.pathRegex = pathRegex
        self.method = method
        self.authority = authority
        self.to = to
        self.from = from
        self.bufferSize = bufferSize
    }
}
