//! Node churn: nodes joining and leaving a running lab.

use super::*;

impl Lab {
    /// Adds a node: namespaces, underlay, then its Node object with the next
    /// free podCIDR (none when `with_pod_cidr` is false, as before the
    /// controller gets to it).
    pub fn add_node(&mut self, with_pod_cidr: bool) -> Result<NodeState, LabError> {
        let index = self.state.next_node_index;
        let host = FIRST_NODE_HOST + index;
        if host > 250 {
            return Err(LabError::TooManyNodes { max: 240 });
        }
        let name = format!("node-{index}");
        let ns = netns_name(&self.state.name, &name);
        let ip = Ipv4Addr::from(u32::from(self.state.underlay.network()) + host);
        let dir = self.state.dir.join("nodes").join(&name);
        self.say(&format!("creating {name} (netns {ns}, underlay {ip})"));
        let node = node::create(&node::NodeSpec {
            lab: &self.state.name,
            name: &name,
            netns: &ns,
            hub_ns: &self.state.hub_netns,
            hub_bridge: HUB_BRIDGE,
            underlay_ip: ip,
            prefix_len: self.state.underlay.prefix(),
            gateway: self.state.hub_ip,
            dir: &dir,
            real: false,
        })?;
        self.state.next_node_index += 1;
        self.state.nodes.push(node.clone());
        self.save()?;
        let pod_cidr = if with_pod_cidr {
            Some(self.state.cidrs.allocate()?)
        } else {
            None
        };
        if self.state.dual_stack {
            let ip6 = format!("{}/64", underlay_ip6(ip));
            cmd::ip(["-n", &ns, "addr", "add", &ip6, "dev", "eth0", "nodad"])
                .map_err(LabError::Hub)?;
        }
        let reg = NodeRegistration {
            name: name.clone(),
            internal_ip: ip,
            pod_cidr,
            dual_stack: self.state.dual_stack,
        };
        let admin = self.admin_kubeconfig();
        self.block_on(|| async move {
            let client = cluster::client(&admin).await?;
            cluster::register_node(&client, &reg).await
        })??;
        self.save()?;
        Ok(node)
    }

    /// Removes a node: its Node object, processes, namespaces and files.
    pub fn remove_node(&mut self, name: &str) -> Result<(), LabError> {
        let node = self.node(name)?.clone();
        let admin = self.admin_kubeconfig();
        let pod_cidr = self.block_on(|| async {
            let client = cluster::client(&admin).await?;
            let cidr = cluster::list_nodes(&client)
                .await?
                .into_iter()
                .find(|n| n.metadata.name.as_deref() == Some(name))
                .and_then(|n| n.spec?.pod_cidr);
            cluster::delete_node(&client, name).await?;
            Ok::<_, ClusterError>(cidr)
        })??;
        if let Some(cidr) = pod_cidr.and_then(|c| c.parse().ok()) {
            self.state.cidrs.release(cidr);
        }
        procs::terminate(&netns::pids(&node.netns), Duration::from_secs(3));
        procs::terminate(&[node.holder_pid as i32], Duration::from_secs(3));
        netns::delete(&node.netns)?;
        let _ = std::fs::remove_dir_all(&node.dir);
        self.state.nodes.retain(|n| n.name != name);
        self.state.pods.retain(|p| p.node != name);
        self.save()
    }

    /// A node joins as in a cluster: its Node with the next podCIDR, then
    /// its agent, waited for until ready.
    pub fn join_node(&mut self) -> Result<NodeState, LabError> {
        let joined = self.add_node(true)?;
        self.start_weftd(&joined.name)?;
        self.wait_weftd_ready(&[&joined.name], Duration::from_secs(30))?;
        Ok(joined)
    }
}
