//! The data directory and the database files hold the server's secret, the
//! publishers' keys and who watches what: readable by the server's user only
//! (directory 0700, files 0600), whatever the umask, and tightened if an earlier
//! version (or an operator) left them open.

use std::path::Path;

/// Creates `dir` (and its parents) as 0700, or tightens it to 0700 if it exists
/// and others may read it.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        tighten(dir, 0o700)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Creates `file` empty as 0600 if it is missing (so SQLite, which gives its -wal
/// and -shm files the database file's mode, never makes a readable one), or
/// tightens it to 0600. Missing files are created only when `create` is set.
pub fn ensure_private_file(file: &Path, create: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if !file.exists() {
            if !create {
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(file)?;
        }
        tighten(file, 0o600)
    }
    #[cfg(not(unix))]
    {
        let _ = (file, create);
        Ok(())
    }
}

#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        // Not ours to change (another owner): say so, but serve anyway, as before.
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                was = format!("{current:o}"),
                now = format!("{mode:o}"),
                "tightened permissions: others could read the server's data"
            ),
            Err(error) => tracing::warn!(
                path = %path.display(),
                mode = format!("{current:o}"),
                %error,
                "others can read the server's data, and its permissions cannot be tightened"
            ),
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn new_and_existing_paths_end_up_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("drisc.db");
        ensure_private_file(&file, false).unwrap();
        assert!(!file.exists(), "not created unless asked");
        ensure_private_file(&file, true).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure_private_file(&file, true).unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}

/// A SQLite database file and its `-wal` and `-shm` companions made 0600 (the
/// database created if missing) before SQLite opens it: SQLite gives the files it
/// creates the database file's mode.
pub fn ensure_private_database(path: &Path) -> std::io::Result<()> {
    ensure_private_file(path, true)?;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        ensure_private_file(Path::new(&companion), false)?;
    }
    Ok(())
}
