import ApusCore
import Foundation
import KubernetesClient

/// Writes `status.conditions[type=Accepted]` of ServiceProfiles: whether the profile is valid and in use.
///
/// | status | reason        | when                                                                    |
/// |--------|---------------|-------------------------------------------------------------------------|
/// | True   | `Accepted`    | the profile compiles; proxies get it                                     |
/// | False  | `InvalidSpec` | validation failed; the message lists every issue with its field path;   |
/// |        |               | proxies keep the last valid version; a Warning Event is recorded         |
///
/// Level-based and idempotent: it reads the profile from the cache, computes the condition, and patches
/// `/status` (merge patch) only when type, status, reason, message or observedGeneration differ, so resyncs and
/// repeated events cost no API writes.
public struct ServiceProfileStatusReconciler: Reconciler {
    public static let conditionType = "Accepted"
    public static let invalidEventReason = "InvalidServiceProfile"

    let client: KubernetesClient
    let profiles: Store<ServiceProfile>
    let events: EventRecorder

    public init(client: KubernetesClient, profiles: Store<ServiceProfile>, events: EventRecorder) {
        self.client = client
        self.profiles = profiles
        self.events = events
    }

    /// The condition a profile should carry.
    public static func condition(for profile: ServiceProfile) -> Condition {
        do {
            _ = try profile.compile()
            return Condition(
                type: conditionType, status: "True", reason: "Accepted",
                message: "the profile is valid and served to proxies",
                observedGeneration: profile.metadata.generation)
        } catch {
            return Condition(
                type: conditionType, status: "False", reason: "InvalidSpec",
                message: "invalid profile, proxies keep the last valid version: \(error.description)",
                observedGeneration: profile.metadata.generation)
        }
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        guard let profile = profiles.get(key), let name = profile.metadata.name else { return .done }
        let desired = Self.condition(for: profile)
        var conditions = profile.status?.conditions ?? []
        if let current = conditions[type: Self.conditionType], StatusConditions.same(current, desired) {
            return .done
        }
        conditions.set(desired)
        let patch = Patch.merge(.object(["status": .object(["conditions": try JSONValue(encoding: conditions)])]))
        do {
            _ = try await client.patchStatus(ServiceProfile.self, name: name, namespace: key.namespace, patch: patch)
        } catch let error as KubernetesError where error == .notFound {
            return .done  // deleted meanwhile
        }
        if desired.status == "False" {
            await events.record(
                object: profile, type: .warning, reason: Self.invalidEventReason, message: desired.message ?? "")
        }
        return .done
    }
}

/// Condition comparison that ignores `lastTransitionTime` (which `set` maintains).
enum StatusConditions {
    static func same(_ a: Condition, _ b: Condition) -> Bool {
        a.type == b.type && a.status == b.status && a.reason == b.reason && a.message == b.message
            && a.observedGeneration == b.observedGeneration
    }

    static func same(_ a: [Condition], _ b: [Condition]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { same($0, $1) }
    }
}
