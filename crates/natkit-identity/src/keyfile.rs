//! The key file: where a node keeps its secret seed between runs.
//!
//! Format (text, so that a person can tell what it is):
//!
//! ```text
//! # natkit identity key (ed25519 seed). Keep this file secret.
//! ed25519-seed: 0b1c…(64 lowercase hex digits)
//! ```
//!
//! Lines starting with `#` and blank lines are ignored. A key file must be a
//! regular file (not a directory, a device such as `/dev/null` or a fifo),
//! readable by its owner only (Unix mode `0600` or stricter): a file that the
//! group or others can read is refused, as ssh does, because anyone who can read
//! it can impersonate the node. New files are created with mode `0600` and never
//! overwrite an existing file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Keypair;

/// Largest key file we read. A real one is about 130 bytes; anything much
/// larger is not a key file, and reading it whole would be a waste.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

const SEED_FIELD: &str = "ed25519-seed:";

/// Errors while reading or writing a key file. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` if it is yours, or make a new key"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is not a regular file (a directory, a device such as
    /// `/dev/null`, a fifo, a socket). Checked before the permissions, so that
    /// nobody is told to `chmod` a device.
    #[error(
        "key file {path} is not a regular file (it is {kind}); give --key the path of a key file"
    )]
    NotRegularFile {
        /// The path given.
        path: PathBuf,
        /// What it is instead ("a directory", "a character device", ...).
        kind: &'static str,
    },
    /// The file is not a natkit key file.
    #[error("key file {path} is malformed: {why}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// Creating a key file where one already exists.
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists {
        /// The key file.
        path: PathBuf,
    },
}

/// Reads a key file, checking its permissions and format.
pub fn load(path: &Path) -> Result<Keypair, KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    check_file_type(path, &meta)?;
    check_permissions(path, &meta)?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(malformed(path, "too large to be a key file"));
    }
    let bytes = fs::read(path).map_err(io_err)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| malformed(path, "not UTF-8 text"))?;
    parse(text).map_err(|why| malformed(path, why))
}

/// Creates a new key file with a fresh key (mode `0600`; parent directories are
/// created with mode `0700`). Never overwrites an existing file.
pub fn create(path: &Path) -> Result<Keypair, KeyFileError> {
    let key = Keypair::generate().map_err(|e| KeyFileError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    write_new(path, &key)?;
    Ok(key)
}

/// Loads the key file, or creates it if it does not exist. Returns the key and
/// whether it was created.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool), KeyFileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path).map(|k| (k, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path).map(|k| (k, true)),
        Err(source) => Err(KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `key` to a new file at `path` (mode `0600`, never overwriting).
pub fn write_new(path: &Path, key: &Keypair) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(io_err)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io_err(e)
        }
    })?;
    f.write_all(render(key).as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// The text of a key file for `key`.
pub fn render(key: &Keypair) -> String {
    format!(
        "# natkit identity key (ed25519 seed). Keep this file secret.\n# node id: {}\n{SEED_FIELD} {}\n",
        key.node_id(),
        data_encoding::HEXLOWER.encode(&key.seed())
    )
}

/// Parses the text of a key file.
pub fn parse(text: &str) -> Result<Keypair, &'static str> {
    let mut seed = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(hex) = line.strip_prefix(SEED_FIELD) else {
            return Err("unexpected line (expected `ed25519-seed: <64 hex digits>`)");
        };
        if seed.is_some() {
            return Err("more than one ed25519-seed line");
        }
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(hex.trim().as_bytes())
            .map_err(|_| "ed25519-seed is not hexadecimal")?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "ed25519-seed must be 64 hex digits (32 bytes)")?;
        seed = Some(arr);
    }
    seed.map(Keypair::from_seed)
        .ok_or("no `ed25519-seed:` line found")
}

fn malformed(path: &Path, why: &'static str) -> KeyFileError {
    KeyFileError::Malformed {
        path: path.to_path_buf(),
        why,
    }
}

/// Refuses anything but a regular file (symbolic links are followed).
fn check_file_type(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    if meta.is_file() {
        return Ok(());
    }
    Err(KeyFileError::NotRegularFile {
        path: path.to_path_buf(),
        kind: file_kind(&meta.file_type()),
    })
}

/// What a file that is not a regular file is, in words.
fn file_kind(t: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a fifo";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_then_load_gives_the_same_key_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/identity.key");
        let (k1, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.node_id(), k2.node_id());
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(&path),
            Err(KeyFileError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn a_path_that_is_not_a_regular_file_is_refused_as_such() {
        // Checked before the permissions: /dev/null is mode 666, and telling
        // root to chmod it would break the system.
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        let mut cases = vec![
            (PathBuf::from("/dev/null"), "a character device"),
            (dir.path().to_path_buf(), "a directory"),
        ];
        if made {
            fs::set_permissions(&fifo, fs::Permissions::from_mode(0o666)).unwrap();
            cases.push((fifo, "a fifo"));
        }
        for (path, what) in cases {
            let err = load(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::NotRegularFile { kind, .. } if kind == what),
                "{}: {err}",
                path.display()
            );
            let text = err.to_string();
            assert!(!text.contains("chmod"), "{text}");
            assert!(
                matches!(
                    load_or_create(&path),
                    Err(KeyFileError::NotRegularFile { .. })
                ),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create(&path).unwrap();
        assert!(matches!(create(&path), Err(KeyFileError::Exists { .. })));
    }

    #[test]
    fn malformed_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (i, body) in [
            &b""[..],
            b"hello\n",
            b"ed25519-seed: zz\n",
            b"ed25519-seed: 0011\n",
            b"\xff\xfe",
            b"ed25519-seed: 0000000000000000000000000000000000000000000000000000000000000000\ned25519-seed: 0000000000000000000000000000000000000000000000000000000000000000\n",
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("k{i}"));
            fs::write(&path, body).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Malformed { .. }),
                "{i}: {err}"
            );
        }
    }

    #[test]
    fn render_parse_round_trip() {
        let k = Keypair::from_seed([9; 32]);
        assert_eq!(parse(&render(&k)).unwrap().seed(), k.seed());
    }
}
