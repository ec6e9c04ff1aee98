import ApusCore
import Foundation
import NIOHTTP1

/// Server-side printing (`meta.k8s.io/v1` `Table`), which `kubectl get` asks for in its `Accept` header: without it
/// kubectl can only show names and ages. Pods get kubectl's usual columns (READY, STATUS, RESTARTS, AGE, and IP
/// and NODE with `-o wide`); other kinds NAME and AGE.
enum TableOutput {
    /// Whether the client accepts a Table (`application/json;as=Table;v=v1;g=meta.k8s.io`).
    static func wanted(_ headers: HTTPHeaders) -> Bool {
        headers["accept"].contains { accept in
            accept.split(separator: ",").contains { $0.contains("as=Table") && $0.contains("g=meta.k8s.io") }
        }
    }

    /// The Table form of a successful get or list response; other outcomes unchanged.
    static func convert(_ outcome: APIOutcome, resource: ResourceInfo, now: Date = Date()) -> APIOutcome {
        guard case .response(let status, var headers, let body) = outcome, status == .ok,
            let value = try? JSONValue(json: Data(body))
        else { return outcome }
        let items = value["items"]?.arrayValue ?? [value]
        let isPod = resource.type.group.isEmpty && resource.type.plural == "pods"
        var columns: [JSONValue] = [column("Name", "string", format: "name")]
        if isPod {
            columns += [
                column("Ready", "string"), column("Status", "string"), column("Restarts", "string"),
                column("Age", "string"), column("IP", "string", priority: 1), column("Node", "string", priority: 1),
            ]
        } else {
            columns.append(column("Age", "string"))
        }
        let rows: [JSONValue] = items.map { item in
            let name = item["metadata"]?["name"]?.stringValue ?? ""
            let age = Self.age(item["metadata"]?["creationTimestamp"]?.stringValue, now: now)
            let cells: [JSONValue] = isPod ? podCells(item, name: name, age: age) : [.string(name), .string(age)]
            // kubectl reads namespaces (`-A`) from the row's object, as the metadata-only form it asks for.
            let object: JSONValue = .object([
                "kind": .string("PartialObjectMetadata"), "apiVersion": .string("meta.k8s.io/v1"),
                "metadata": item["metadata"] ?? .object([:]),
            ])
            return .object(["cells": .array(cells), "object": object])
        }
        var metadata: [String: JSONValue] = [:]
        if let version = value["metadata"]?["resourceVersion"] { metadata["resourceVersion"] = version }
        let table: JSONValue = .object([
            "kind": .string("Table"), "apiVersion": .string("meta.k8s.io/v1"), "metadata": .object(metadata),
            "columnDefinitions": .array(columns), "rows": .array(rows),
        ])
        guard let data = try? table.jsonData() else { return outcome }
        headers.replaceOrAdd(name: "content-type", value: "application/json")
        return .response(status: .ok, headers: headers, body: Array(data))
    }

    private static func column(_ name: String, _ type: String, format: String = "", priority: Int = 0) -> JSONValue {
        .object([
            "name": .string(name), "type": .string(type), "format": .string(format), "description": .string(""),
            "priority": .number(Double(priority)),
        ])
    }

    /// READY counts app containers and sidecars (local mode reports its proxy as an init container, like a
    /// native sidecar); STATUS is a waiting container's reason (CrashLoopBackOff) over the phase.
    private static func podCells(_ pod: JSONValue, name: String, age: String) -> [JSONValue] {
        let status = pod["status"]
        let containers =
            (status?["initContainerStatuses"]?.arrayValue ?? []) + (status?["containerStatuses"]?.arrayValue ?? [])
        let total = max(containers.count, pod["spec"]?["containers"]?.arrayValue?.count ?? 0)
        let ready = containers.filter { $0["ready"] == .bool(true) }.count
        let restarts = containers.reduce(0) { sum, container in
            if case .number(let count) = container["restartCount"] { return sum + Int(count) }
            return sum
        }
        var phase = status?["phase"]?.stringValue ?? "Pending"
        if let reason = containers.lazy.compactMap({ $0["state"]?["waiting"]?["reason"]?.stringValue }).first {
            phase = reason
        }
        if pod["metadata"]?["deletionTimestamp"]?.stringValue != nil { phase = "Terminating" }
        return [
            .string(name), .string("\(ready)/\(total)"), .string(phase), .string(String(restarts)), .string(age),
            .string(status?["podIP"]?.stringValue ?? "<none>"),
            .string(pod["spec"]?["nodeName"]?.stringValue ?? "<none>"),
        ]
    }

    /// kubectl's short ages: `45s`, `3m12s`, `25m`, `5h30m`, `3d`.
    static func age(_ timestamp: String?, now: Date) -> String {
        guard let timestamp, let created = ISO8601DateFormatter().date(from: timestamp) else { return "<unknown>" }
        let seconds = max(0, Int(now.timeIntervalSince(created)))
        switch seconds {
        case ..<120: return "\(seconds)s"
        case ..<600: return "\(seconds / 60)m\(seconds % 60)s"
        case ..<(3 * 3600): return "\(seconds / 60)m"
        case ..<(8 * 3600): return "\(seconds / 3600)h\((seconds / 60) % 60)m"
        case ..<(48 * 3600): return "\(seconds / 3600)h"
        default: return "\(seconds / 86400)d"
        }
    }
}
