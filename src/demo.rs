//! Demo mode: tidings started without `--jwt-secret`. It owns the secret
//! such a start signs and verifies with, kept in the data directory so
//! that tokens (the logged demo link, a demo page left open) still work
//! after a restart, and the demo token itself.
//!
//! It must never use a secret file that others may read or that is a
//! symbolic link: whoever reads the secret can sign tokens for anyone.
//! Nor may it weaken a configured secret: with `--jwt-secret` none of
//! this runs.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Role;
use crate::http::auth::Keys;
use crate::http::error::AppError;

/// The file in the data directory that holds the demo secret.
const SECRET_FILE: &str = "demo_jwt_secret";
/// How long the logged demo token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} may be read by others (mode {mode:o}); whoever reads it can sign tokens: \
         `chmod 600` it, or remove it to make a new one",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{} is empty or not text; remove it to make a new one", path.display())]
    Unusable { path: PathBuf },
}

/// The demo secret kept in `data_dir`, made on first use.
pub fn secret(data_dir: &Path) -> Result<Vec<u8>, DemoError> {
    let path = data_dir.join(SECRET_FILE);
    std::fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
    match open_for_reading(&path) {
        Ok(file) => read_secret(file, &path),
        Err(error) if error.kind() == ErrorKind::NotFound => make_secret(&path),
        Err(source) => Err(DemoError::Io {
            what: "opening",
            path,
            source,
        }),
    }
}

/// A token for the recipient `demo`, who may also publish (the demo
/// page's form does).
pub fn token(secret: &[u8]) -> Result<String, AppError> {
    Keys::new(secret).issue("demo", &[Role::Publisher], TOKEN_TTL)
}

/// Opens without following a symbolic link (`O_NOFOLLOW`).
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn read_secret(mut file: File, path: &Path) -> Result<Vec<u8>, DemoError> {
    let mode = file.metadata().map_err(io("reading", path))?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DemoError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|_| DemoError::Unusable {
            path: path.to_owned(),
        })?;
    let secret = text.trim();
    if secret.len() < 32 {
        return Err(DemoError::Unusable {
            path: path.to_owned(),
        });
    }
    Ok(secret.as_bytes().to_vec())
}

/// A new random secret (two v4 UUIDs: 244 random bits), written to a file
/// created here (`create_new`: never one someone put there meanwhile)
/// and readable by its owner alone.
fn make_secret(path: &Path) -> Result<Vec<u8>, DemoError> {
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io("creating", path))?;
    writeln!(file, "{secret}")
        .and_then(|()| file.sync_all())
        .map_err(io("writing", path))?;
    Ok(secret.into_bytes())
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DemoError {
    let path = path.to_owned();
    move |source| DemoError::Io { what, path, source }
}
