//! The `weft-lab` command line: bring a lab cluster up, look at it, run
//! commands on its nodes, take it down.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use weft_lab::cluster;
use weft_lab::lab::{self, Backend, Lab, LabConfig};

#[derive(Parser, Debug)]
#[command(
    name = "weft-lab",
    version,
    about = "A Kubernetes cluster's network on one machine: netns nodes, real etcd and kube-apiserver"
)]
struct Cli {
    /// Which lab (several can coexist).
    #[arg(long, global = true, env = "WEFT_LAB_NAME", default_value = "default")]
    name: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bring a lab cluster up and leave it running in the background.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Overlay backend of the nodes.
        #[arg(long, value_enum, default_value_t = Backend::Vxlan)]
        backend: Backend,
        /// Pods to create on each node.
        #[arg(long, default_value_t = 0)]
        pods_per_node: usize,
        /// IPv6 too: IPv6 underlay addresses and podCIDRs, weft dual-stack.
        #[arg(long)]
        dual_stack: bool,
        /// VXLAN with DirectRouting (every lab node shares one subnet).
        #[arg(long)]
        direct_routing: bool,
        /// Where weftd keeps leases: kube (Node objects) or etcd (the hub's
        /// etcd, flannel's etcd subnet manager).
        #[arg(long, value_enum, default_value_t = weft_lab::SubnetManager::Kube)]
        subnet_manager: weft_lab::SubnetManager,
        /// Real nodes: containerd, kubelet and kube-proxy on every node,
        /// kube-controller-manager and kube-scheduler on the hub; weft is
        /// installed by `kubectl apply -f manifests/weft.yaml` and the pods
        /// are a busybox Deployment (pods-per-node × nodes replicas).
        #[arg(long)]
        kubelet: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the lab's nodes and their state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every pod to every other pod, ICMP and TCP; non-zero on any failure.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a node (its network and mount namespaces).
    Exec {
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run kubectl against the lab's API server as admin.
    Kubectl {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop the lab and remove everything it created.
    Down,
    /// Benchmarks (programs that print a table and write JSON).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The fault matrix: faults injected into a running lab whose pods ping
    /// each other, each judged on recovery, time and packets lost; a table,
    /// and JSON. Non-zero when a fault is not recovered from, or loses
    /// packets where the data plane was not touched.
    Faults {
        /// Faults to run (comma-separated; default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<weft_lab::matrix::Fault>,
        /// Short outages (10 s instead of 60, ...), as CI runs them.
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON report.
        #[arg(long, default_value = "faults.json")]
        json: std::path::PathBuf,
    },
    /// Remove whatever any lab run left behind (namespaces, processes, files).
    Clean {
        /// Only the leftovers of this lab (default: every lab's).
        #[arg(long)]
        lab: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// What the weft CNI plugin adds to ADD and DEL, against bridge called directly.
    Cni {
        /// Interleaved ADD/DEL pairs per variant.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench-cni.json")]
        json: std::path::PathBuf,
    },
    /// Pod-to-pod TCP throughput per backend against the underlay alone.
    Dataplane {
        /// Backends to compare (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "vxlan,udp,host-gw")]
        backends: Vec<weft_lab::Backend>,
        /// Seconds per transfer.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Repetitions (interleaved).
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Parallel TCP streams (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        streams: Vec<u32>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench-dataplane.json")]
        json: std::path::PathBuf,
    },
    /// weftd's control plane over cluster sizes: sync time and its phases,
    /// add->route latency, memory, CPU, API bytes; an SVG of the curves
    /// next to the JSON.
    ControlPlane {
        /// Cluster sizes (the agent's node included), comma-separated;
        /// measured in one lab, the API server filled up between them.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "100,500,1000,2000,5000,10000"
        )]
        nodes: Vec<usize>,
        /// Nodes added one at a time at each size, for the latency figures.
        #[arg(long, default_value_t = 100)]
        adds: usize,
        /// Seconds of idleness over which CPU is measured, at each size.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// Another flannel-compatible agent binary in weftd's place (a
        /// flanneld you built, say), started as kube-flannel.yml's
        /// container starts flanneld.
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench-control-plane.json")]
        json: std::path::PathBuf,
    },
    /// weft on real nodes (kubelet, containerd, kube-proxy): apply to
    /// Ready, a Deployment to Running, a rolling update's packet loss, and
    /// each node's memory and CPU.
    RealNodes {
        /// Nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods of the Deployment.
        #[arg(long, default_value_t = 30)]
        pods: usize,
        /// Seconds of idleness over which CPU is measured.
        #[arg(long, default_value_t = 20)]
        idle_seconds: u64,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench-real-nodes.json")]
        json: std::path::PathBuf,
    },
    /// The control plane with flannel's etcd subnet manager, next to the
    /// Kubernetes source at the same sizes in the same run.
    Etcd {
        /// Cluster sizes (weftd's node included), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        nodes: Vec<usize>,
        /// Leases (and Nodes) added one at a time for the latency figures.
        #[arg(long, default_value_t = 200)]
        adds: usize,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench-etcd.json")]
        json: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("weft-lab: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Up {
            nodes,
            backend,
            pods_per_node,
            dual_stack,
            direct_routing,
            subnet_manager,
            kubelet,
            json,
        } => {
            watch_ctrl_c()?;
            let t0 = std::time::Instant::now();
            let lab = Lab::up(&LabConfig {
                name: cli.name.clone(),
                nodes,
                backend,
                weftd: true,
                verbose: true,
                dual_stack,
                direct_routing,
                subnet_manager,
                kubelet,
            })?;
            let mut lab = lab;
            if kubelet && pods_per_node > 0 {
                let replicas = nodes * pods_per_node;
                eprintln!(
                    "==> kubectl apply: Deployment {} with {replicas} replicas",
                    weft_lab::lab::WORKLOAD
                );
                if let Err(e) = lab.deploy_workload(replicas) {
                    lab.detach();
                    return Err(e.into());
                }
            }
            let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
            for n in nodes.iter().filter(|_| !kubelet) {
                for k in 1..=pods_per_node {
                    let pod = format!("{n}-pod-{k}");
                    eprintln!("==> creating {pod} through the node's conflist");
                    if let Err(e) = lab.add_pod(n, &pod) {
                        // The lab is whole; leave it up to look at.
                        lab.detach();
                        return Err(e.into());
                    }
                }
            }
            eprintln!("==> up in {:.1} s", t0.elapsed().as_secs_f64());
            print_status(&lab, json)?;
            lab.detach();
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let lab = Lab::open(&cli.name)?;
            print_status(&lab, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { json } => {
            let lab = Lab::open(&cli.name)?;
            if !lab.state.real_nodes && lab.state.pods.len() < 2 {
                bail!(
                    "lab {} has fewer than 2 pods: `weft-lab up --pods-per-node 2`",
                    cli.name
                );
            }
            let results = if lab.state.real_nodes {
                lab.real_connectivity()?
            } else {
                lab.connectivity()?
            };
            let failed: Vec<&weft_lab::check::PairResult> =
                results.iter().filter(|r| !r.ok()).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                println!(
                    "{:<18} {:<18} {:<14} {:<5} TCP",
                    "FROM", "TO", "TO IP", "ICMP"
                );
                let mark = |b: bool| if b { "ok" } else { "FAIL" };
                for r in &results {
                    println!(
                        "{:<18} {:<18} {:<14} {:<5} {}",
                        r.from,
                        r.to,
                        r.to_ip,
                        mark(r.icmp),
                        mark(r.tcp)
                    );
                    if let Some(e) = &r.tcp_error {
                        println!("  iperf3 {e}");
                    }
                }
                println!("{} pairs, {} failed", results.len(), failed.len());
            }
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Exec { node, command } => {
            let lab = Lab::open(&cli.name)?;
            let mut c = lab.node_command(&node, &command[0])?;
            c.args(&command[1..]);
            let status = c
                .status()
                .with_context(|| format!("running {:?} on {node}", command))?;
            Ok(exit_code(status))
        }
        Cmd::Kubectl { args } => {
            let lab = Lab::open(&cli.name)?;
            let status = lab
                .kubectl()
                .args(&args)
                .status()
                .context("running kubectl")?;
            Ok(exit_code(status))
        }
        Cmd::Down => {
            let lab = Lab::open(&cli.name)?;
            let removed = lab::teardown(lab.name());
            eprintln!(
                "==> lab {} is down: stopped {} processes, removed {} namespaces",
                cli.name,
                removed.processes.len(),
                removed.namespaces.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::RealNodes {
            nodes,
            pods,
            idle_seconds,
            json,
        }) => {
            watch_ctrl_c()?;
            let name = if cli.name == "default" {
                "bench-real".to_string()
            } else {
                cli.name.clone()
            };
            let report = weft_lab::bench_real::run(
                &name,
                nodes,
                pods,
                std::time::Duration::from_secs(idle_seconds),
            )?;
            report.print_table(&mut std::io::stdout())?;
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("==> JSON written to {}", json.display());
            let svg = weft_lab::plot::svg_next_to(&json);
            report.plot(&svg)?;
            eprintln!("==> picture written to {}", svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Cni { runs, json }) => {
            watch_ctrl_c()?;
            let name = if cli.name == "default" {
                "bench-cni".to_string()
            } else {
                cli.name.clone()
            };
            let report = weft_lab::bench_cni::run(&name, runs)?;
            report.print_table(&mut std::io::stdout())?;
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("==> JSON written to {}", json.display());
            let svg = weft_lab::plot::svg_next_to(&json);
            report.plot(&svg)?;
            eprintln!("==> picture written to {}", svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Dataplane {
            backends,
            seconds,
            reps,
            streams,
            json,
        }) => {
            watch_ctrl_c()?;
            let name = if cli.name == "default" {
                "bench-dp".to_string()
            } else {
                cli.name.clone()
            };
            let result = weft_lab::bench_dataplane::run(&name, &backends, seconds, reps, &streams);
            for b in &backends {
                lab::teardown(&format!("{name}-{}", b.short()));
            }
            let report = result?;
            report.print_table(&mut std::io::stdout())?;
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("==> JSON written to {}", json.display());
            let svg = weft_lab::plot::svg_next_to(&json);
            report.plot(&svg)?;
            eprintln!("==> picture written to {}", svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::ControlPlane {
            nodes,
            adds,
            idle_seconds,
            agent,
            json,
        }) => {
            watch_ctrl_c()?;
            let bench = weft_lab::bench::ControlPlaneBench {
                sizes: nodes,
                adds,
                idle: std::time::Duration::from_secs(idle_seconds),
                agent,
            };
            let name = if cli.name == "default" {
                "bench-cp".to_string()
            } else {
                cli.name.clone()
            };
            let log = json.with_extension("agent.log");
            let series = bench.run(&name, &log)?;
            eprintln!("==> the agent's log (last size) kept as {}", log.display());
            series.print_table(&mut std::io::stdout())?;
            std::fs::write(&json, serde_json::to_string_pretty(&series)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("==> JSON written to {}", json.display());
            let svg = weft_lab::plot::svg_next_to(&json);
            series.plot(&svg)?;
            eprintln!("==> picture written to {}", svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Etcd { nodes, adds, json }) => {
            watch_ctrl_c()?;
            let base = if cli.name == "default" {
                "bench-etcd".to_string()
            } else {
                cli.name.clone()
            };
            let mut runs = Vec::new();
            for n in nodes {
                let etcd =
                    weft_lab::bench::EtcdPlaneBench { nodes: n, adds }.run(&format!("{base}-e"))?;
                lab::teardown(&format!("{base}-e"));
                let kube = weft_lab::bench::ControlPlaneBench {
                    sizes: vec![n],
                    adds,
                    idle: std::time::Duration::from_secs(1),
                    agent: None,
                };
                let log = json.with_extension(format!("{n}.weftd.log"));
                let kube = kube.run(&format!("{base}-k"), &log)?.points.remove(0);
                runs.push((etcd, kube));
            }
            weft_lab::bench::print_comparison(&mut std::io::stdout(), &runs)?;
            let out: Vec<serde_json::Value> = runs
                .iter()
                .map(|(e, k)| serde_json::json!({"etcd": e, "kubernetes": k}))
                .collect();
            std::fs::write(&json, serde_json::to_string_pretty(&out)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("==> JSON written to {}", json.display());
            let svg = weft_lab::plot::svg_next_to(&json);
            weft_lab::bench::plot_comparison(&svg, &runs)?;
            eprintln!("==> picture written to {}", svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Faults { only, quick, json } => {
            use weft_lab::matrix::{self, Durations, Fault, Matrix};
            watch_ctrl_c()?;
            let faults = if only.is_empty() {
                Fault::ALL.to_vec()
            } else {
                only
            };
            let d = if quick {
                Durations::QUICK
            } else {
                Durations::FULL
            };
            let name = if cli.name == "default" {
                "faults".to_string()
            } else {
                cli.name.clone()
            };
            eprintln!("==> lab {name}: 3 nodes with a pod each, and a spare");
            let mut m = Matrix::up(&name)?;
            let mut rows = Vec::new();
            for f in faults {
                eprintln!("==> {}: {}", f.name(), f.describe(&d));
                let row = m.run(f, &d)?;
                eprint!("{}", matrix::table(std::slice::from_ref(&row)));
                rows.push(row);
            }
            print!("{}", matrix::table(&rows));
            let report = serde_json::json!({"durations": d, "faults": rows});
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("==> JSON written to {}", json.display());
            Ok(if rows.iter().all(matrix::Row::passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Clean { lab: only } => {
            let removed = match only {
                Some(name) => {
                    lab::validate_name(&name)?;
                    lab::teardown(&name)
                }
                None => lab::clean_all(),
            };
            if removed.is_empty() {
                println!("nothing to clean");
            }
            for p in &removed.processes {
                println!("stopped process {p}");
            }
            for n in &removed.namespaces {
                println!("removed namespace {n}");
            }
            for d in &removed.directories {
                println!("removed directory {}", d.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(status.code().map(|c| c as u8).unwrap_or(1))
}

/// Ctrl-C (or SIGTERM) during `up` stops it at its next step; `up` then
/// removes the partly built lab. The handlers are in place before this
/// returns.
fn watch_ctrl_c() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .context("installing the Ctrl-C handler")?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("weft-lab: interrupted, removing the partly built lab");
        lab::interrupt();
    });
    Ok(())
}

#[derive(serde::Serialize)]
struct NodeRow {
    node: String,
    underlay_ip: String,
    pod_cidr: Option<String>,
    /// The Node's Ready condition.
    ready: bool,
    /// The node's namespaces are held (the node exists).
    running: bool,
    /// weftd answers /readyz with 200.
    weftd_ready: bool,
    /// The VTEP MAC weftd published (backend-data).
    vtep_mac: Option<String>,
    /// The public IP weftd published.
    public_ip: Option<String>,
    netns: String,
}

#[derive(serde::Serialize)]
struct StatusView {
    name: String,
    backend: Backend,
    apiserver: String,
    admin_kubeconfig: String,
    node_kubeconfig: String,
    nodes: Vec<NodeRow>,
}

fn print_status(lab: &Lab, json: bool) -> anyhow::Result<()> {
    let api_nodes = lab
        .api_nodes()
        .context("listing Nodes from the lab's API server")?;
    let rows: Vec<NodeRow> = lab
        .state
        .nodes
        .iter()
        .map(|n| {
            let api = api_nodes
                .iter()
                .find(|a| a.metadata.name.as_deref() == Some(&n.name));
            let ann = |k: &str| api.and_then(|a| a.metadata.annotations.as_ref()?.get(k).cloned());
            let vtep_mac = ann("flannel.alpha.coreos.com/backend-data").and_then(|d| {
                serde_json::from_str::<serde_json::Value>(&d).ok()?["VtepMAC"]
                    .as_str()
                    .map(String::from)
            });
            NodeRow {
                node: n.name.clone(),
                underlay_ip: n.underlay_ip.to_string(),
                pod_cidr: api.and_then(|a| a.spec.as_ref()?.pod_cidr.clone()),
                ready: api.is_some_and(cluster::is_ready),
                running: weft_lab::procs::alive(n.holder_pid as i32),
                weftd_ready: lab.weftd_ready(&n.name).unwrap_or(false),
                vtep_mac,
                public_ip: ann("flannel.alpha.coreos.com/public-ip"),
                netns: n.netns.clone(),
            }
        })
        .collect();
    let view = StatusView {
        name: lab.name().to_string(),
        backend: lab.state.backend,
        apiserver: lab.state.apiserver_url.clone(),
        admin_kubeconfig: lab.admin_kubeconfig().display().to_string(),
        node_kubeconfig: lab.node_kubeconfig().display().to_string(),
        nodes: rows,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!(
        "lab {}  backend {}  apiserver {}",
        view.name,
        view.backend.type_name(),
        view.apiserver
    );
    println!("admin kubeconfig: {}", view.admin_kubeconfig);
    println!();
    println!(
        "{:<10} {:<16} {:<16} {:<6} {:<6} {:<18} PUBLIC IP",
        "NODE", "UNDERLAY IP", "POD CIDR", "READY", "WEFTD", "VTEP MAC"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for r in &view.nodes {
        println!(
            "{:<10} {:<16} {:<16} {:<6} {:<6} {:<18} {}",
            r.node,
            r.underlay_ip,
            r.pod_cidr.as_deref().unwrap_or("-"),
            yes(r.ready && r.running),
            if r.weftd_ready { "ready" } else { "no" },
            r.vtep_mac.as_deref().unwrap_or("-"),
            r.public_ip.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}
