//! Hand-made packets for the lab's tests, sent by `python3` on a node or
//! the outside host: one IPv4/UDP packet (inner source, destination, port,
//! payload text), either raw as the udp backend carries it or wrapped in
//! VXLAN (VNI 1) and an Ethernet frame to the receiving VTEP's MAC.

/// `python3 -c SEND_PY <node> <port> <raw|vxlan:MAC> <src> <dst> <dport> <text>`
/// sends the packet as one UDP datagram to `<node>:<port>`.
pub const SEND_PY: &str = r#"
import socket, struct, sys
node, port, wrap, src, dst, dport, text = sys.argv[1:8]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
data = text.encode()
udp = struct.pack("!HHHH", 40000, int(dport), 8 + len(data), 0) + data
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
packet = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp
if wrap.startswith("vxlan:"):
    mac = bytes.fromhex(wrap[6:].replace(":", ""))
    packet = struct.pack("!II", 0x08000000, 1 << 8) + mac + bytes.fromhex("0a0000000001") + b"\x08\x00" + packet
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(packet, (node, int(port)))
"#;
