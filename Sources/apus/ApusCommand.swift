import ApusCore
import ArgumentParser

/// The `apus` command line. Subcommands arrive with the issues that build their back ends
/// (install, check, inject, profile, stat, routes, top, tap, diagnostics).
@main
struct ApusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apus",
        abstract: "Operate the Apus service mesh.",
        version: ApusVersion.current,
        subcommands: [
            Version.self, IdentityCommand.self, InjectCommand.self, UninjectCommand.self, TapCommand.self,
        ]
    )

    struct Version: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the client version.")

        func run() {
            print("Client version: \(ApusVersion.current)")
        }
    }
}
