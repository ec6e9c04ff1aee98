import BenchmarkSupport
import Foundation

/// Configuration files for the comparison servers, written into the run's temporary directory. All of them keep
/// connections to the backend alive, as apus-proxy does, so every row measures proxying rather than handshakes.
enum Configs {
    /// The backend's fixed body: small, so the rows measure per-request overhead rather than copying.
    static let backendBody = "hello from the nginx backend\n"

    /// NGINX serving ``backendBody`` itself on `port`, no logging; the fairest fast backend (it answers from
    /// memory, and is not one of the proxies being compared on the same CPU budget).
    static func nginxBackend(port: Int, directory: String) -> String {
        nginx(
            directory: directory, workers: 1, name: "backend",
            server: """
                    server {
                        listen 127.0.0.1:\(port) reuseport backlog=4096;
                        keepalive_requests 1000000;
                        location / {
                            default_type text/plain;
                            return 200 "\(backendBody.replacingOccurrences(of: "\n", with: "\\n"))";
                        }
                    }
                """)
    }

    /// NGINX as a reverse proxy on `port` to the backend, with an upstream keep-alive pool.
    static func nginxProxy(port: Int, backendPort: Int, workers: Int, directory: String) -> String {
        nginx(
            directory: directory, workers: workers, name: "proxy",
            server: """
                    upstream backend {
                        server 127.0.0.1:\(backendPort);
                        keepalive 256;
                        keepalive_requests 1000000;
                    }
                    server {
                        listen 127.0.0.1:\(port) backlog=4096;
                        keepalive_requests 1000000;
                        location / {
                            proxy_pass http://backend;
                            proxy_http_version 1.1;
                            proxy_set_header Connection "";
                            proxy_buffering on;
                        }
                    }
                """)
    }

    private static func nginx(directory: String, workers: Int, name: String, server: String) -> String {
        """
        worker_processes \(workers);
        daemon off;
        master_process on;
        pid \(directory)/nginx-\(name).pid;
        error_log \(directory)/nginx-\(name)-error.log warn;
        events {
            worker_connections 8192;
            multi_accept on;
        }
        http {
            access_log off;
            client_body_temp_path \(directory)/nginx-\(name)-body;
            proxy_temp_path \(directory)/nginx-\(name)-proxy;
            fastcgi_temp_path \(directory)/nginx-\(name)-fastcgi;
            uwsgi_temp_path \(directory)/nginx-\(name)-uwsgi;
            scgi_temp_path \(directory)/nginx-\(name)-scgi;
            keepalive_timeout 60s;
        \(server)
        }

        """
    }

    /// HAProxy in HTTP mode on `port`, reusing backend connections (`http-reuse always`).
    static func haproxy(port: Int, backendPort: Int, threads: Int) -> String {
        """
        global
            nbthread \(threads)
            maxconn 4096
        defaults
            mode http
            option http-keep-alive
            http-reuse always
            timeout connect 5s
            timeout client 60s
            timeout server 60s
        frontend bench
            bind 127.0.0.1:\(port)
            default_backend backend
        backend backend
            server nginx 127.0.0.1:\(backendPort) maxconn 4096

        """
    }
}
