//! The process's open-file limit (RLIMIT_NOFILE): every socket, held or idle, costs
//! one file descriptor, so this limit is the number of connections one process holds.

/// The limit in force after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit to the hard one (the most an unprivileged process may
/// take), logs both, and returns them; `None` where the platform has no such limit.
///
/// Never a fixed number: machines differ (some cap it at 20,000, production ones
/// may allow a million), so the limit is read, not assumed.
pub fn raise() -> Option<FileLimit> {
    #[cfg(unix)]
    {
        let Ok((before, hard)) = rlimit::Resource::NOFILE.get() else {
            tracing::warn!("the open-file limit (RLIMIT_NOFILE) cannot be read; connections are not capped");
            return None;
        };
        let soft = match rlimit::increase_nofile_limit(hard) {
            Ok(soft) => soft,
            Err(e) => {
                tracing::warn!(error = %e, soft = before, hard, "could not raise the open-file limit; keeping it");
                before
            }
        };
        tracing::info!(
            soft,
            hard,
            was = before,
            "open-file limit (RLIMIT_NOFILE): each connection uses one file descriptor"
        );
        Some(FileLimit { soft, hard })
    }
    #[cfg(not(unix))]
    {
        tracing::info!("no open-file limit on this platform; connections are not capped");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let limit = raise().unwrap();
        assert!(limit.soft <= limit.hard);
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap(), (limit.soft, limit.hard));
    }
}
