//! The last good bundle, on disk: what a daemon enforces when it starts while etcd is
//! unreachable. Written only after a bundle is in force, replaced atomically (a new file
//! renamed over the old), and checked again (signature, validity) whenever it is loaded.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::Candidate;

/// The cache file in the cache directory.
pub const FILE: &str = "bundle.json";

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    candidate: Candidate,
    /// When it was stored (Unix milliseconds).
    stored_ms: u64,
}

/// The cache file's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Stores `candidate` (a bundle now in force) as the last good one, replacing the one
/// before only once the new one is wholly on disk.
pub fn store(dir: &Path, candidate: &Candidate) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the fleet cache directory {}", dir.display()))?;
    let target = path(dir);
    let temporary = dir.join(format!(".{FILE}.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(&Cached {
        candidate: candidate.clone(),
        stored_ms: super::unix_ms(),
    })?;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing the fleet cache {}", target.display()))?;
    Ok(())
}

/// The cached bundle, if there is one, and when it was stored. It is not checked here:
/// the caller verifies it as any bundle.
pub fn load(dir: &Path) -> anyhow::Result<Option<(Candidate, u64)>> {
    let target = path(dir);
    let bytes = match std::fs::read(&target) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the fleet cache {}", target.display()));
        }
    };
    let cached: Cached = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: not a fleet cache (remove it; the daemon writes a new one after the next \
             bundle it puts into effect)",
            target.display()
        )
    })?;
    if cached.candidate.revision <= 0 {
        bail!(
            "{}: revision {} is not valid",
            target.display(),
            cached.candidate.revision
        );
    }
    Ok(Some((cached.candidate, cached.stored_ms)))
}
