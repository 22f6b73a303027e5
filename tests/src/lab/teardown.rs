//! Removing a lab, or what any earlier lab left behind.

use super::*;

/// The namespaces that belong to lab `name`.
pub fn lab_netns(name: &str) -> Vec<String> {
    netns::list(netns::PREFIX)
        .into_iter()
        .filter(|ns| is_lab_netns(ns, name))
        .collect()
}

/// What a teardown removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Removed {
    pub processes: Vec<String>,
    pub namespaces: Vec<String>,
    pub directories: Vec<PathBuf>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.namespaces.is_empty() && self.directories.is_empty()
    }
}

/// Stops every process of lab `name`, deletes its namespaces and its state
/// directory. Safe to call for a lab that does not (or no longer) exist.
pub fn teardown(name: &str) -> Removed {
    let namespaces = lab_netns(name);
    let mut pids = procs::marked(Some(name));
    for ns in &namespaces {
        pids.extend(netns::pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    remove(Some(name), pids, namespaces, vec![lab_dir(name)])
}

/// Stops `pids`, then whatever still runs in the lab's cgroups (a real
/// node's containers), removes those cgroups, the namespaces and `dirs`.
fn remove(
    lab: Option<&str>,
    pids: Vec<i32>,
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
) -> Removed {
    let described: Vec<(i32, String)> = pids.iter().map(|&p| (p, procs::cmdline(p))).collect();
    let killed = procs::terminate(&pids, Duration::from_secs(3));
    let mut removed = Removed {
        processes: described
            .into_iter()
            .filter(|(p, _)| killed.contains(p))
            .map(|(p, c)| format!("{p} {c}"))
            .collect(),
        ..Default::default()
    };
    removed.directories.extend(crate::real::remove_cgroups(lab));
    for ns in namespaces {
        if netns::delete(&ns).is_ok() {
            removed.namespaces.push(ns);
        }
    }
    for d in dirs {
        if d.exists() && std::fs::remove_dir_all(&d).is_ok() {
            removed.directories.push(d);
        }
    }
    removed
}

/// Removes everything any lab left behind: marked processes, `weftlab-*`
/// namespaces and every directory under the state root.
pub fn clean_all() -> Removed {
    let namespaces = netns::list(netns::PREFIX);
    let mut pids = procs::marked(None);
    for ns in &namespaces {
        pids.extend(netns::pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    let dirs = std::fs::read_dir(state_root())
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    remove(None, pids, namespaces, dirs)
}
