//! vhost-user messages as the supervisor relays them between the frontend
//! (QEMU, or the direct transport) and the serving child: whole messages,
//! header, payload and the descriptors they carry (SCM_RIGHTS), read and
//! written with plain recvmsg/sendmsg. The supervisor looks only at the
//! header (request, flags, size) and at a vring index or feature word.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Header bytes: request, flags, payload size (u32 each, little-endian).
pub const HDR_BYTES: usize = 12;
/// Largest payload a vhost-user message carries (the vhost crate's bound).
pub const MAX_PAYLOAD: usize = 0x1000;
/// Most descriptors one message carries (the vhost crate's bound).
pub const MAX_FDS: usize = 32;

/// `flags`: this message is a reply.
pub const FLAG_REPLY: u32 = 1 << 2;
/// `flags`: the frontend asks for an acknowledgement (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 1 << 3;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const RESET_OWNER: u32 = 4;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const SET_VRING_ENABLE: u32 = 18;
pub const SET_BACKEND_REQ_FD: u32 = 21;
pub const SET_CONFIG: u32 = 25;
pub const SET_INFLIGHT_FD: u32 = 32;
/// QEMU's vhost-user-gpu: the display socket.
pub const GPU_SET_SOCKET: u32 = 33;
pub const RESET_DEVICE: u32 = 34;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;
pub const SET_STATUS: u32 = 39;

/// VHOST_USER_PROTOCOL_F_REPLY_ACK.
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

/// Requests the backend always answers, whatever the flags say.
const ALWAYS_ANSWERED: [u32; 14] = [1, 6, 11, 15, 17, 24, 28, 31, 36, 40, 41, 42, 43, 44];

/// One vhost-user message with the descriptors that came with it.
#[derive(Debug)]
pub struct Msg {
    pub hdr: [u8; HDR_BYTES],
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

fn word(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

impl Msg {
    pub fn request(&self) -> u32 {
        word(&self.hdr, 0)
    }

    pub fn flags(&self) -> u32 {
        word(&self.hdr, 4)
    }

    /// The vring a vring request names (its first payload word, whose low
    /// byte is the index for KICK/CALL/ERR too).
    pub fn vring(&self) -> u32 {
        match self.request() {
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => word(&self.payload, 0) & 0xff,
            _ => word(&self.payload, 0),
        }
    }

    /// The payload as one u64 (features words).
    pub fn u64(&self) -> u64 {
        self.payload.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// Whether the backend answers this frontend request, given whether
    /// REPLY_ACK was negotiated.
    pub fn answered(&self, reply_ack: bool) -> bool {
        ALWAYS_ANSWERED.contains(&self.request()) || (reply_ack && self.flags() & FLAG_NEED_REPLY != 0)
    }

    /// Whether the request turns REPLY_ACK on (SET_PROTOCOL_FEATURES with it).
    pub fn acks_replies(&self) -> Option<bool> {
        (self.request() == SET_PROTOCOL_FEATURES).then(|| self.u64() & PROTOCOL_F_REPLY_ACK != 0)
    }
}

/// Reads one message; `None` when the peer closed the connection between
/// messages.
pub fn recv(sock: &UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = [0u8; HDR_BYTES];
    let mut fds = Vec::new();
    let n = recv_with_fds(sock.as_raw_fd(), &mut hdr, &mut fds)?;
    if n == 0 {
        return Ok(None);
    }
    read_rest(sock, &mut hdr[n..])?;
    let size = word(&hdr, 8) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("vhost-user message of {size} bytes")));
    }
    let mut payload = vec![0u8; size];
    read_rest(sock, &mut payload)?;
    Ok(Some(Msg { hdr, payload, fds }))
}

fn read_rest(sock: &UnixStream, mut buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    let mut s = sock;
    while !buf.is_empty() {
        match s.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Room for `MAX_FDS` descriptors in a control message, in u64s (aligned).
const CMSG_WORDS: usize = 64;

fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; the fields set below point at
    // buffers that outlive the call.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
    mh.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    let n = loop {
        // SAFETY: recvmsg writes at most iov_len bytes and msg_controllen
        // control bytes into the buffers `mh` names.
        let n = unsafe { libc::recvmsg(fd, &mut mh, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: walks the control messages recvmsg wrote, with the libc
    // macros, inside `cmsg`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    // Each received descriptor is new and ours.
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a message carried too many descriptors"));
    }
    Ok(n)
}

/// Writes `msg` with its descriptors (the kernel gives the peer copies; ours stay).
pub fn send(sock: &UnixStream, msg: &Msg) -> io::Result<()> {
    if msg.fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors"));
    }
    let mut bytes = Vec::with_capacity(HDR_BYTES + msg.payload.len());
    bytes.extend_from_slice(&msg.hdr);
    bytes.extend_from_slice(&msg.payload);
    let mut cmsg = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec { iov_base: bytes.as_mut_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: a zeroed msghdr is valid; the fields set below point at
    // buffers that outlive the call.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    if !msg.fds.is_empty() {
        let data_len = (msg.fds.len() * std::mem::size_of::<RawFd>()) as u32;
        mh.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE is arithmetic.
        mh.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
        // SAFETY: `cmsg` has room for CMSG_SPACE(MAX_FDS descriptors) (512
        // bytes), checked above; the header and data are written inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(c) as *mut RawFd;
            for (i, f) in msg.fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), f.as_raw_fd());
            }
        }
    }
    let sent = loop {
        // SAFETY: sendmsg reads the buffers `mh` names.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if sent < bytes.len() {
        // The descriptors went with the first byte; the rest is plain data.
        use std::io::Write;
        let mut s = sock;
        s.write_all(&bytes[sent..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_crosses_with_its_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let ev = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let mut hdr = [0u8; HDR_BYTES];
        hdr[0..4].copy_from_slice(&SET_VRING_KICK.to_le_bytes());
        hdr[4..8].copy_from_slice(&(1 | FLAG_NEED_REPLY).to_le_bytes());
        hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
        // SAFETY: dup of an open eventfd.
        let evfd = unsafe { OwnedFd::from_raw_fd(libc::dup(ev.as_raw_fd())) };
        let msg = Msg { hdr, payload: 1u64.to_le_bytes().to_vec(), fds: vec![evfd, fd] };
        send(&a, &msg).unwrap();
        let got = recv(&b).unwrap().unwrap();
        assert_eq!((got.request(), got.vring(), got.fds.len()), (SET_VRING_KICK, 1, 2));
        assert!(got.answered(true) && !got.answered(false));
        // The eventfd that came across is the same one.
        // SAFETY: writes 8 bytes into the received eventfd.
        let one = 1u64.to_le_bytes();
        assert_eq!(unsafe { libc::write(got.fds[0].as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) }, 8);
        assert_eq!(ev.read().unwrap(), 1);
        drop(a);
        assert!(recv(&b).unwrap().is_none(), "a closed peer reads as the end");
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut hdr = [0u8; HDR_BYTES];
        hdr[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        use std::io::Write;
        (&a).write_all(&hdr).unwrap();
        assert!(recv(&b).is_err());
    }
}
