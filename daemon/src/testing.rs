//! What the unit tests share: a runtime for one future, and this node as
//! the tests' fake host sees it (eth0 198.51.100.11/24 with the default
//! route, pod subnet 10.244.1.0/24 of 10.244.0.0/16).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use crate::backend::{Local, LocalFamily};
use crate::family::PerFamily;
use crate::iface::ExtIface;
use crate::netlink::fake::Fake;
use crate::netlink::{Netlink, Observed, Route};

/// Runs one future to its end on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Adds `eth0` (MTU 1500, 198.51.100.11/24, the default route via
/// 198.51.100.1) to `nl`; its index.
pub async fn add_eth0(nl: &Fake) -> u32 {
    let eth0 = nl.add_link("eth0", 1500);
    nl.set_address(eth0, "198.51.100.11/24".parse().unwrap(), true)
        .await
        .unwrap();
    nl.seed(&Observed {
        routes: vec![Route {
            link: eth0,
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("198.51.100.1".parse().unwrap()),
            onlink: false,
        }],
        ..Default::default()
    });
    eth0
}

/// This node on `eth0`, IPv4 only, publishing `advertised`.
pub fn local(eth0: u32, advertised: &str) -> Local {
    Local {
        ext: ExtIface {
            index: eth0,
            name: "eth0".into(),
            mtu: 1500,
            ipv4: Some("198.51.100.11".parse().unwrap()),
            ipv6: None,
        },
        families: PerFamily {
            v4: Some(LocalFamily {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.1.0/24".parse().unwrap(),
                public_ip: "198.51.100.11".parse().unwrap(),
                advertised: advertised.parse().unwrap(),
                stored_data: None,
            }),
            v6: None,
        },
        udp_offload: true,
    }
}
