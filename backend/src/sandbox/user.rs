//! The user gpuvisor-backend serves as (`--user`): resolved before start-up,
//! so that a wrong name fails at once, and taken on once start-up has opened
//! what needs privilege (the GPU's device files, the sockets).

use super::Error;
use std::ffi::CString;

/// A user to run as, with its primary group; supplementary groups are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// The passwd entry of `name`, or of `uid`: (uid, gid).
fn passwd(name: Option<&str>, uid: libc::uid_t) -> Result<Option<(libc::uid_t, libc::gid_t)>, Error> {
    // SAFETY: a zeroed passwd is a valid value of the plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16384];
    let rc = match name {
        Some(name) => {
            let c = CString::new(name).map_err(|_| Error::UnknownUser(name.to_string()))?;
            // SAFETY: every pointer is valid for the call; getpwnam_r writes
            // strings into `buf` and points `pw`'s fields at them.
            unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) }
        }
        // SAFETY: as above.
        None => unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) },
    };
    if rc != 0 || found.is_null() {
        return Ok(None);
    }
    Ok(Some((pw.pw_uid, pw.pw_gid)))
}

impl User {
    /// `NAME`, `UID`, `NAME:GID` or `UID:GID`; without a GID, the user's
    /// primary group from the passwd database.
    pub fn resolve(spec: &str) -> Result<User, Error> {
        let (who, group) = match spec.split_once(':') {
            Some((who, group)) => (who, Some(group)),
            None => (spec, None),
        };
        let gid = match group {
            Some(g) => Some(g.parse::<libc::gid_t>().map_err(|_| Error::BadGroup(g.to_string()))?),
            None => None,
        };
        let entry = match who.parse::<libc::uid_t>() {
            Ok(uid) => passwd(None, uid)?.or(gid.map(|g| (uid, g))),
            Err(_) => passwd(Some(who), 0)?,
        };
        let Some((uid, primary)) = entry else { return Err(Error::UnknownUser(spec.to_string())) };
        Ok(User { uid, gid: gid.unwrap_or(primary) })
    }

    /// Becomes this user in every thread (glibc applies set*id to all of
    /// them), with no supplementary groups, and checks that root cannot be
    /// taken back.
    pub fn become_user(&self) -> Result<(), Error> {
        let last = || Error::SetUser(std::io::Error::last_os_error());
        // SAFETY: plain system calls on this process's credentials.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(last());
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(last());
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(last());
            }
            if libc::getuid() != self.uid || libc::geteuid() != self.uid || libc::getegid() != self.gid {
                return Err(Error::SetUser(std::io::Error::other("credentials did not change")));
            }
            if self.uid != 0 && libc::setuid(0) == 0 {
                return Err(Error::SetUser(std::io::Error::other("root could be taken back")));
            }
        }
        Ok(())
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: reads this process's effective uid.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_or_id_with_their_own_group_unless_one_is_given() {
        assert_eq!(User::resolve("root").unwrap(), User { uid: 0, gid: 0 });
        assert_eq!(User::resolve("0").unwrap(), User { uid: 0, gid: 0 });
        assert_eq!(User::resolve("root:7").unwrap(), User { uid: 0, gid: 7 });
        // A UID without a passwd entry needs its group spelled out.
        assert_eq!(User::resolve("3999999:5").unwrap(), User { uid: 3_999_999, gid: 5 });
        assert!(matches!(User::resolve("3999999"), Err(Error::UnknownUser(_))));
        assert!(matches!(User::resolve("no-such-user-gv"), Err(Error::UnknownUser(_))));
        assert!(matches!(User::resolve("root:wheel"), Err(Error::BadGroup(_))));
    }
}
