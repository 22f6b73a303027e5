//! Many requests per system call: the writes of one reconcile pass go to
//! the kernel in chunks of [`CHUNK`] messages per `sendmsg`, and their acks
//! are read back in as few `recvmsg`s as they fill. The kernel handles the
//! messages of one buffer one after another and acks each (an error does
//! not stop the rest), so a chunk costs one round trip where `ip -batch`
//! and the message-per-send socket cost one per entry. It runs on its own
//! blocking socket, off the async thread, so Node decoding goes on while
//! the kernel works. Dumps go through it too ([`Batcher::dump`]): each
//! answer is handed on as its datagram arrives, so reading a table of
//! tens of thousands of entries leaves no grown buffer or queue behind.

use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// Messages per `sendmsg`. The kernel queues all of a chunk's acks before
/// `sendmsg` returns; at ~700 bytes of socket memory each, 128 of them
/// stay well inside the default receive buffer (212992 bytes).
pub const CHUNK: usize = 128;

/// How long to wait for a chunk's acks before calling them lost (they are
/// queued before `sendmsg` returns, so this only ends a broken exchange).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// One request: the message and its flags beyond REQUEST|ACK.
pub struct Request {
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
}

/// What the kernel said to one request: `Ok`, or its errno.
pub type Answer = Result<(), i32>;

/// A blocking rtnetlink socket for batched writes and dumps.
#[derive(Debug)]
pub struct Batcher {
    sock: Socket,
    seq: u32,
}

impl Batcher {
    /// Opens the socket (in the calling thread's network namespace).
    pub fn open() -> std::io::Result<Batcher> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        // Error acks without the request copied back.
        sock.set_cap_ack(true)?;
        let tv = nix::sys::time::TimeVal::new(ACK_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(std::io::Error::from)?;
        Ok(Batcher { sock, seq: 0 })
    }

    /// Sends every request and returns the kernel's answers, in order.
    pub fn write(&mut self, requests: Vec<Request>) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut rx = vec![0u8; 64 * 1024];
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            buf.clear();
            // A chunk's requests carry consecutive sequence numbers from
            // `first`: an ack's number gives its place.
            let base = answers.len();
            let first = self.seq.wrapping_add(1);
            for r in requests.by_ref().take(CHUNK) {
                self.seq = self.seq.wrapping_add(1);
                let mut m = NetlinkMessage::from(r.msg);
                m.header.flags = NLM_F_REQUEST | NLM_F_ACK | r.flags;
                m.header.sequence_number = self.seq;
                m.finalize();
                let at = buf.len();
                buf.resize(at + m.buffer_len(), 0);
                m.serialize(&mut buf[at..]);
                answers.push(None);
            }
            if let Err(e) = self.sock.send(&buf, 0) {
                let errno = e.raw_os_error().unwrap_or(EIO);
                answers[base..].fill(Some(Err(errno)));
                continue;
            }
            let mut pending = answers.len() - base;
            while pending > 0 {
                let n = match self.sock.recv(&mut &mut rx[..], 0) {
                    Ok(n) => n.min(rx.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // Lost acks (timeout, ENOBUFS): those requests count as
                    // failed; the loop's retry does them again.
                    Err(_) => break,
                };
                for (seq, errno) in acks(&rx[..n]) {
                    // Acks of an earlier chunk given up on fall outside.
                    let i = seq.wrapping_sub(first) as usize;
                    if let Some(slot @ None) = answers[base..].get_mut(i) {
                        *slot = Some(if errno == 0 { Ok(()) } else { Err(errno) });
                        pending -= 1;
                    }
                }
            }
        }
        answers.into_iter().map(|a| a.unwrap_or(Err(EIO))).collect()
    }

    /// Sends one dump request (`msg`, flags REQUEST|DUMP) and hands each
    /// answer to `each` as its datagram arrives, until the kernel's DONE;
    /// the kernel's errno if it refused. Nothing is queued: a dump of tens
    /// of thousands of entries costs one receive buffer.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        each: &mut dyn FnMut(RouteNetlinkMessage),
    ) -> Result<(), i32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut m = NetlinkMessage::from(msg);
        m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        m.header.sequence_number = seq;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|e| e.raw_os_error().unwrap_or(EIO))?;
        // A dump's datagrams are at most 32 KB (the kernel's cap).
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = match self.sock.recv(&mut &mut rx[..], 0) {
                Ok(n) => n.min(rx.len()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.raw_os_error().unwrap_or(EIO)),
            };
            // Leftovers of an earlier exchange given up on are passed over.
            for m in messages(&rx[..n]).filter(|m| m.header.sequence_number == seq) {
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(c) => return Err(-c.get()),
                        None => return Ok(()),
                    },
                    _ => {}
                }
            }
        }
    }
}

/// The errno of a request whose ack never came.
const EIO: i32 = 5;

/// The (sequence number, errno) of every ack in one datagram.
fn acks(data: &[u8]) -> Vec<(u32, i32)> {
    messages(data)
        .filter_map(|m| match m.payload {
            NetlinkPayload::Error(e) => Some((
                m.header.sequence_number,
                e.code.map(|c| -c.get()).unwrap_or(0),
            )),
            _ => None,
        })
        .collect()
}

/// The messages of one datagram that parse (a truncated tail ends it).
fn messages(mut data: &[u8]) -> impl Iterator<Item = NetlinkMessage<RouteNetlinkMessage>> {
    std::iter::from_fn(move || {
        while data.len() >= 16 {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if len < 16 || len > data.len() {
                return None;
            }
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]);
            // Messages are 4-byte aligned.
            data = &data[((len + 3) & !3).min(data.len())..];
            if let Ok(m) = m {
                return Some(m);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::ErrorMessage;

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        let mut m = NetlinkMessage::<RouteNetlinkMessage>::new(
            Default::default(),
            NetlinkPayload::Error(e),
        );
        m.header.sequence_number = seq;
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    #[test]
    fn acks_in_one_datagram_are_read_each_with_its_errno() {
        let mut d = ack(7, 0);
        d.extend(ack(8, -17));
        d.extend(ack(9, 0));
        assert_eq!(acks(&d), vec![(7, 0), (8, 17), (9, 0)]);
        // A truncated tail is ignored, not misread.
        let cut = &d[..d.len() - 3];
        assert_eq!(acks(cut), vec![(7, 0), (8, 17)]);
    }
}
