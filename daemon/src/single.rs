//! One weftd per node. Two agents on one node (a DaemonSet rolled with a
//! surge, a weftd started by hand beside the pod's) would both write the
//! same kernel tables; each would be right, but every change would be made
//! twice and a restart of either would race the other. The first takes an
//! exclusive `flock` on `weftd.lock` beside subnet.env (a directory every
//! deployment shares with the node) and holds it while it runs; a second
//! waits for it, saying so once, and takes over the moment the first exits
//! (the kernel releases the lock of a killed process too).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
#[error("taking the node's weftd lock {path}")]
pub struct LockError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The lock, held until dropped.
#[derive(Debug)]
pub struct Held {
    _lock: Flock<std::fs::File>,
}

/// The lock file for a node whose subnet.env is `subnet_file`.
pub fn lock_path(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name("weftd.lock")
}

/// Takes the lock at `path`, waiting (1 s between attempts) while another
/// process holds it; `None` when `shutdown` comes first.
pub async fn hold(
    path: &Path,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Held>, LockError> {
    let err = |source: std::io::Error| LockError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut said = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // Who holds it, for the next one's message.
                let mut f: &std::fs::File = &lock;
                let _ = f.set_len(0);
                let _ = writeln!(f, "{}", std::process::id());
                if said {
                    tracing::info!(path = %path.display(), "the other weftd is gone; taking over");
                }
                return Ok(Some(Held { _lock: lock }));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if !said {
                    let pid = std::fs::read_to_string(path).unwrap_or_default();
                    tracing::warn!(
                        path = %path.display(),
                        holder = pid.trim(),
                        "another weftd runs on this node; waiting for it to exit"
                    );
                    said = true;
                }
            }
            Err((_, errno)) => return Err(err(std::io::Error::from(errno))),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut *shutdown => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_is_gone() {
        let dir = std::env::temp_dir().join(format!("weftd-lock-{}", std::process::id()));
        let path = lock_path(&dir.join("subnet.env"));
        let mut never = std::pin::pin!(std::future::pending::<()>());
        let first = hold(&path, &mut never).await.unwrap().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        // Still held: a second attempt is told to stop waiting, and does.
        let mut soon = std::pin::pin!(tokio::time::sleep(Duration::from_millis(1500)));
        assert!(hold(&path, &mut soon).await.unwrap().is_none());
        // Released: the waiting one takes it within its next attempt.
        let waiting = tokio::spawn({
            let path = path.clone();
            async move {
                let mut never = std::pin::pin!(std::future::pending::<()>());
                hold(&path, &mut never).await.unwrap().is_some()
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
