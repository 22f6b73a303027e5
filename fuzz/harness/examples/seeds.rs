#![allow(clippy::unwrap_used)] // a tool run by hand: a failure is the message
//! Writes the fuzz targets' seed inputs (`seed-*` files) into a corpus
//! directory: realistic inputs each target starts from, before the fuzzer
//! grows the corpus from them.
//!
//! `cargo run -p weft-fuzz-harness --example seeds -- fuzz/corpus`

use std::path::Path;

use weftd::nft::wire;
use weftd::nft::{Family, RulesetInput, build};

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&0xffu8)
}

fn env(pairs: &[(&str, &str)]) -> Vec<u8> {
    let v: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.join("\0").into_bytes()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","type":"weft","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
const CONF_V6: &str = r#"{"cniVersion":"1.1.0","name":"cbr0","type":"weft","subnetFile":"/run/flannel/subnet.env","dataDir":"/var/lib/cni/flannel","delegate":{"type":"bridge","bridge":"cni0"},"ipam":{"routes":[{"dst":"0.0.0.0/0"}]},"runtimeConfig":{"portMappings":[]}}"#;
const CONF_GC: &str = r#"{"cniVersion":"1.1.0","name":"cbr0","type":"weft","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#;
const SUBNET: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const SUBNET_DUAL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
const RESULT_040: &str = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","mac":"02:00:00:00:00:01"},{"name":"veth1","mac":"02:00:00:00:00:02"},{"name":"eth0","mac":"02:00:00:00:00:03","sandbox":"/var/run/netns/p"}],"ips":[{"version":"4","interface":2,"address":"10.244.1.5/24","gateway":"10.244.1.1"}],"routes":[{"dst":"10.244.0.0/16"}],"dns":{}}"#;
const RESULT_100: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:03","sandbox":"/var/run/netns/p"}],"ips":[{"interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"},{"interface":0,"address":"fd00:10:244:1::5/64"}],"routes":[{"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"}],"dns":{}}"#;

fn cni() -> Vec<(&'static str, Vec<u8>)> {
    let add = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("PATH", "/usr/bin"),
    ]);
    let del = env(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]);
    let gc = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]);
    let version = env(&[("CNI_COMMAND", "VERSION")]);
    vec![
        (
            "add-v4",
            join(&[
                &add,
                CONF.as_bytes(),
                SUBNET.as_bytes(),
                RESULT_100.as_bytes(),
            ]),
        ),
        (
            "add-dual",
            join(&[
                &add,
                CONF_V6.as_bytes(),
                SUBNET_DUAL.as_bytes(),
                RESULT_100.as_bytes(),
            ]),
        ),
        (
            "add-convert",
            join(&[
                &add,
                CONF_V6.as_bytes(),
                SUBNET.as_bytes(),
                RESULT_040.as_bytes(),
            ]),
        ),
        (
            "del",
            join(&[&del, CONF.as_bytes(), SUBNET.as_bytes(), b""]),
        ),
        ("gc", join(&[&gc, CONF_GC.as_bytes(), b"", b""])),
        ("version", join(&[&version, b"", b"", b""])),
    ]
}

fn nft() -> Vec<u8> {
    let rs = build(&RulesetInput {
        families: vec![
            Family {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.1.0/24".parse().unwrap(),
            },
            Family {
                network: "fd00:10:244::/56".parse().unwrap(),
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
            },
        ],
        ip_masq: true,
        masq_fully_random: true,
        forward_rules: true,
        allow_list: Some((
            8472,
            vec![
                "198.51.100.2".parse().unwrap(),
                "198.51.100.3".parse().unwrap(),
            ],
        )),
    });
    let msgs = wire::replace(&rs);
    wire::encode(&msgs, 1, false)
}

/// An IPv4 TCP super-packet from 10.244.1.5 to 10.244.2.7 with a
/// virtio-net header asking for TSO at 1400 bytes, after one peer
/// (10.244.2.0/24 at 198.51.100.2).
fn tcp_super_packet(payload: usize) -> Vec<u8> {
    let mut out = vec![1u8, 2, 0, 24, 2];
    let hl = 40;
    let vnet = [1u8, 1, 40, 0, 0x78, 0x05, 20, 0, 16, 0];
    out.extend_from_slice(&vnet);
    let total = (hl + payload) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
    let sum = weftd::udp::offload::fold(weftd::udp::offload::sum(&ip, 0));
    ip[10..12].copy_from_slice(&(!sum).to_be_bytes());
    let tcp = [
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    out.extend_from_slice(&ip);
    out.extend_from_slice(&tcp);
    out.extend((0..payload).map(|i| (i % 251) as u8));
    out
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let dir = Path::new(&dir);
    let node = br#"{"metadata":{"name":"node-b","creationTimestamp":"2024-05-01T10:00:00Z","annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/public-ip":"198.51.100.3","flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:03\"}","flannel.alpha.coreos.com/public-ipv6":"2001:db8::3","flannel.alpha.coreos.com/backend-v6-data":"{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:01:03\"}"}},"spec":{"podCIDR":"10.244.3.0/24","podCIDRs":["10.244.3.0/24","fd00:10:244:3::/64"]},"status":{"addresses":[{"type":"InternalIP","address":"198.51.100.3"}]}}"#;
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = cni()
        .into_iter()
        .map(|(n, b)| ("cni_request", n, b))
        .collect();
    seeds.extend([
        ("subnet_env", "v4", SUBNET.as_bytes().to_vec()),
        ("subnet_env", "dual", SUBNET_DUAL.as_bytes().to_vec()),
        ("subnet_env", "v6", b"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1280\nFLANNEL_IPMASQ=true\n".to_vec()),
        ("net_conf", "vxlan", br#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}"#.to_vec()),
        ("net_conf", "dual", br#"{"EnableIPv4":true,"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","SubnetLen":24,"IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#.to_vec()),
        ("net_conf", "udp", br#"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.200.0","Backend":{"Type":"udp","Port":8285}}"#.to_vec()),
        ("net_conf", "host-gw", br#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#.to_vec()),
        ("peer_annotations", "node", node.to_vec()),
        ("peer_annotations", "fields-vxlan", join(&[b"vxlan", b"198.51.100.4", br#"{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}"#, b"2001:db8::4", br#"{"VNI":1,"VtepMAC":"02:00:00:00:01:04"}"#, b"10.244.4.0/24,fd00:10:244:4::/64", b"true", b"node-c"])),
        ("peer_annotations", "fields-udp", join(&[b"", b"198.51.100.5", b"null", b"", b"", b"10.244.5.0/24", b"true", b"node-d"])),
        ("peer_annotations", "fields-hostgw", join(&[b"host-gw", b"198.51.100.6", b"null", b"", b"", b"10.244.6.0/24", b"true", b"node-e"])),
        ("nft_dump", "weft-table", nft()),
        ("udp_path", "tso", tcp_super_packet(5000)),
        ("udp_path", "small", tcp_super_packet(100)),
        ("flanneld_cli", "kube-flannel", join(&[b"--ip-masq\0--kube-subnet-mgr\0--iface=eth0\0-v=2", b"POD_NAME=kube-flannel-ds-x\0POD_NAMESPACE=kube-flannel\0FLANNELD_IPTABLES_RESYNC=10"])),
        ("flanneld_cli", "etcd", join(&[b"-etcd-endpoints=https://198.51.100.1:2379\0-etcd-prefix=/coreos.com/network\0-etcd-keyfile\0/k.pem\0-public-ip=198.51.100.2\0-subnet-lease-renew-margin=30", b"FLANNELD_IFACE_REGEX=^eth"])),
        ("etcd_lease", "vxlan", join(&[b"10.244.3.0-24", br#"{"PublicIP":"198.51.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}}"#])),
        ("etcd_lease", "dual", join(&[b"10.244.3.0-24&fd00:10:244:3::-64", br#"{"PublicIP":"198.51.100.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:01:03"}}"#])),
        ("etcd_lease", "hostgw", join(&[b"10.5.34.0-24", br#"{"PublicIP":"198.51.100.3","BackendType":"host-gw"}"#])),
    ]);
    for (target, name, bytes) in seeds {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    }
}
