//! Writing a whole file so that it survives a crash.

use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably: a temporary file
/// beside it, fsync, rename over `path`, fsync of the directory (creating
/// the directory first when needed). After a crash the file holds either
/// the old or the new content, never a mix.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a durable file needs a parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Makes a directory's entries durable (after a file in it was removed).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
