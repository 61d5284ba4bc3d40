//! TLS to PostgreSQL: the real binary against a throwaway cluster of its
//! own that serves TLS with a certificate from a CA made here, as managed
//! PostgreSQL does. Proves tidings' sessions are encrypted with
//! `verify-full` and by default, and that with `verify-full` it refuses a
//! server it cannot verify. Never uses the suite's shared cluster, which
//! speaks no TLS, and leaves nothing behind (see [`TlsCluster`]).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use sqlx::{Connection, PgConnection, Row};

use tidings::embedded::{EmbeddedPostgres, Shutdown};

use crate::helpers::binary::Binary;
use crate::helpers::cluster::throwaway;

/// The name the server certificate is issued for, and the only one it is
/// valid for (no IP address in it).
const SERVER_NAME: &str = "localhost";

/// A PostgreSQL listening on 127.0.0.1 with `ssl = on`, and the CA that
/// signed its certificate. Dropping it stops the cluster and removes it and
/// the certificates, also when the test fails.
struct TlsCluster {
    postgres: Option<EmbeddedPostgres>,
    /// The CA's certificate and key, and a CA that signed nothing.
    certs: PathBuf,
    port: u16,
}

impl TlsCluster {
    fn start() -> Result<Self> {
        let id = uuid::Uuid::new_v4().simple();
        let mut cluster = Self {
            postgres: None,
            certs: std::env::temp_dir().join(format!("tidings-tls-certs-{id}")),
            port: free_port()?,
        };
        fs::create_dir_all(&cluster.certs)?;
        make_ca(&cluster.certs, "ca")?;
        make_ca(&cluster.certs, "other-ca")?;
        let port = cluster.port.to_string();
        let options = throwaway(&[("listen_addresses", "127.0.0.1"), ("port", &port)]);
        let data_dir = std::env::temp_dir().join(format!("tidings-tls-{id}"));
        let postgres = cluster
            .postgres
            .insert(EmbeddedPostgres::start(&data_dir, &options)?);
        // The server reads its key and certificate from its data directory,
        // and only from files its own user owns and no one else can read.
        let pgdata = data_dir.join("pgdata");
        make_server_cert(&cluster.certs, &pgdata)?;
        let conf = pgdata.join("postgresql.conf");
        let mut settings = fs::read_to_string(&conf)?;
        settings.push_str("\nssl = on\n");
        fs::write(&conf, settings)?;
        // The embedded cluster refuses TCP logins; this one takes them.
        fs::write(
            pgdata.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        )?;
        postgres.restart(Shutdown::Fast)?;
        Ok(cluster)
    }

    fn ca(&self) -> PathBuf {
        self.certs.join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.certs.join("other-ca.pem")
    }

    /// A URL over TCP to `host`, with `query` appended.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    /// The superuser over the Unix socket: for checking, never through TLS.
    async fn admin(&self) -> Result<PgConnection> {
        let postgres = self.postgres.as_ref().context("cluster stopped")?;
        Ok(PgConnection::connect(postgres.url()).await?)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        if let Some(postgres) = self.postgres.take() {
            let _ = postgres.stop();
        }
        let _ = fs::remove_dir_all(&self.certs);
    }
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `openssl` in `dir` with `args` (split at spaces: no argument has one).
fn openssl(dir: &Path, args: &str) -> Result<()> {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    ensure!(
        output.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A new P-256 key, as openssl's `-newkey` takes it: quick to make.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A self-signed CA: `<name>.pem` and `<name>.key` in `dir`.
fn make_ca(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &format!(
            "req -x509 {NEW_KEY} -days 2 -subj /CN=tidings-test-{name} \
             -keyout {name}.key -out {name}.pem \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    )
}

/// A server certificate for [`SERVER_NAME`], signed by `certs/ca`, put
/// into `pgdata` as `server.crt` and `server.key`, owned by the server.
fn make_server_cert(certs: &Path, pgdata: &Path) -> Result<()> {
    fs::write(
        certs.join("server.ext"),
        format!(
            "subjectAltName=DNS:{SERVER_NAME}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(
        certs,
        &format!("req -new {NEW_KEY} -subj /CN={SERVER_NAME} -keyout server.key -out server.csr"),
    )?;
    openssl(
        certs,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 2 \
         -extfile server.ext -out server.crt",
    )?;
    let data = fs::metadata(pgdata)?;
    for file in ["server.crt", "server.key"] {
        let target = pgdata.join(file);
        fs::copy(certs.join(file), &target)?;
        std::os::unix::fs::chown(&target, Some(data.uid()), Some(data.gid()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// tidings' sessions (application_name `tidings...`) and whether each is
/// encrypted, as the server sees them.
async fn tidings_sessions(cluster: &TlsCluster) -> Result<Vec<(String, bool)>> {
    let mut admin = cluster.admin().await?;
    let rows = sqlx::query(
        "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'tidings%' \
         ORDER BY a.application_name",
    )
    .fetch_all(&mut admin)
    .await?;
    admin.close().await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Runs `tidings serve` on `url` until it logs why it cannot use the
/// database; returns that line, and whether it was ready meanwhile.
async fn refusal_of(url: &str) -> Result<(String, bool)> {
    let server = Binary::serve(&[("DATABASE_URL", url)])?;
    let refusals = server
        .lines_within(Duration::from_secs(20), |line| {
            line.contains("WARN") || line.contains("ERROR") || line.contains("Error")
        })
        .await;
    let ready = reqwest::get(format!("{}/readyz", server.address))
        .await
        .is_ok_and(|response| response.status() == 200);
    match refusals.into_iter().next() {
        Some(line) => Ok((line, ready)),
        None => bail!("no warning or error:\n{}", server.lines().join("\n")),
    }
}

#[tokio::test]
async fn with_verify_full_and_the_servers_ca_every_tidings_session_is_encrypted() {
    let cluster = TlsCluster::start().expect("TLS cluster");
    let query = format!("sslmode=verify-full&sslrootcert={}", cluster.ca().display());

    let server =
        Binary::serve(&[("DATABASE_URL", &cluster.url(SERVER_NAME, &query))]).expect("tidings");
    let ready = server.wait_until_ready().await;

    assert!(ready.is_ok(), "not ready:\n{}", server.lines().join("\n"));
    let sessions = tidings_sessions(&cluster).await.expect("sessions");
    assert!(
        sessions.iter().any(|(name, _)| name == "tidings"),
        "no request-pool session among {sessions:?}"
    );
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "unencrypted sessions among {sessions:?}"
    );
}

#[tokio::test]
async fn without_sslmode_tidings_still_encrypts_when_the_server_offers_tls() {
    let cluster = TlsCluster::start().expect("TLS cluster");

    // sslmode=prefer, PostgreSQL's default: TLS if offered, unverified.
    let server =
        Binary::serve(&[("DATABASE_URL", &cluster.url("127.0.0.1", ""))]).expect("tidings");
    let ready = server.wait_until_ready().await;

    assert!(ready.is_ok(), "not ready:\n{}", server.lines().join("\n"));
    let sessions = tidings_sessions(&cluster).await.expect("sessions");
    assert!(!sessions.is_empty(), "no tidings sessions");
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "unencrypted sessions among {sessions:?}"
    );
}

#[tokio::test]
async fn with_verify_full_tidings_refuses_a_server_it_cannot_verify_and_says_why() {
    let cluster = TlsCluster::start().expect("TLS cluster");
    let trusting = |ca: &Path| format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let cases = [
        (
            "no root certificate",
            cluster.url(SERVER_NAME, "sslmode=verify-full"),
        ),
        (
            "another CA",
            cluster.url(SERVER_NAME, &trusting(&cluster.other_ca())),
        ),
        (
            "a name not in the certificate",
            cluster.url("127.0.0.1", &trusting(&cluster.ca())),
        ),
    ];

    for (what, url) in cases {
        let (refusal, ready) = refusal_of(&url).await.expect(what);

        assert!(!ready, "ready with {what}");
        assert!(
            refusal.contains("invalid peer certificate"),
            "with {what}, the log does not say the certificate is why: {refusal}"
        );
    }
}
