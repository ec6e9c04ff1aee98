import Foundation
import Testing

/// `apus-controller --local` as a user runs it: a real process, Ctrl-C (SIGINT) stops every child.
@Suite struct LocalProcessTests {
    static func product(_ name: String) -> URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
    }

    /// A port that was free a moment ago.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                guard bind(fd, raw, length) == 0, getsockname(fd, raw, &length) == 0 else {
                    throw CocoaError(.fileWriteUnknown)
                }
            }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Pids of every process whose ancestry (by PPID) leads to `root`, or whose process group was led by one of them.
    static func descendants(of root: Int32, groups: Set<Int32> = []) -> [Int32: String] {
        var parents: [Int32: Int32] = [:]
        var processGroups: [Int32: Int32] = [:]
        var commands: [Int32: String] = [:]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            // Fields after "(comm)": state ppid pgrp …
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, let ppid = Int32(fields[1]), let pgrp = Int32(fields[2]) else { continue }
            parents[pid] = ppid
            processGroups[pid] = pgrp
            commands[pid] = String(stat[..<close])
        }
        var result: [Int32: String] = [:]
        for pid in parents.keys {
            var current = pid
            var steps = 0
            while let parent = parents[current], parent > 1, steps < 64 {
                if parent == root { result[pid] = commands[pid] ?? "" }
                current = parent
                steps += 1
            }
            if let group = processGroups[pid], groups.contains(group) { result[pid] = commands[pid] ?? "" }
        }
        return result
    }

    @Test("Ctrl-C (SIGINT) to apus-controller --local leaves no child process behind")
    func sigintLeavesNoProcessBehind() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("apus-local-\(UUID().uuidString)")
        let manifests = folder.appendingPathComponent("manifests")
        try FileManager.default.createDirectory(at: manifests, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        // A shell that forks a background child without exec: the process group must take the child down too.
        try """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: busy}
        spec:
          replicas: 2
          template:
            metadata: {labels: {app: busy}}
            spec:
              containers:
              - name: main
                command: ["/bin/sh", "-c", "sleep 600 & python3 -m http.server --bind $POD_IP 8080"]
        """.write(to: manifests.appendingPathComponent("busy.yaml"), atomically: true, encoding: .utf8)

        var ports: [Int] = []
        while ports.count < 3 {
            let port = try Self.freePort()
            if !ports.contains(port) { ports.append(port) }
        }
        let controller = Process()
        controller.executableURL = Self.product("apus-controller")
        controller.arguments = [
            "--local", manifests.path, "--state-dir", folder.appendingPathComponent("state").path,
            "--identity-port", String(ports[0]), "--destination-port", String(ports[1]), "--admin-port",
            String(ports[2]), "--log-level", "warning",
        ]
        let output = Pipe()
        controller.standardOutput = output
        controller.standardError = output
        try controller.run()
        let root = controller.processIdentifier
        defer { if controller.isRunning { controller.terminate() } }

        // Two pods × (shell + sleep + python) = 6 descendants once everything runs.
        var children: [Int32: String] = [:]
        try await eventually(timeout: .seconds(30)) {
            children = Self.descendants(of: root)
            return children.values.filter { $0.contains("sleep") }.count == 2
                && children.values.filter { $0.contains("python") }.count == 2
        }
        let groups = Set(children.keys)
        #expect(FileManager.default.fileExists(atPath: folder.appendingPathComponent("state/kubeconfig").path))

        kill(root, SIGINT)
        try await eventually(timeout: .seconds(20)) { !controller.isRunning }
        let log = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        #expect(controller.terminationStatus == 0, "\(log)")
        // Neither a descendant nor a member of the children's process groups is left (reparented ones included).
        try await eventually(timeout: .seconds(5)) {
            Self.descendants(of: root, groups: groups).isEmpty && groups.allSatisfy { kill($0, 0) != 0 }
        }
    }
}
