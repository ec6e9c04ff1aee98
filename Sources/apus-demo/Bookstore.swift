import Foundation
import NIOConcurrencyHelpers
import NIOCore

struct Author: Codable, Sendable, Equatable {
    var id: Int
    var name: String
    var born: Int
}

struct Book: Codable, Sendable, Equatable {
    var id: Int
    var title: String
    var authorId: Int
    var year: Int
}

/// `GET /books/{id}` of the books service: the book with its author, as the authors service answered.
struct BookDetail: Codable, Sendable {
    var book: Book
    var author: Author
}

/// `POST /books` body.
private struct NewBook: Decodable {
    var title: String
    var authorId: Int
    var year: Int?
}

/// The in-memory catalogue both services start from (public-domain books, so the demo has readable output).
enum Catalogue {
    static let authors = [
        Author(id: 1, name: "Jane Austen", born: 1775),
        Author(id: 2, name: "Herman Melville", born: 1819),
        Author(id: 3, name: "Mary Shelley", born: 1797),
        Author(id: 4, name: "Fyodor Dostoevsky", born: 1821),
    ]

    static let books = [
        Book(id: 1, title: "Pride and Prejudice", authorId: 1, year: 1813),
        Book(id: 2, title: "Emma", authorId: 1, year: 1815),
        Book(id: 3, title: "Moby-Dick", authorId: 2, year: 1851),
        Book(id: 4, title: "Frankenstein", authorId: 3, year: 1818),
        Book(id: 5, title: "Crime and Punishment", authorId: 4, year: 1866),
        Book(id: 6, title: "The Brothers Karamazov", authorId: 4, year: 1880),
    ]
}

/// The id in `/<collection>/{id}`, or nil when the path is something else.
private func identifier(in request: DemoRequest, collection: String) -> Int?? {
    let segments = request.segments
    guard segments.count == 2, segments[0] == collection else { return nil }
    return .some(Int(segments[1]))
}

private func notFound(_ request: DemoRequest) -> DemoResponse {
    .error("no route for \(request.method.rawValue) \(request.path)", status: .notFound)
}

/// `apus-demo authors`: `GET /authors`, `GET /authors/{id}`.
enum AuthorsService {
    static func responder() -> DemoResponder {
        { request in
            guard request.method == .GET else { return notFound(request) }
            if request.segments == ["authors"] { return .json(Catalogue.authors) }
            guard let id = identifier(in: request, collection: "authors") else { return notFound(request) }
            guard let id, let author = Catalogue.authors.first(where: { $0.id == id }) else {
                return .error("no author \(request.segments[1])", status: .notFound)
            }
            return .json(author)
        }
    }
}

/// `apus-demo books`: `GET /books`, `GET /books/{id}` (asks the authors service for the author), `POST /books`.
enum BooksService {
    static func responder(client: MeshClient, authorsURL: String) -> DemoResponder {
        let books = NIOLockedValueBox(Catalogue.books)
        return { request in
            if request.segments == ["books"] {
                switch request.method {
                case .GET: return .json(books.withLockedValue { $0 })
                case .POST: return create(request, in: books)
                default: return notFound(request)
                }
            }
            guard request.method == .GET, let id = identifier(in: request, collection: "books") else {
                return notFound(request)
            }
            guard let id, let book = books.withLockedValue({ $0.first { $0.id == id } }) else {
                return .error("no book \(request.segments[1])", status: .notFound)
            }
            do {
                let response = try await client.expectSuccess(.GET, "\(authorsURL)/authors/\(book.authorId)")
                let author = try JSONDecoder().decode(Author.self, from: Data(response.body.utf8))
                return .json(BookDetail(book: book, author: author))
            } catch {
                return .error("authors: \(error)", status: .badGateway)
            }
        }
    }

    private static func create(_ request: DemoRequest, in books: NIOLockedValueBox<[Book]>) -> DemoResponse {
        let new: NewBook
        do {
            new = try JSONDecoder().decode(NewBook.self, from: Data(request.body.readableBytesView))
        } catch {
            return .error(
                "the body must be JSON {\"title\": String, \"authorId\": Int, \"year\": Int?}: \(error)",
                status: .badRequest)
        }
        guard !new.title.trimmingCharacters(in: .whitespaces).isEmpty else {
            return .error("title must not be empty", status: .badRequest)
        }
        let book = books.withLockedValue { books in
            let book = Book(
                id: (books.map(\.id).max() ?? 0) + 1, title: new.title, authorId: new.authorId, year: new.year ?? 0)
            books.append(book)
            return book
        }
        return .json(book, status: .created)
    }
}

/// `apus-demo webapp`: the front end. `GET /` lists books with their authors (one call to each service);
/// `GET /books/{id}` shows one book (books, which itself calls authors, then authors for the author's details).
/// A failing dependency makes the page a 502 that says which call failed and why.
enum WebappService {
    /// The JSON of `GET /books/{id}`.
    struct BookPage: Codable, Sendable {
        var book: Book
        var author: Author
        /// Which pod of each service answered (`x-served-by`), to watch traffic splits at work.
        var servedBy: [String: String]
    }

    static func responder(client: MeshClient, booksURL: String, authorsURL: String) -> DemoResponder {
        { request in
            guard request.method == .GET else { return notFound(request) }
            do throws(MeshCallError) {
                if request.path == "/" {
                    return try await index(client: client, booksURL: booksURL, authorsURL: authorsURL)
                }
                guard let id = identifier(in: request, collection: "books") else { return notFound(request) }
                guard let id else { return .error("no book \(request.segments[1])", status: .notFound) }
                return try await bookPage(id: id, client: client, booksURL: booksURL, authorsURL: authorsURL)
            } catch {
                return .error("\(error)", status: .badGateway)
            }
        }
    }

    private static func index(
        client: MeshClient, booksURL: String, authorsURL: String
    ) async throws(MeshCallError) -> DemoResponse {
        // Both calls at once, as a real front end would; the page waits for the slower one.
        async let booksCall = client.result(.GET, "\(booksURL)/books")
        let authorsResponse = try await client.expectSuccess(.GET, "\(authorsURL)/authors")
        let booksResponse = try await booksCall.get()
        let books: [Book] = try decode(booksResponse, from: "\(booksURL)/books")
        let authors: [Author] = try decode(authorsResponse, from: "\(authorsURL)/authors")
        let names = Dictionary(authors.map { ($0.id, $0.name) }, uniquingKeysWith: { first, _ in first })
        let rows = books.map { book in
            "<tr><td><a href=\"/books/\(book.id)\">\(escape(book.title))</a></td>"
                + "<td>\(escape(names[book.authorId] ?? "unknown author"))</td><td>\(book.year)</td></tr>"
        }
        let servedBy = [
            "books": booksResponse.headers.first(name: "x-served-by") ?? "?",
            "authors": authorsResponse.headers.first(name: "x-served-by") ?? "?",
        ]
        let page = """
            <!doctype html>
            <html><head><title>Apus books</title></head><body>
            <h1>Books</h1>
            <table>
            <tr><th>Title</th><th>Author</th><th>Year</th></tr>
            \(rows.joined(separator: "\n"))
            </table>
            <p>books served by \(escape(servedBy["books"] ?? "?")), authors by \(escape(servedBy["authors"] ?? "?"))</p>
            </body></html>

            """
        return .html(page)
    }

    private static func bookPage(
        id: Int, client: MeshClient, booksURL: String, authorsURL: String
    ) async throws(MeshCallError) -> DemoResponse {
        let bookResponse = try await client.call(.GET, "\(booksURL)/books/\(id)")
        if bookResponse.status == 404 { return .error("no book \(id)", status: .notFound) }
        guard bookResponse.isSuccess else {
            throw MeshCallError(unsuccessful: bookResponse, method: "GET", url: "\(booksURL)/books/\(id)")
        }
        let detail: BookDetail = try decode(bookResponse, from: "\(booksURL)/books/\(id)")
        let authorURL = "\(authorsURL)/authors/\(detail.book.authorId)"
        let authorResponse = try await client.expectSuccess(.GET, authorURL)
        let author: Author = try decode(authorResponse, from: authorURL)
        return .json(
            BookPage(
                book: detail.book, author: author,
                servedBy: [
                    "books": bookResponse.headers.first(name: "x-served-by") ?? "?",
                    "authors": authorResponse.headers.first(name: "x-served-by") ?? "?",
                ]))
    }

    private static func decode<T: Decodable>(_ response: MeshResponse, from url: String) throws(MeshCallError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(response.body.utf8))
        } catch {
            throw MeshCallError(method: "GET", url: url, reason: "answered with unexpected JSON: \(error)")
        }
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}

/// Seed 002's pair. `hello` (500 ms of its own latency by default) answers `hello ` + what `world` answers;
/// `world` (about 10 ms) answers `world`. Per-service timeouts in the ServiceProfiles decide who sees a 504.
enum HelloWorld {
    static func hello(client: MeshClient, worldURL: String) -> DemoResponder {
        { _ in
            do {
                let world = try await client.expectSuccess(.GET, worldURL)
                return .text("hello " + world.body)
            } catch {
                return .error("world: \(error)", status: .badGateway)
            }
        }
    }

    static func world() -> DemoResponder {
        { _ in .text("world\n") }
    }
}
