//! Finding live processes by an environment tag in `/proc/<pid>/environ`
//! (the leak check and the guard's search for escaped descendants).

use std::collections::HashSet;

/// A live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

impl std::fmt::Display for ProcInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} (parent {}): {}", self.pid, self.ppid, self.cmdline)
    }
}

/// `(state, ppid, pgrp)` from `/proc/<pid>/stat` (the fields after the command name).
fn stat3(pid: i32) -> Option<(char, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

fn stat(pid: i32) -> Option<(char, i32)> {
    stat3(pid).map(|(s, p, _)| (s, p))
}

fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())).collect()
}

/// The live (not zombie) members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = pids()
        .into_iter()
        .filter(|p| matches!(stat3(*p), Some((s, _, g)) if g == pgid && s != 'Z' && s != 'X'))
        .collect();
    v.sort();
    v
}

/// Whether `environ` (NUL-separated `K=V`) holds exactly `var=value`.
pub fn environ_has(environ: &[u8], var: &str, value: &str) -> bool {
    let want = format!("{var}={value}");
    environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// Every live (not zombie) process whose environment holds `var=value`,
/// this process included if it does. Processes whose environment cannot be
/// read (another user's, when not root) are not seen.
pub fn tagged(var: &str, value: &str) -> Vec<ProcInfo> {
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !environ_has(&env, var, value) {
            continue;
        }
        let Some((state, ppid)) = stat(pid) else { continue };
        if state == 'Z' || state == 'X' {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(ProcInfo { pid, ppid, cmdline });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// This process and its ancestors up to init.
pub fn self_and_ancestors() -> HashSet<i32> {
    let mut set = HashSet::new();
    let mut pid = std::process::id() as i32;
    while pid > 0 && set.insert(pid) {
        match stat(pid) {
            Some((_, ppid)) => pid = ppid,
            None => break,
        }
    }
    set
}

/// Every live process carrying the run marker `marker` except this process
/// and its ancestors (the test script, cargo): what a run left behind.
pub fn leaked(marker: &str) -> Vec<ProcInfo> {
    let mine = self_and_ancestors();
    tagged(crate::MARKER_VAR, marker).into_iter().filter(|p| !mine.contains(&p.pid)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_matches_whole_entries_only() {
        let env = b"A=1\0CONVOY_TEST_RUN=abc\0B=2\0";
        assert!(environ_has(env, "CONVOY_TEST_RUN", "abc"));
        assert!(!environ_has(env, "CONVOY_TEST_RUN", "ab"));
        assert!(!environ_has(env, "CONVOY_TEST_RUN", "abcd"));
        assert!(!environ_has(env, "TEST_RUN", "abc"));
        assert!(!environ_has(b"", "A", ""));
    }

    #[test]
    fn self_is_found_by_its_own_tag_and_ancestors_include_self() {
        let me = std::process::id() as i32;
        assert!(self_and_ancestors().contains(&me));
        let path = std::env::var("PATH").unwrap_or_default();
        if !path.is_empty() {
            assert!(tagged("PATH", &path).iter().any(|p| p.pid == me));
        }
    }
}
