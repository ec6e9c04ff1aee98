/// The Apus release every binary reports, so the CLI, controller and proxies can tell a version skew.
public enum ApusVersion {
    public static let current = "0.1.0-dev"
}
