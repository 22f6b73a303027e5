//! Writing files so that a reader never sees half of one: temp file in the
//! same directory, fsync, rename, fsync of the directory. Shared by the
//! plugin (its saved delegate configs) and weftd (subnet.env, the plugin
//! binary and conflist it installs).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically with mode `file_mode`, creating
/// missing directories with `dir_mode`. Returns whether anything was
/// written (false when the file already held exactly these bytes).
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    file_mode: u32,
    dir_mode: u32,
) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file_mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(file_mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}
