//! Running things in a lab: commands on a node, in the hub or on the
//! outside host, async code against its API server, etcdctl and kubectl.

use super::*;

impl Lab {
    /// A command that runs `program` on node `node`.
    pub fn node_command(&self, node: &str, program: &str) -> Result<Command, LabError> {
        Ok(self.node(node)?.command(&self.state.name, program))
    }

    /// Runs `args` on node `node` and returns its output.
    pub fn exec(&self, node: &str, args: &[&str]) -> Result<Output, LabError> {
        let (prog, rest) = args.split_first().ok_or_else(|| LabError::MissingTool {
            tool: "(empty command)".into(),
        })?;
        let mut c = self.node_command(node, prog)?;
        c.args(rest);
        Ok(cmd::output(&mut c)?)
    }

    /// Runs `args` on node `node`; its stdout, or an error with its stderr.
    pub fn run(&self, node: &str, args: &[&str]) -> Result<String, LabError> {
        let (prog, rest) = args.split_first().ok_or_else(|| LabError::MissingTool {
            tool: "(empty command)".into(),
        })?;
        let mut c = self.node_command(node, prog)?;
        c.args(rest);
        Ok(cmd::run(&mut c)?)
    }

    /// Starts `args` on node `node` in the background, with stdout and
    /// stderr appended to the node's log `<node dir>/logs/<log>.log`.
    /// Returns the PID and the log's path.
    pub fn spawn_on(
        &self,
        node: &str,
        log: &str,
        args: &[&str],
    ) -> Result<(u32, PathBuf), LabError> {
        self.spawn_on_with(node, log, args, |_| {})
    }

    /// [`Lab::spawn_on`], with the command adjusted by `adjust` first (its
    /// environment, say).
    pub fn spawn_on_with(
        &self,
        node: &str,
        log: &str,
        args: &[&str],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Result<(u32, PathBuf), LabError> {
        let (prog, rest) = args.split_first().ok_or_else(|| LabError::MissingTool {
            tool: "(empty command)".into(),
        })?;
        let n = self.node(node)?;
        let dir = n.dir.join("logs");
        std::fs::create_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{log}.log"));
        let mut c = n.command(&self.state.name, prog);
        c.args(rest);
        adjust(&mut c);
        let pid =
            procs::spawn(&self.state.name, &mut c, &path).map_err(|source| NodeError::Spawn {
                node: node.to_string(),
                source,
            })?;
        Ok((pid, path))
    }

    /// Runs the future made by `f` inside the hub namespace, where the API
    /// server and etcd listen.
    pub fn block_on<T, F, Fut>(&self, f: F) -> Result<T, LabError>
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        Ok(netns::block_on_in(&self.state.hub_netns, f)?)
    }

    /// A command running `program` inside the hub namespace.
    /// `program` on the outside host (beyond the hub; not a node).
    pub fn outside_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &netns_name(&self.state.name, "outside"),
            program,
        ])
        .env(procs::MARK, &self.state.name);
        c
    }

    pub fn hub_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.state.hub_netns, program])
            .env(procs::MARK, &self.state.name);
        c
    }

    /// `etcdctl ARGS` against the lab's etcd; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut c = self.hub_command("etcdctl");
        c.arg(format!("--endpoints={}", self.state.etcd_url))
            .args(args)
            .env("ETCDCTL_API", "3");
        Ok(cmd::run(&mut c)?)
    }

    /// Every Node in the lab's API server, read as admin.
    pub fn api_nodes(&self) -> Result<Vec<k8s_openapi::api::core::v1::Node>, LabError> {
        let admin = self.admin_kubeconfig();
        self.block_on(|| async {
            let client = crate::cluster::client(&admin).await?;
            crate::cluster::list_nodes(&client).await
        })?
        .map_err(LabError::from)
    }

    /// A `kubectl` command with the admin kubeconfig, run in the hub.
    pub fn kubectl(&self) -> Command {
        let mut c = self.hub_command("kubectl");
        c.arg(format!(
            "--kubeconfig={}",
            self.admin_kubeconfig().display()
        ));
        c
    }
}
