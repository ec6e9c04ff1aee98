import ApusCore
import Foundation
import Testing

/// The validator and the structural checker are test infrastructure: if they accepted everything, every example
/// test would pass vacuously. These tests pin down that each rule rejects what it should.
@Suite("OpenAPIValidator and StructuralSchema")
struct OpenAPIValidatorTests {
    private func yaml(_ text: String) throws -> JSONValue {
        try #require(try YAMLDocuments.parse(text).first)
    }

    private func violations(_ valueYAML: String, _ schemaYAML: String) throws -> [String] {
        OpenAPIValidator().validate(try yaml(valueYAML), against: try yaml(schemaYAML)).map(\.key)
    }

    @Test("type, required and unknown fields")
    func objects() throws {
        let schema = """
            type: object
            required: [name]
            properties:
              name: {type: string}
              count: {type: integer}
              ratio: {type: number}
              on: {type: boolean}
            """
        #expect(try violations("{name: a, count: 3, ratio: 0.5, 'on': true}", schema).isEmpty)
        #expect(try violations("{name: a, count: 3.0}", schema).isEmpty, "3.0 is an integer in JSON")
        #expect(try violations("{count: 3}", schema) == ["name (required)"])
        #expect(try violations("{name: a, count: 1.5}", schema) == ["count (type)"])
        #expect(try violations("{name: a, count: '3'}", schema) == ["count (type)"])
        #expect(try violations("{name: a, extra: 1}", schema) == ["extra (unknownField)"])
        #expect(try violations("{name: null}", schema) == ["name (type)"])
    }

    @Test("nested paths use dots and list indices")
    func paths() throws {
        let schema = """
            type: object
            properties:
              routes:
                type: array
                items:
                  type: object
                  properties:
                    timeout: {type: string, pattern: '^[0-9]+s$'}
            """
        #expect(try violations("{routes: [{timeout: 1s}, {timeout: soon}]}", schema) == ["routes[1].timeout (pattern)"])
    }

    @Test("string, number, array and object bounds")
    func bounds() throws {
        #expect(try violations("ab", "{type: string, minLength: 3}") == ["<root> (minLength)"])
        #expect(try violations("abcd", "{type: string, maxLength: 3}") == ["<root> (maxLength)"])
        #expect(try violations("99", "{type: integer, minimum: 100}") == ["<root> (minimum)"])
        #expect(try violations("600", "{type: integer, maximum: 599}") == ["<root> (maximum)"])
        #expect(try violations("599", "{type: integer, maximum: 599}").isEmpty)
        #expect(try violations("0", "{type: number, minimum: 0, exclusiveMinimum: true}") == ["<root> (minimum)"])
        #expect(try violations("[]", "{type: array, minItems: 1, items: {type: string}}") == ["<root> (minItems)"])
        #expect(try violations("[a, b]", "{type: array, maxItems: 1, items: {type: string}}") == ["<root> (maxItems)"])
        #expect(try violations("{}", "{type: object, minProperties: 1}") == ["<root> (minProperties)"])
        #expect(try violations("3000000000", "{type: integer, format: int32}") == ["<root> (format)"])
    }

    @Test("enum, date-time and int-or-string")
    func formats() throws {
        #expect(try violations("Maybe", "{type: string, enum: ['True', 'False']}") == ["<root> (enum)"])
        #expect(try violations("2025-01-02T03:04:05Z", "{type: string, format: date-time}").isEmpty)
        #expect(try violations("2025-01-02T03:04:05.123+02:00", "{type: string, format: date-time}").isEmpty)
        #expect(try violations("yesterday", "{type: string, format: date-time}") == ["<root> (format)"])
        let quantity = "{x-kubernetes-int-or-string: true, minimum: 0, pattern: '^[0-9]+m?$'}"
        #expect(try violations("500m", quantity).isEmpty)
        #expect(try violations("3", quantity).isEmpty)
        #expect(try violations("-1", quantity) == ["<root> (minimum)"])
        #expect(try violations("half", quantity) == ["<root> (pattern)"])
        #expect(try violations("true", quantity) == ["<root> (type)"])
        #expect(try violations("0.5", quantity) == ["<root> (type)"])
    }

    @Test("preserve-unknown-fields and additionalProperties accept extra keys; list types reject duplicates")
    func openObjectsAndLists() throws {
        #expect(
            try violations("{a: 1, b: {c: 2}}", "{type: object, x-kubernetes-preserve-unknown-fields: true}")
                .isEmpty)
        #expect(
            try violations("{a: 1, b: x}", "{type: object, additionalProperties: {type: integer}}")
                == ["b (type)"])
        let map = """
            type: array
            x-kubernetes-list-type: map
            x-kubernetes-list-map-keys: [name]
            items: {type: object, required: [name], properties: {name: {type: string}, value: {type: string}}}
            """
        #expect(try violations("[{name: a, value: x}, {name: a, value: y}]", map) == ["[1] (duplicateKey)"])
        let set = "{type: array, x-kubernetes-list-type: set, items: {type: string}}"
        #expect(try violations("[a, b, a]", set) == ["[2] (duplicateItem)"])
    }

    @Test("resources need metadata.name, and metadata is not checked against the CRD schema")
    func resourceMetadata() throws {
        let schema = try yaml("{type: object, properties: {apiVersion: {type: string}, metadata: {type: object}}}")
        let validator = OpenAPIValidator()
        #expect(
            validator.validateResource(
                try yaml("{apiVersion: v1, metadata: {name: a, labels: {x: y}}}"),
                against: schema
            ).isEmpty)
        #expect(
            validator.validateResource(try yaml("{apiVersion: v1, metadata: {labels: {x: y}}}"), against: schema)
                .map(\.key) == ["metadata.name (required)"])
    }

    @Test("YAML parsing keeps timestamps as strings, follows YAML 1.1 booleans and rejects duplicate keys")
    func yamlParsing() throws {
        let value = try yaml("{at: 2025-01-02T03:04:05Z, quoted: 'yes', plain: yes, n: 10, f: 0.5}")
        #expect(value["at"] == .string("2025-01-02T03:04:05Z"))
        #expect(value["quoted"] == .string("yes"))
        #expect(value["plain"] == .bool(true))
        #expect(value["n"] == .number(10))
        #expect(value["f"] == .number(0.5))
        #expect(throws: ManifestError.self) { try YAMLDocuments.parse("a: 1\na: 2\n") }
        #expect(throws: ManifestError.self) { try YAMLDocuments.parse("a: 1\n---\nb: [unclosed\n") }
    }

    @Test("the structural checker rejects what the API server rejects")
    func structuralProblems() throws {
        func problems(_ schema: String) throws -> [String] { StructuralSchema.problems(in: try yaml(schema)) }
        #expect(try problems("{type: object, properties: {a: {type: string}}}").isEmpty)
        #expect(try problems("{type: object, properties: {a: {description: untyped}}}").count == 1)
        #expect(try problems("{type: object, properties: {a: {$ref: '#/x', type: string}}}").count == 1)
        #expect(try problems("{type: object, properties: {a: {type: array}}}").count == 1)
        #expect(try problems("{type: object, properties: {a: {nullable: true}}}").count == 2)
        #expect(
            try problems(
                """
                {type: object, properties: {a: {type: object, properties: {b: {type: string}},
                 additionalProperties: {type: string}}}}
                """
            ).count == 1)
        #expect(try problems("{type: object, properties: {a: {anyOf: [{type: string}], type: string}}}").count == 1)
        #expect(try problems("{type: object, properties: {a: {type: string, default: 3}}}").count == 1)
        #expect(try problems("{type: object, properties: {a: {type: string, enum: [x, 1]}}}").count == 1)
        #expect(try problems("{type: object, properties: {a: {type: string, format: uuid}}}").count == 1)
        #expect(try problems("{type: object, required: [b], properties: {a: {type: string}}}").count == 1)
        #expect(
            try problems(
                """
                {type: object, properties: {metadata: {type: object, properties: {labels: {type: object}}}}}
                """
            ).count == 1)
        #expect(
            try problems(
                """
                {type: object, properties: {l: {type: array, x-kubernetes-list-type: map,
                 x-kubernetes-list-map-keys: [k], items: {type: object, properties: {k: {type: string}}}}}}
                """
            ).count == 1)
        #expect(try problems("{type: object, properties: {a: {type: integer, pattern: x}}}").count == 1)
    }

    @Test("printer column JSONPaths resolve through lists and filters")
    func printerColumnPaths() throws {
        let schema = try yaml(
            """
            type: object
            properties:
              status:
                type: object
                properties:
                  conditions:
                    type: array
                    items: {type: object, properties: {status: {type: string}}}
            """)
        #expect(CRDTests.schemaNode(schema, jsonPath: #".status.conditions[?(@.type=="Ready")].status"#) != nil)
        #expect(CRDTests.schemaNode(schema, jsonPath: ".metadata.creationTimestamp") != nil)
        #expect(CRDTests.schemaNode(schema, jsonPath: ".status.phase") == nil)
    }
}
