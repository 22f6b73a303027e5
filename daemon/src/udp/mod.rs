//! The udp backend: flannel's wire format (the raw inner IP packet is the
//! UDP payload, sent to the peer's public IP at the backend's port) over a
//! TUN device `flannel0`. Split as boringtun is: a pure forwarder deciding
//! what happens to each packet, and a thin I/O shell around it.

pub mod forward;
