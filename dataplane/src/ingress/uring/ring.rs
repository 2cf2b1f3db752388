//! The io_uring of one ingress core: a multishot `recvmsg` on a provided-buffer ring, GSO
//! `sendmsg`s from a fixed pool of send slots, and a read on an eventfd that other threads
//! (the sequencer's acks) use to wake the ring. Every `unsafe` of the backend that touches the
//! ring is here: each submission names memory the kernel uses until its completion.

#![allow(
    unsafe_code,
    reason = "the io_uring boundary: submissions name memory the kernel uses until completion"
)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::socket::{
    GSO_BYTES_MAX, NAME_BYTES, RECV_CONTROL_BYTES, SEND_CONTROL_BYTES, encode_name,
    encode_segment_size,
};

/// Buffers in the provided-buffer ring (a power of two). Each holds one GRO batch.
pub const RECV_BUFFERS: u16 = 256;
/// Bytes of one receive buffer: the `io_uring_recvmsg_out` header, the name, the control
/// messages and a full GRO batch (64 KiB).
pub const RECV_BUFFER_BYTES: usize = 16 + NAME_BYTES + RECV_CONTROL_BYTES + 65_536;
/// Sends in flight at once; when all are used the core stops polling transmits until one
/// completes (the connections keep their data: QUIC's own flow and congestion control).
pub const SEND_SLOTS: usize = 64;
/// Submission queue entries: every send slot, the receive, the wakeup and room to spare.
const RING_ENTRIES: u32 = 256;
const BUFFER_GROUP: u16 = 0;

const _: () = assert!(RECV_BUFFERS.is_power_of_two());
const _: () = assert!(SEND_SLOTS + 2 <= RING_ENTRIES as usize);

/// What a completion is for, in its `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The multishot receive.
    Recv,
    /// The eventfd read.
    Wake,
    /// The send in this slot.
    Send(usize),
}

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Recv => 1 << 32,
            Token::Wake => 2 << 32,
            Token::Send(slot) => (3 << 32) | slot as u64,
        }
    }

    fn decode(data: u64) -> Option<Self> {
        match data >> 32 {
            1 => Some(Token::Recv),
            2 => Some(Token::Wake),
            3 => Some(Token::Send((data & 0xffff_ffff) as usize)),
            _ => None,
        }
    }
}

/// One completion, copied out of the queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// What it completes.
    pub token: Token,
    /// The result (negative errno on failure).
    pub result: i32,
    /// The completion flags (buffer id, more).
    pub flags: u32,
}

/// A GSO send's memory: the kernel reads it until the send completes, so it does not move and
/// is not reused before then.
struct SendSlot {
    buf: Vec<u8>,
    name: [u8; NAME_BYTES],
    control: [u8; SEND_CONTROL_BYTES],
    iov: libc::iovec,
    header: libc::msghdr,
}

/// The ring, its buffers and its send slots.
pub struct Ring {
    ring: IoUring,
    socket: std::net::UdpSocket,
    buffers: BufRing,
    /// The template the multishot receive reads name and control lengths from (kernel reads it
    /// at submission; kept for parsing).
    recv_header: Box<libc::msghdr>,
    /// A boxed slice never reallocates: the kernel reads the slots in place.
    slots: Box<[SendSlot]>,
    free: Vec<usize>,
    wake: Arc<Wakeup>,
    wake_buf: Box<[u8; 8]>,
    recv_armed: bool,
    wake_armed: bool,
}

/// The provided-buffer ring: entries shared with the kernel and the buffers they point at.
struct BufRing {
    entries: std::ptr::NonNull<types::BufRingEntry>,
    layout: std::alloc::Layout,
    /// One allocation per buffer id. A filled buffer is handed on whole (quinn decrypts in place
    /// and streams keep slices of it) and a fresh one takes its id: the payload is never copied.
    slots: Vec<BytesMut>,
    tail: u16,
}

/// Wakes a ring from another thread: one eventfd write per wakeup, however many wakes come
/// in between (`armed`).
pub struct Wakeup {
    fd: OwnedFd,
    armed: AtomicBool,
    /// Set by `shutdown`; the ring thread checks it after each wakeup.
    pub stop: AtomicBool,
}

impl Wakeup {
    fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            armed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// Makes the ring's eventfd readable, unless a wakeup is already on its way.
    pub fn wake(&self) {
        if self.armed.swap(true, Ordering::AcqRel) {
            return;
        }
        let one = 1u64.to_ne_bytes();
        // A failed write means the counter is saturated: a wakeup is pending anyway.
        // SAFETY: the eventfd is open (owned by self); `one` is 8 readable bytes.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl std::task::Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        Wakeup::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Wakeup::wake(self);
    }
}

impl BufRing {
    fn new() -> std::io::Result<Self> {
        let entries = usize::from(RECV_BUFFERS);
        let layout =
            std::alloc::Layout::from_size_align(entries * size_of::<types::BufRingEntry>(), 4096)
                .map_err(std::io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let entries = std::ptr::NonNull::new(raw.cast::<types::BufRingEntry>())
            .ok_or_else(|| std::io::Error::other("buffer ring allocation failed"))?;
        Ok(Self {
            entries,
            layout,
            slots: (0..RECV_BUFFERS)
                .map(|_| BytesMut::with_capacity(RECV_BUFFER_BYTES))
                .collect(),
            tail: 0,
        })
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        assert!(bid < RECV_BUFFERS);
        let index = usize::from(self.tail & (RECV_BUFFERS - 1));
        let slot = &mut self.slots[usize::from(bid)];
        debug_assert!(slot.is_empty() && slot.capacity() >= RECV_BUFFER_BYTES);
        let addr = slot.spare_capacity_mut().as_mut_ptr() as u64;
        // The kernel only reads entries between its head and the published tail; this one is
        // past the tail, so no one else touches it.
        // SAFETY: `index` < RECV_BUFFERS, the entries allocated in `new`; unaliased (above).
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(addr);
        entry.set_len(RECV_BUFFER_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // The tail is the first entry's `resv`, a u16 the kernel reads concurrently: hence an
        // atomic store, release-ordered after the entry's fields.
        let base = self.entries.as_ptr();
        // SAFETY: `base` is the page-aligned, initialized first entry; u16 ≅ AtomicU16.
        let tail = unsafe { &*types::BufRingEntry::tail(base).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Takes filled buffer `bid` (its first `len` bytes) and puts a fresh one in its place, to
    /// be provided next.
    fn take(&mut self, bid: u16, len: usize) -> BytesMut {
        let fresh = BytesMut::with_capacity(RECV_BUFFER_BYTES);
        let mut filled = std::mem::replace(&mut self.slots[usize::from(bid)], fresh);
        let len = len.min(RECV_BUFFER_BYTES).min(filled.capacity());
        // The kernel wrote `len` bytes (the completion's result, at most the length provided)
        // at the start of this buffer and is done with it: one completion per provided buffer.
        // SAFETY: those `len` bytes are initialized and no one else writes them now.
        unsafe { filled.set_len(len) };
        filled
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // `Ring` drops `ring` (which used the entries) before `buffers`.
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}

/// Sets an integer socket option on the ring's socket (GRO, path MTU discovery): `socket2`
/// has no setter for these.
pub fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    let len = size_of::<i32>() as libc::socklen_t;
    let value: *const i32 = &value;
    // SAFETY: `fd` is an open socket owned by the caller; `value` points at a live i32 of `len`.
    let rc = unsafe { libc::setsockopt(fd, level, name, value.cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A plain `msghdr` with every pointer null.
fn empty_header() -> libc::msghdr {
    // SAFETY: msghdr is plain data; all zero is a valid value (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// Whether this kernel lets the process set up a ring with what the backend uses: a probe at
/// start, so a seccomp'd container falls back to the tokio backend.
pub fn probe() -> std::io::Result<()> {
    let ring = IoUring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for code in [
        opcode::RecvMsgMulti::CODE,
        opcode::SendMsg::CODE,
        opcode::Read::CODE,
    ] {
        if !probe.is_supported(code) {
            return Err(std::io::Error::other(format!(
                "io_uring opcode {code} not supported"
            )));
        }
    }
    Ok(())
}

impl Ring {
    /// A ring over `socket` with its receive buffers registered.
    pub fn new(socket: std::net::UdpSocket) -> std::io::Result<Self> {
        let ring: IoUring<squeue::Entry, cqueue::Entry> = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(RING_ENTRIES)?;
        let mut buffers = BufRing::new()?;
        // The entries live in `buffers`, dropped after the ring (field order); ≤ 32768 of them.
        // SAFETY: the ring address and entry count stay valid for the ring's whole life.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                RECV_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        for bid in 0..RECV_BUFFERS {
            buffers.provide(bid);
        }
        let mut recv_header = Box::new(empty_header());
        recv_header.msg_namelen = NAME_BYTES as libc::socklen_t;
        recv_header.msg_controllen = RECV_CONTROL_BYTES;
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                buf: Vec::with_capacity(GSO_BYTES_MAX),
                name: [0; NAME_BYTES],
                control: [0; SEND_CONTROL_BYTES],
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                header: empty_header(),
            })
            .collect();
        Ok(Self {
            ring,
            socket,
            buffers,
            recv_header,
            slots,
            free: (0..SEND_SLOTS).rev().collect(),
            wake: Arc::new(Wakeup::new()?),
            wake_buf: Box::new([0; 8]),
            recv_armed: false,
            wake_armed: false,
        })
    }

    /// The handle other threads wake this ring with.
    pub fn wakeup(&self) -> Arc<Wakeup> {
        self.wake.clone()
    }

    /// Submits the multishot receive and the wakeup read if they are not running.
    pub fn arm(&mut self) -> std::io::Result<()> {
        if !self.recv_armed {
            let fd = types::Fd(self.socket.as_raw_fd());
            let entry = opcode::RecvMsgMulti::new(fd, &*self.recv_header, BUFFER_GROUP)
                .build()
                .user_data(Token::Recv.encode());
            self.push(entry)?;
            self.recv_armed = true;
        }
        if !self.wake_armed {
            let fd = types::Fd(self.wake.fd.as_raw_fd());
            let entry = opcode::Read::new(fd, self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(Token::Wake.encode());
            self.push(entry)?;
            self.wake_armed = true;
        }
        Ok(())
    }

    fn push(&mut self, entry: squeue::Entry) -> std::io::Result<()> {
        // Every caller's memory outlives its operation (see each caller); when the queue is
        // full, submit what is there and retry once.
        for _ in 0..2 {
            // Every entry points at memory owned by `self` that stays put until the operation
            // completes: the receive header and buffer ring, the wakeup buffer, or a send slot
            // that is not reused before its completion.
            // SAFETY: the entry's memory outlives the operation (above).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
        Err(std::io::Error::other("io_uring submission queue full"))
    }

    /// Whether a send slot is free.
    pub fn has_free_slot(&self) -> bool {
        !self.free.is_empty()
    }

    /// A free send buffer, if one is: fill it with [`Ring::send`].
    pub fn send_buffer(&mut self) -> Option<(usize, &mut Vec<u8>)> {
        let slot = *self.free.last()?;
        let buf = &mut self.slots[slot].buf;
        buf.clear();
        Some((slot, buf))
    }

    /// Sends the first `size` bytes of slot `slot`'s buffer to `to`, as `segment`-byte
    /// datagrams when `segment` is set (GSO).
    pub fn send(
        &mut self,
        slot: usize,
        to: SocketAddr,
        size: usize,
        segment: Option<usize>,
    ) -> std::io::Result<()> {
        assert_eq!(
            self.free.last(),
            Some(&slot),
            "sends use the slot send_buffer gave"
        );
        let send = &mut self.slots[slot];
        assert!(size <= send.buf.len() && size <= GSO_BYTES_MAX);
        let name_len = encode_name(to, &mut send.name);
        send.iov = libc::iovec {
            iov_base: send.buf.as_mut_ptr().cast(),
            iov_len: size,
        };
        send.header = empty_header();
        send.header.msg_name = send.name.as_mut_ptr().cast();
        send.header.msg_namelen = name_len as libc::socklen_t;
        send.header.msg_iov = &mut send.iov;
        send.header.msg_iovlen = 1;
        if let Some(segment) = segment.filter(|segment| *segment < size) {
            let segment = u16::try_from(segment).map_err(std::io::Error::other)?;
            send.header.msg_controllen = encode_segment_size(segment, &mut send.control);
            send.header.msg_control = send.control.as_mut_ptr().cast();
        }
        let fd = types::Fd(self.socket.as_raw_fd());
        let entry = opcode::SendMsg::new(fd, &send.header)
            .build()
            .user_data(Token::Send(slot).encode());
        self.push(entry)?;
        self.free.pop();
        Ok(())
    }

    /// Submits what is queued and waits for a completion, at most `timeout` (none: do not wait).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        let result = match timeout {
            None => self.ring.submit(),
            Some(timeout) => {
                let ts = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the completions waiting now into `out` (cleared first). Frees send slots and
    /// notes operations that must be armed again.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        for entry in self.ring.completion() {
            let Some(token) = Token::decode(entry.user_data()) else {
                continue;
            };
            let completion = Completion {
                token,
                result: entry.result(),
                flags: entry.flags(),
            };
            match token {
                Token::Recv if !cqueue::more(completion.flags) => self.recv_armed = false,
                Token::Wake => {
                    self.wake_armed = false;
                    // Later wakes must write the eventfd again.
                    self.wake.armed.store(false, Ordering::Release);
                }
                Token::Send(slot) => self.free.push(slot),
                Token::Recv => {}
            }
            out.push(completion);
        }
    }

    /// The datagram(s) of a receive completion: peer, GRO segment size (if coalesced) and the
    /// payload, in the very buffer the kernel filled, passed to `on_datagrams`; a fresh buffer
    /// takes its place in the ring.
    pub fn with_received<R>(
        &mut self,
        completion: &Completion,
        on_datagrams: impl FnOnce(Option<SocketAddr>, Option<usize>, BytesMut) -> R,
    ) -> Option<R> {
        let bid = cqueue::buffer_select(completion.flags)?;
        let Ok(len) = usize::try_from(completion.result) else {
            self.buffers.provide(bid);
            return None;
        };
        let mut filled = self.buffers.take(bid, len);
        self.buffers.provide(bid);
        let (peer, segment, payload) = {
            let out = types::RecvMsgOut::parse(&filled, &self.recv_header)
                .ok()
                .filter(|out| !out.is_payload_truncated())?;
            let payload = out.payload_data();
            // The payload lies inside `filled`: RecvMsgOut slices the buffer it parses.
            let start = payload.as_ptr() as usize - filled.as_ptr() as usize;
            (
                super::socket::decode_name(out.name_data()),
                super::socket::gro_segment_size(out.control_data()),
                start..start + payload.len(),
            )
        };
        filled.truncate(payload.end);
        filled.advance(payload.start);
        Some(on_datagrams(peer, segment, filled))
    }
}

impl Ring {
    /// Cancels the receive and the wakeup read and waits (at most `limit`) until no operation
    /// is in flight, so dropping the ring frees no memory the kernel still uses. Returns
    /// whether it is quiet; if not, the caller leaks the ring instead of dropping it.
    pub fn quiesce(&mut self, limit: Duration) -> bool {
        for token in [Token::Recv, Token::Wake] {
            let cancel = opcode::AsyncCancel::new(token.encode())
                .build()
                .user_data(0);
            let _ = self.push(cancel);
        }
        let deadline = std::time::Instant::now() + limit;
        let mut completions = Vec::new();
        // Bounded by the deadline.
        loop {
            if !self.recv_armed && !self.wake_armed && self.free.len() == SEND_SLOTS {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            if self.submit_and_wait(Some(deadline - now)).is_err() {
                return false;
            }
            self.completions(&mut completions);
            for completion in &completions {
                if completion.token == Token::Recv {
                    // Hand a buffer filled during the cancel back; its data is dropped.
                    if let Some(bid) = cqueue::buffer_select(completion.flags) {
                        self.buffers.provide(bid);
                    }
                }
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
    }
}
