//! Descriptors gpuvisor-backend inherited from whoever started it: noted
//! first thing, closed once start-up is done, so that a compromised backend
//! holds only what it opened itself (and the listening socket it was given).

use std::os::fd::RawFd;

/// The descriptors open at start, other than stdin, stdout and stderr, with
/// the file each named then.
#[derive(Debug, Default)]
pub struct Inherited(Vec<(RawFd, u64, u64)>);

fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`; an fd that is not open fails with EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

impl Inherited {
    /// The descriptors open now. Call before opening anything.
    pub fn note() -> Inherited {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Inherited::default() };
        let fds: Vec<RawFd> =
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
        // The directory's own descriptor is in the list and closed by now.
        Inherited(fds.into_iter().filter_map(|fd| identity(fd).map(|(dev, ino)| (fd, dev, ino))).collect())
    }

    /// Closes the noted descriptors other than `keep` that still name the
    /// same file, and points stdin at /dev/null (the backend reads nothing
    /// there; an open fd 0 keeps a later socket from landing on it).
    /// Returns the descriptors closed.
    pub fn close(self, keep: &[RawFd]) -> std::io::Result<Vec<RawFd>> {
        let mut closed = Vec::new();
        for (fd, dev, ino) in self.0 {
            if keep.contains(&fd) || identity(fd) != Some((dev, ino)) {
                continue;
            }
            // SAFETY: nothing in this process owns `fd`: it was open before
            // main ran and nothing took it over (it is not in `keep`).
            unsafe { libc::close(fd) };
            closed.push(fd);
        }
        if !keep.contains(&0) {
            let null = std::fs::File::open("/dev/null")?;
            // SAFETY: dup2 onto fd 0, which only the standard library's
            // (unused) stdin refers to.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(closed)
    }
}
