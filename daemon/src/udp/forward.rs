//! The udp backend's forwarder (being written).
