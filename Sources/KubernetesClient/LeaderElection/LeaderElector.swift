import ApusCore
import Foundation
import Logging
import NIOConcurrencyHelpers

/// Settings of a ``LeaderElector``; defaults match client-go (15 s lease, 10 s renew deadline, 2 s retry).
public struct LeaderElectionConfiguration: Sendable, Hashable {
    public var leaseName: String
    public var namespace: String
    /// Unique per candidate, usually the pod name.
    public var identity: String
    /// How long others wait after the last observed renewal before taking over.
    public var leaseDuration: Duration
    /// How long the leader keeps trying to renew before it gives up leadership. Must be < leaseDuration so
    /// the old leader stops before a new one can start.
    public var renewDeadline: Duration
    /// Interval between acquire and renew attempts.
    public var retryPeriod: Duration
    /// Clear the lease holder when the elector is cancelled so another candidate takes over at once.
    public var releaseOnCancel: Bool

    public init(
        leaseName: String, namespace: String, identity: String, leaseDuration: Duration = .seconds(15),
        renewDeadline: Duration = .seconds(10), retryPeriod: Duration = .seconds(2), releaseOnCancel: Bool = true
    ) {
        self.leaseName = leaseName
        self.namespace = namespace
        self.identity = identity
        self.leaseDuration = leaseDuration
        self.renewDeadline = renewDeadline
        self.retryPeriod = retryPeriod
        self.releaseOnCancel = releaseOnCancel
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease, following client-go's `leaderelection` package.
///
/// A candidate creates the Lease, or takes it over once the holder has not renewed it for `leaseDuration`
/// (measured on the local clock from when this candidate last saw the record change, so clock skew between
/// nodes does not matter). The leader renews every `retryPeriod`; if it cannot renew within `renewDeadline`
/// it stops leading (the work closure is cancelled) and becomes a candidate again. All writes carry the
/// observed resourceVersion, so two candidates racing for the same Lease cannot both win: the loser gets a
/// conflict and retries on the next period.
///
/// ```swift
/// let elector = LeaderElector(client: client, configuration: .init(
///     leaseName: "apus-controller", namespace: "apus", identity: podName))
/// await elector.run { await controller.run() }   // returns when the task is cancelled
/// ```
public final class LeaderElector: Sendable {
    public let configuration: LeaderElectionConfiguration
    private let client: KubernetesClient
    private let logger: Logger
    private let state = NIOLockedValueBox(PublicState())

    private struct PublicState {
        var isLeader = false
        var leader: String?
    }

    /// The record as last seen and when, for expiry decisions.
    private struct Observation {
        var spec: Lease.Spec?
        var resourceVersion: String?
        var observedAt: ContinuousClock.Instant = .now
    }

    private enum Attempt {
        case acquired
        case heldByOther(String)
        case failed(any Error)
    }

    public init(
        client: KubernetesClient, configuration: LeaderElectionConfiguration,
        logger: Logger = Logger(label: "apus.leader-election")
    ) {
        self.client = client
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "lease"] = "\(configuration.namespace)/\(configuration.leaseName)"
        logger[metadataKey: "identity"] = "\(configuration.identity)"
        self.logger = logger
    }

    /// Whether this candidate currently holds the lease.
    public var isLeader: Bool { state.withLockedValue { $0.isLeader } }

    /// The holder last observed (possibly this candidate), or `nil` when none was seen yet.
    public var currentLeader: String? { state.withLockedValue { $0.leader } }

    /// Campaigns until the calling task is cancelled. While this candidate leads, `whileLeading` runs in a
    /// child task; it is cancelled when leadership is lost, after which `onStoppedLeading` is called and the
    /// candidate campaigns again. On cancellation the lease is released (if held and `releaseOnCancel`).
    public func run(
        whileLeading: @escaping @Sendable () async -> Void,
        onStoppedLeading: (@Sendable () async -> Void)? = nil,
        onNewLeader: (@Sendable (String) async -> Void)? = nil
    ) async {
        var observation = Observation()
        var lastReportedLeader: String?
        func report(_ holder: String?) async {
            guard let holder, !holder.isEmpty, holder != lastReportedLeader else { return }
            lastReportedLeader = holder
            state.withLockedValue { $0.leader = holder }
            await onNewLeader?(holder)
        }

        while !Task.isCancelled {
            // Campaign.
            var acquired = false
            while !Task.isCancelled {
                switch await tryAcquireOrRenew(&observation) {
                case .acquired:
                    acquired = true
                case .heldByOther(let holder):
                    await report(holder)
                case .failed(let error):
                    logger.debug("could not acquire the lease", metadata: ["error": "\(error)"])
                }
                if acquired { break }
                guard await sleep(jittered(configuration.retryPeriod)) else { break }
            }
            guard acquired else { break }
            logger.info("became leader")
            state.withLockedValue { $0.isLeader = true }
            await report(configuration.identity)

            // Lead while renewing.
            await withDiscardingTaskGroup { group in
                group.addTask { await whileLeading() }
                await renewUntilLost(&observation)
                group.cancelAll()
            }
            state.withLockedValue { $0.isLeader = false }
            if Task.isCancelled {
                if configuration.releaseOnCancel {
                    // The calling task is cancelled; release from a fresh task so the request is not aborted.
                    await Task { await self.release() }.value
                }
                logger.info("stopped leading (cancelled)")
                await onStoppedLeading?()
                break
            }
            logger.warning("lost leadership")
            await onStoppedLeading?()
        }
    }

    /// Renews every retryPeriod; returns when renewal failed for longer than renewDeadline, another holder
    /// took over, or the task was cancelled.
    private func renewUntilLost(_ observation: inout Observation) async {
        var lastRenewal = ContinuousClock.now
        while await sleep(configuration.retryPeriod) {
            switch await tryAcquireOrRenew(&observation) {
            case .acquired:
                lastRenewal = .now
            case .heldByOther(let holder):
                logger.warning("lease taken over", metadata: ["holder": "\(holder)"])
                return
            case .failed(let error):
                if lastRenewal.duration(to: .now) >= configuration.renewDeadline {
                    logger.error("could not renew the lease within the deadline", metadata: ["error": "\(error)"])
                    return
                }
                logger.debug("lease renewal failed; retrying", metadata: ["error": "\(error)"])
            }
        }
    }

    private func tryAcquireOrRenew(_ observation: inout Observation) async -> Attempt {
        let now = Timestamp(Date(), precision: .micro)
        let identity = configuration.identity
        let leaseSeconds = max(1, Int(configuration.leaseDuration.components.seconds))
        let existing: Lease
        do {
            existing = try await client.get(
                Lease.self, name: configuration.leaseName, namespace: configuration.namespace)
        } catch let error as KubernetesError where error == .notFound {
            let lease = Lease(
                metadata: ObjectMeta(name: configuration.leaseName, namespace: configuration.namespace),
                spec: Lease.Spec(
                    holderIdentity: identity, leaseDurationSeconds: leaseSeconds, acquireTime: now, renewTime: now,
                    leaseTransitions: 0))
            do {
                let created = try await client.create(lease, namespace: configuration.namespace)
                observation = Observation(spec: created.spec, resourceVersion: created.metadata.resourceVersion)
                return .acquired
            } catch {
                return .failed(error)
            }
        } catch {
            return .failed(error)
        }

        if existing.spec != observation.spec || existing.metadata.resourceVersion != observation.resourceVersion {
            observation = Observation(spec: existing.spec, resourceVersion: existing.metadata.resourceVersion)
        }
        let spec = existing.spec ?? Lease.Spec()
        let holder = spec.holderIdentity ?? ""
        let heldDuration = spec.leaseDurationSeconds.map { Duration.seconds($0) } ?? configuration.leaseDuration
        let expired = observation.observedAt.duration(to: .now) > heldDuration
        if !holder.isEmpty, holder != identity, !expired {
            return .heldByOther(holder)
        }

        var updated = existing
        var newSpec = spec
        if holder == identity {
            newSpec.renewTime = now
        } else {
            newSpec.holderIdentity = identity
            newSpec.acquireTime = now
            newSpec.renewTime = now
            newSpec.leaseTransitions = (spec.leaseTransitions ?? 0) + (holder.isEmpty ? 0 : 1)
        }
        newSpec.leaseDurationSeconds = leaseSeconds
        updated.spec = newSpec
        do {
            // Carries existing.metadata.resourceVersion: a concurrent writer makes this a 409 conflict.
            let written = try await client.update(updated)
            observation = Observation(spec: written.spec, resourceVersion: written.metadata.resourceVersion)
            return .acquired
        } catch {
            return .failed(error)
        }
    }

    /// Gives the lease up so the next candidate need not wait for it to expire.
    private func release() async {
        do {
            var lease = try await client.get(
                Lease.self, name: configuration.leaseName, namespace: configuration.namespace)
            guard lease.spec?.holderIdentity == configuration.identity else { return }
            let now = Timestamp(Date(), precision: .micro)
            lease.spec?.holderIdentity = nil
            lease.spec?.leaseDurationSeconds = 1
            lease.spec?.renewTime = now
            lease.spec?.acquireTime = now
            _ = try await client.update(lease)
            logger.info("released the lease")
        } catch {
            logger.warning("could not release the lease", metadata: ["error": "\(error)"])
        }
    }

    private func jittered(_ duration: Duration) -> Duration {
        duration * Double.random(in: 1.0...1.2)
    }

    private func sleep(_ duration: Duration) async -> Bool {
        do {
            try await Task.sleep(for: duration)
            return true
        } catch {
            return false
        }
    }
}
