//! nginx and Caddy in front of tidings, configured with the files
//! docs/deployment.md shows, taken from the document itself: the tests run
//! what operators copy. Only the addresses change - each snippet's
//! `listen 80`, `example.com` and tidings' `127.0.0.1:8080` become free
//! ports on 127.0.0.1 - and each of those must appear in the snippet,
//! so a snippet that changes shape fails the test rather than running
//! something else. What a test machine needs around a snippet (nginx's
//! pid and temporary files in a scratch directory, Caddy's admin endpoint
//! off) comes from the test and is kept apart from it.

use std::process::Command;

use super::components::{free_port, installed, output_of, Running, Scratch};

/// The operator's guide the snippets are taken from.
const GUIDE: &str = include_str!("../../../docs/deployment.md");

/// The fenced code block of docs/deployment.md whose first line is
/// `first_line` (the file it goes in), as it stands there.
pub fn snippet(first_line: &str) -> String {
    let mut blocks = GUIDE.split("```").skip(1).step_by(2);
    blocks
        .find_map(|block| {
            let (_language, body) = block.split_once('\n')?;
            body.starts_with(first_line).then(|| body.to_owned())
        })
        .unwrap_or_else(|| panic!("docs/deployment.md has no block starting {first_line:?}"))
}

/// `text` with each `(from, to)` replaced; every `from` must be there.
fn with_addresses(text: &str, replacements: &[(&str, String)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "the snippet no longer contains {from:?}: update the test with the document"
        );
        text = text.replace(from, to);
    }
    text
}

/// The nginx site file (`conf.d/tidings.conf`).
pub const NGINX_SITE: &str = "# /etc/nginx/conf.d/tidings.conf";
/// The nginx top-level settings for many streams.
pub const NGINX_TOP: &str = "# /etc/nginx/nginx.conf";
/// The Caddyfile.
pub const CADDYFILE: &str = "# /etc/caddy/Caddyfile";

/// A running nginx or Caddy in front of tidings.
pub struct Proxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub process: Running,
    scratch: Scratch,
    log: &'static str,
}

impl Proxy {
    /// nginx with the guide's site file in front of tidings on
    /// `upstream_port`, and `top` as its top-level settings (the guide's,
    /// or a test's own to measure limits). `None` when nginx is missing.
    pub fn nginx(upstream_port: u16, top: &str) -> Option<Self> {
        let program = installed("nginx", "nginx")?;
        let port = free_port();
        let scratch = Scratch::new("nginx");
        let site = with_addresses(
            &snippet(NGINX_SITE),
            &[
                ("listen 80;", format!("listen 127.0.0.1:{port};")),
                ("127.0.0.1:8080", format!("127.0.0.1:{upstream_port}")),
            ],
        );
        let site = scratch.write("tidings.conf", &site);
        let dir = scratch.0.display();
        let config = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log info;\n\
             {top}\n\
             http {{\n\
                 access_log off;\n\
                 client_body_temp_path {dir}/client_body;\n\
                 proxy_temp_path {dir}/proxy;\n\
                 fastcgi_temp_path {dir}/fastcgi;\n\
                 uwsgi_temp_path {dir}/uwsgi;\n\
                 scgi_temp_path {dir}/scgi;\n\
                 include {site};\n\
             }}\n",
            site = site.display(),
        );
        let config = scratch.write("nginx.conf", &config);
        let nginx = |args: &[&str]| {
            let mut command = Command::new(&program);
            command
                .args(args)
                .arg("-p")
                .arg(&scratch.0)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(scratch.path("error.log"));
            command
        };
        let (valid, said) = output_of(nginx(&["-t"]));
        assert!(valid, "nginx -t refuses the guide's configuration:\n{said}");
        let process = Running::start("nginx", nginx(&[]), port, &scratch.path("stderr.log"))
            .unwrap_or_else(|error| panic!("{error:#}\n{}", scratch.read("error.log")));
        Some(Self {
            url: format!("http://127.0.0.1:{port}"),
            process,
            scratch,
            log: "error.log",
        })
    }

    /// Caddy with the guide's Caddyfile in front of tidings on
    /// `upstream_port`. `None` when Caddy is missing.
    pub fn caddy(upstream_port: u16) -> Option<Self> {
        let program = installed("caddy", "caddy")?;
        let port = free_port();
        let scratch = Scratch::new("caddy");
        let site = with_addresses(
            &snippet(CADDYFILE),
            &[
                ("example.com", format!("http://127.0.0.1:{port}")),
                ("127.0.0.1:8080", format!("127.0.0.1:{upstream_port}")),
            ],
        );
        // The test's own global options, before the guide's site: no admin
        // endpoint (it would take the same port in every test).
        let caddyfile = scratch.write("Caddyfile", &format!("{{\n\tadmin off\n}}\n\n{site}"));
        let caddy = |command_name: &str| {
            let mut command = Command::new(&program);
            command
                .arg(command_name)
                .arg("--config")
                .arg(&caddyfile)
                .arg("--adapter")
                .arg("caddyfile")
                .env("HOME", &scratch.0)
                .env("XDG_DATA_HOME", scratch.path("data"))
                .env("XDG_CONFIG_HOME", scratch.path("config"));
            command
        };
        let (valid, said) = output_of(caddy("validate"));
        assert!(
            valid,
            "caddy validate refuses the guide's Caddyfile:\n{said}"
        );
        let process = Running::start("caddy", caddy("run"), port, &scratch.path("caddy.log"))
            .unwrap_or_else(|error| panic!("{error:#}"));
        Some(Self {
            url: format!("http://127.0.0.1:{port}"),
            process,
            scratch,
            log: "caddy.log",
        })
    }

    /// What the proxy logged, for failure messages and checks.
    pub fn log(&self) -> String {
        self.scratch.read(self.log)
    }
}
