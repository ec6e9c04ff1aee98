import ApusCore
import Foundation
import Logging
import NIOConcurrencyHelpers

/// `Normal` or `Warning`, as `kubectl describe` shows them.
public enum EventType: String, Sendable, Hashable {
    case normal = "Normal"
    case warning = "Warning"
}

/// Records core/v1 Events about objects, de-duplicated the way client-go's recorder does.
///
/// The same object + type + reason + message within ``dedupWindow`` bumps `count` and `lastTimestamp` of the
/// existing Event with a merge patch instead of creating another, so a reconcile loop that fails every few
/// seconds produces one Event with a growing count. Names follow client-go: `<object name>.<hex nanoseconds>`.
/// Recording never throws into the caller: failures are logged, because an Event is diagnostics, not state.
///
/// ```swift
/// let recorder = EventRecorder(client: client, component: "apus-controller")
/// await recorder.record(object: pod, type: .warning, reason: "InjectionFailed", message: "no proxy image")
/// ```
public final class EventRecorder: Sendable {
    private struct CacheKey: Hashable {
        var kind: String
        var namespace: String?
        var name: String
        var uid: String?
        var type: EventType
        var reason: String
        var message: String
    }

    private struct CacheEntry {
        var eventName: String
        var eventNamespace: String
        var count: Int
        var lastSeen: ContinuousClock.Instant
    }

    public let component: String
    public let host: String?
    /// How long a recorded Event is reused for repeats.
    public let dedupWindow: Duration
    /// Upper bound on remembered Events; the oldest are forgotten first.
    public let cacheLimit: Int
    private let client: KubernetesClient
    private let logger: Logger
    private let cache = NIOLockedValueBox<[CacheKey: CacheEntry]>([:])

    public init(
        client: KubernetesClient, component: String, host: String? = nil, dedupWindow: Duration = .seconds(600),
        cacheLimit: Int = 4096, logger: Logger = Logger(label: "apus.events")
    ) {
        self.client = client
        self.component = component
        self.host = host
        self.dedupWindow = dedupWindow
        self.cacheLimit = max(1, cacheLimit)
        self.logger = logger
    }

    /// Records (or counts) an Event about `object`. Never throws; failures are logged.
    public func record<R: KubernetesResource>(object: R, type: EventType, reason: String, message: String) async {
        await record(involving: ObjectReference(to: object), type: type, reason: reason, message: message)
    }

    /// Records an Event about an object given by reference.
    public func record(involving reference: ObjectReference, type: EventType, reason: String, message: String) async {
        // Events live in the namespace of their object; cluster-scoped objects' Events go to `default`.
        let eventNamespace = reference.namespace.flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        let key = CacheKey(
            kind: reference.kind ?? "", namespace: reference.namespace, name: reference.name ?? "",
            uid: reference.uid, type: type, reason: reason, message: message)
        let now = ContinuousClock.now
        let timestamp = Timestamp(Date())

        let previous = cache.withLockedValue { cache -> CacheEntry? in
            guard var entry = cache[key], entry.lastSeen.duration(to: now) < dedupWindow else { return nil }
            entry.count += 1
            entry.lastSeen = now
            cache[key] = entry
            return entry
        }
        if let previous {
            let patch = Patch.merge(
                .object([
                    "count": .number(Double(previous.count)),
                    "lastTimestamp": .string(timestamp.description),
                ]))
            do {
                _ = try await client.patch(
                    Event.self, name: previous.eventName, namespace: previous.eventNamespace, patch: patch)
                return
            } catch let error as KubernetesError where error == .notFound {
                // Someone deleted it (or TTL expired it): fall through and create a new one.
            } catch {
                logger.warning(
                    "could not update event", metadata: ["event": "\(previous.eventName)", "error": "\(error)"])
                return
            }
        }

        let objectName = reference.name.flatMap { $0.isEmpty ? nil : $0 } ?? "unknown"
        let nanos = UInt64(max(0, Date().timeIntervalSince1970 * 1e9))
        let eventName = "\(objectName).\(String(nanos, radix: 16))"
        var event = Event(
            metadata: ObjectMeta(name: eventName, namespace: eventNamespace), involvedObject: reference,
            reason: reason, message: String(message.prefix(1024)), type: type.rawValue)
        event.count = 1
        event.firstTimestamp = timestamp
        event.lastTimestamp = timestamp
        event.source = Event.Source(component: component, host: host)
        event.reportingComponent = component
        event.reportingInstance = host
        do {
            _ = try await client.create(event, namespace: eventNamespace)
            cache.withLockedValue { cache in
                cache[key] = CacheEntry(eventName: eventName, eventNamespace: eventNamespace, count: 1, lastSeen: now)
                if cache.count > cacheLimit {
                    let overflow = cache.count - cacheLimit
                    for oldKey in cache.sorted(by: { $0.value.lastSeen < $1.value.lastSeen }).prefix(overflow)
                        .map(\.key)
                    {
                        cache[oldKey] = nil
                    }
                }
            }
        } catch {
            logger.warning(
                "could not record event",
                metadata: [
                    "object": "\(reference.kind ?? "")/\(objectName)", "reason": "\(reason)", "error": "\(error)",
                ])
        }
    }
}
