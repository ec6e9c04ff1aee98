import ApusCore
import Foundation
import KubernetesClient
import KubernetesTestServer
import Testing

extension IntegrationTests {
    @Suite("Leader election and events")
    struct Coordination {
        static func configuration(_ identity: String) -> LeaderElectionConfiguration {
            LeaderElectionConfiguration(
                leaseName: "apus-it", namespace: "election", identity: identity, leaseDuration: .seconds(1),
                renewDeadline: .milliseconds(700), retryPeriod: .milliseconds(200))
        }

        /// Runs candidates and records what a reviewer of an election needs: who worked when, and whether two
        /// candidates ever claimed leadership at the same time.
        final class Election: Sendable {
            let client: KubernetesClient
            let electors = Shared<[String: LeaderElector]>([:])
            let tasks = Shared<[String: Task<Void, Never>]>([:])
            let workStarted = EventLog<String>()
            let workStopped = EventLog<String>()
            /// Candidates whose work closure is running right now.
            let working = Shared<Set<String>>([])
            let overlappingWork = Shared(0)
            let overlappingLeaders = Shared(0)
            let samples = Shared(0)
            private let sampler = Shared<Task<Void, Never>?>(nil)

            init(client: KubernetesClient) { self.client = client }

            func startSampling() {
                let electors = self.electors
                let overlapping = self.overlappingLeaders
                let samples = self.samples
                sampler.set(
                    Task {
                        while !Task.isCancelled {
                            let leaders = electors.value.values.filter(\.isLeader).count
                            if leaders > 1 { overlapping.update { $0 += 1 } }
                            samples.update { $0 += 1 }
                            try? await Task.sleep(for: .milliseconds(2))
                        }
                    })
            }

            func start(_ identity: String) {
                let elector = LeaderElector(client: client, configuration: Coordination.configuration(identity))
                electors.update { $0[identity] = elector }
                let started = workStarted
                let stopped = workStopped
                let working = self.working
                let overlapping = overlappingWork
                let task = Task {
                    await elector.run(whileLeading: {
                        started.append(identity)
                        working.update { running in
                            running.insert(identity)
                            if running.count > 1 { overlapping.update { $0 += 1 } }
                        }
                        // Leads until leadership is lost: the elector cancels this task.
                        while !Task.isCancelled { try? await Task.sleep(for: .seconds(60)) }
                        working.update { _ = $0.remove(identity) }
                        stopped.append(identity)
                    })
                }
                tasks.update { $0[identity] = task }
            }

            func stop(_ identity: String) async {
                guard let task = tasks.value[identity] else { return }
                task.cancel()
                await task.value
            }

            func stopAll() async {
                for identity in tasks.value.keys { await stop(identity) }
                if let sampler = sampler.value {
                    sampler.cancel()
                    await sampler.value
                }
            }

            func elector(_ identity: String) -> LeaderElector? { electors.value[identity] }

            /// Identities of running candidates that currently lead.
            var leaders: [String] {
                let running = Set(tasks.value.filter { !$0.value.isCancelled }.keys)
                return electors.value.filter { running.contains($0.key) && $0.value.isLeader }.keys.sorted()
            }
        }

        @Test func oneLeaderAtATimeReleaseOnCancelAndStepDownWhenRenewalsFail() async throws {
            try await IntegrationHarness.run(namespace: "election") { harness in
                let server = harness.server
                let election = Election(client: harness.client)
                let holders = EventLog<String>()
                let leaseWatch = Task {
                    let watcher = Watcher(
                        client: harness.client, Lease.self, namespace: "election",
                        configuration: WatcherConfiguration(backoff: fastBackoff, onError: { _ in }))
                    do {
                        for try await event in watcher {
                            if case .apply(let lease) = event { holders.append(lease.spec?.holderIdentity ?? "") }
                        }
                    } catch {}
                }
                election.startSampling()
                do {
                    try await Self.runElection(election, server: server, holders: holders)
                } catch {
                    await election.stopAll()
                    leaseWatch.cancel()
                    await leaseWatch.value
                    throw error
                }
                await election.stopAll()
                leaseWatch.cancel()
                await leaseWatch.value
                #expect(election.overlappingLeaders.value == 0, "two candidates claimed leadership at once")
                #expect(election.overlappingWork.value == 0, "two work closures ran at once")
                #expect(election.samples.value > 100, "isLeader was sampled throughout")
            }
        }

        private static func runElection(
            _ election: Election, server: KubernetesTestServer, holders: EventLog<String>
        ) async throws {
            election.start("alpha")
            election.start("beta")
            try await eventually("one candidate leads") { election.leaders.count == 1 }
            let first = try #require(election.leaders.first)
            let second = first == "alpha" ? "beta" : "alpha"
            try await eventually("the other candidate sees the leader") {
                election.elector(second)?.currentLeader == first
            }
            // Several renewals later the same candidate still leads alone.
            let renewalsBefore = holders.count
            try await eventually("the lease is renewed a few times") { holders.count >= renewalsBefore + 3 }
            #expect(election.leaders == [first])
            #expect(Set(holders.all) == [first], "only the leader wrote the lease")

            // Cancelling the leader releases the lease; the other takes the released lease without waiting out
            // the lease duration.
            let cancelled = ContinuousClock.now
            await election.stop(first)
            #expect(election.workStopped.all == [first], "the old leader's work was cancelled")
            try await eventually("the other candidate takes over") { election.leaders == [second] }
            print("[leader-election] takeover \(ContinuousClock.now - cancelled) after the leader was cancelled")
            try await eventually("the lease watch saw the takeover") { holders.all.last == second }
            let history = holders.all
            let lastOfFirst = try #require(history.lastIndex(of: first))
            #expect(
                Array(history[(lastOfFirst + 1)...].prefix(2)) == ["", second],
                "released (holder cleared), then acquired: \(history)")
            // Taking over an expired lease counts a transition; taking a released one does not.
            let lease = try await election.client.get(Lease.self, name: "apus-it", namespace: "election")
            #expect(lease.spec?.holderIdentity == second)
            #expect(lease.spec?.leaseTransitions == 0, "the lease was taken after its release, not after expiry")

            // A third candidate joins; then every request fails until the leader's renew deadline has passed.
            election.start("gamma")
            try await eventually("the new candidate sees the leader") {
                election.elector("gamma")?.currentLeader == second
            }
            server.failNextRequests(count: 1_000_000, status: 500)
            try await eventually("the leader stops leading when it cannot renew") {
                election.leaders.isEmpty && election.workStopped.all == [first, second]
            }
            server.failNextRequests(count: 0)
            try await eventually("leadership is re-established") { election.leaders.count == 1 }
            try await eventually("the new leader works") { election.workStarted.count == 3 }
        }

        @Test func eventRecorderCountsRepeatsAndKeepsDifferentMessagesApart() async throws {
            try await IntegrationHarness.run(namespace: "events") { harness in
                let client = harness.client
                _ = try await client.create(Namespace(metadata: ObjectMeta(name: "default")))
                let pod = try await client.create(
                    Pod(metadata: ObjectMeta(name: "web-0"), spec: PodSpec(containers: [Container(name: "app")])))
                let recorder = EventRecorder(client: client, component: "apus-it", host: "node-1")
                harness.server.clearRequestLog()

                await recorder.record(object: pod, type: .warning, reason: "InjectionFailed", message: "no proxy image")
                await recorder.record(object: pod, type: .warning, reason: "InjectionFailed", message: "no proxy image")
                await recorder.record(object: pod, type: .warning, reason: "InjectionFailed", message: "bad annotation")
                await recorder.record(object: pod, type: .normal, reason: "Injected", message: "proxy added")

                let eventRequests = harness.server.requestLog.filter { $0.resource == "events" }.compactMap(\.verb)
                let events = try await client.list(Event.self, namespace: "events").items
                #expect(events.count == 3)
                #expect(
                    eventRequests == [
                        "create", "patch", "create", "create",
                    ], "a repeat is a patch of the existing Event")
                let repeated = try #require(events.first { $0.message == "no proxy image" })
                #expect(repeated.count == 2)
                #expect(repeated.type == "Warning")
                #expect(repeated.reason == "InjectionFailed")
                #expect(repeated.metadata.namespace == "events", "events live in their object's namespace")
                #expect(repeated.source?.component == "apus-it")
                #expect(repeated.source?.host == "node-1")
                let first = try #require(repeated.firstTimestamp)
                let last = try #require(repeated.lastTimestamp)
                #expect(last >= first)
                for event in events {
                    #expect(event.involvedObject.kind == "Pod")
                    #expect(event.involvedObject.apiVersion == "v1")
                    #expect(event.involvedObject.name == "web-0")
                    #expect(event.involvedObject.namespace == "events")
                    #expect(event.involvedObject.uid == pod.metadata.uid)
                    #expect(event.metadata.name?.hasPrefix("web-0.") == true)
                }
                #expect(events.first { $0.message == "bad annotation" }?.count == 1)
                #expect(events.first { $0.reason == "Injected" }?.type == "Normal")

                let namespace = try await client.get(Namespace.self, name: "events")
                await recorder.record(object: namespace, type: .normal, reason: "Meshed", message: "namespace meshed")
                let clusterEvents = try await client.list(Event.self, namespace: "default").items
                #expect(clusterEvents.count == 1, "events about cluster-scoped objects go to default")
                #expect(clusterEvents.first?.involvedObject.kind == "Namespace")
                #expect(clusterEvents.first?.involvedObject.name == "events")
            }
        }
    }
}
