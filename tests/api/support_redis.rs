//! A real `redis-server` on loopback for tests, started per test on a free port
//! with nothing persisted, and killed when dropped.
//!
//! The server program is `redis-server` unless `DRISC_TEST_REDIS_SERVER` names
//! another (`valkey-server`: scripts/test runs the Redis modules a second time
//! on Valkey that way); the CLI that joins a cluster follows it (`valkey-cli`),
//! or `DRISC_TEST_REDIS_CLI` names it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use redis::IntoConnectionInfo;
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The server program the tests start: `DRISC_TEST_REDIS_SERVER`, else
/// `redis-server`. Panics when it does not run: tests that need it never skip.
pub fn server_binary() -> String {
    static CHOSEN: OnceLock<String> = OnceLock::new();
    CHOSEN.get_or_init(find_server).clone()
}

fn find_server() -> String {
    installed("DRISC_TEST_REDIS_SERVER", || "redis-server".into())
}

/// The program named by `var`, else `default()`; panics unless it runs (`--version`).
fn installed(var: &str, default: impl FnOnce() -> String) -> String {
    let name = std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(default);
    let found = Command::new(&name)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is not installed: run scripts/test-deps (CI={}); tests that need Redis never skip",
        std::env::var("CI").unwrap_or_default()
    );
    name
}

/// The CLI of the same server (`redis-cli --cluster create` joins a cluster):
/// `DRISC_TEST_REDIS_CLI`, else the server's name with `-server` made `-cli`
/// (`valkey-server` gives `valkey-cli`, a path keeps its directory).
pub fn cli_binary() -> String {
    static CHOSEN: OnceLock<String> = OnceLock::new();
    CHOSEN.get_or_init(find_cli).clone()
}

fn find_cli() -> String {
    installed("DRISC_TEST_REDIS_CLI", || {
        match server_binary().strip_suffix("-server") {
            Some(stem) => format!("{stem}-cli"),
            None => "redis-cli".into(),
        }
    })
}

/// A client for the tests' own commands that does not name its library on
/// connecting: Redis 7.2+ and Valkey count each `CLIENT SETINFO` in `INFO
/// commandstats`, which would add the test's own calls to the server's it
/// counts (Redis 7.0 refuses the command, so counts nothing).
fn quiet_client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let quiet = info.redis_settings().clone().set_skip_set_lib_name();
    redis::Client::open(info.set_redis_settings(quiet))
}

/// The longest any of the tests' own commands may wait for its reply (the
/// longest they send, MIGRATE, gives up after 5 s). Without it a command sent to
/// a node that is stopped (SIGSTOP) or stuck would wait for ever, and the suite
/// with it; with it the test fails and says which command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection for the tests' own commands on `url`: `connect` bounds the
/// connection (and its handshake), [`REPLY_TIMEOUT`] every reply.
fn connect(url: &str, connect: Duration) -> redis::RedisResult<redis::Connection> {
    let conn = quiet_client(url)?.get_connection_with_timeout(connect)?;
    conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
    conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(conn)
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut server = RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}/"),
            child: None,
            _dir: dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(server_binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn ping(&self) -> bool {
        answers(&self.url, Duration::from_millis(200))
    }

    /// Runs a command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = connect(&self.url, Duration::from_secs(5)).unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).unwrap()
    }

    /// Kills the server (all data is lost) and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster on loopback: three masters (and, from [`RedisCluster::start`], a
/// replica of each), each a `redis-server --cluster-enabled yes` in a temporary directory,
/// joined by `redis-cli --cluster create`; killed when dropped.
pub struct RedisCluster {
    /// One per node, masters first as `redis-cli` was given them.
    nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

struct ClusterNode {
    port: u16,
    child: Option<Child>,
    /// Stopped by a signal ([`RedisCluster::signal`]): alive, but asked nothing.
    frozen: bool,
}

impl ClusterNode {
    /// Starts a node on free ports and waits until it answers. A port found free
    /// may be taken by a parallel test before the node binds it, and the node
    /// then exits: it is started again on other ports (a few times at most).
    fn spawn(dir: &std::path::Path) -> ClusterNode {
        for _ in 0..5 {
            let (port, bus) = (free_port(), free_port());
            let mut child = Command::new(server_binary())
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if ping(port) {
                    return ClusterNode {
                        port,
                        child: Some(child),
                        frozen: false,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("timed out waiting for a cluster node to answer (5 tries on fresh ports)");
    }
}

fn ping(port: u16) -> bool {
    answers(&format!("redis://127.0.0.1:{port}/"), Duration::from_millis(500))
}

/// Whether the server at `url` answers a PING within `timeout`.
fn answers(url: &str, timeout: Duration) -> bool {
    connect(url, timeout)
        .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
        .is_ok()
}

/// How long a node may be silent before the others count it failed: short, so
/// a killed master's replica takes over within a few seconds.
const NODE_TIMEOUT_MS: &str = "1000";

impl RedisCluster {
    /// Starts six nodes and joins them: three masters, a replica each.
    pub fn start() -> RedisCluster {
        let cluster = Self::create(1);
        cluster.wait_until_replicas_synced();
        cluster
    }

    /// Three masters and no replica: for the tests that never fail a node over.
    /// Much quicker to start than [`RedisCluster::start`] (no replica to sync), so
    /// a suite that starts one per test (the store conformance suite) takes
    /// seconds less per test.
    pub fn start_masters() -> RedisCluster {
        Self::create(0)
    }

    /// Starts three masters and `replicas` replicas of each, joined, every slot served.
    fn create(replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<ClusterNode> = (0..3 * (1 + replicas))
            .map(|_| ClusterNode::spawn(dir.path()))
            .collect();
        let cluster = RedisCluster { nodes, _dir: dir };
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new(cli_binary())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok();
        cluster
    }

    /// The seed URLs a client is given.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.frozen)
            .map(|n| n.port)
    }

    /// Runs a command on the node on `port`.
    pub fn node_cmd<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> redis::RedisResult<T> {
        let mut conn = connect(&format!("redis://127.0.0.1:{port}/"), Duration::from_millis(500))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// Runs a command on every live master.
    pub fn on_masters(&self, args: &[&str]) {
        for port in self.masters() {
            let _: redis::Value = self.node_cmd(port, args).unwrap();
        }
    }

    /// The ports of the live masters, as the cluster sees them now.
    pub fn masters(&self) -> Vec<u16> {
        let Some(port) = self.live_ports().next() else {
            return Vec::new();
        };
        let nodes: String = self.node_cmd(port, &["CLUSTER", "NODES"]).unwrap_or_default();
        nodes
            .lines()
            .filter(|l| {
                let flags = l.split(' ').nth(2).unwrap_or("");
                flags.contains("master") && !flags.contains("fail")
            })
            .filter_map(|l| l.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok())
            .filter(|p| self.live_ports().any(|live| live == *p))
            .collect()
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().unwrap();
        let slot: i64 = self.node_cmd(port, &["CLUSTER", "KEYSLOT", key]).unwrap();
        let ranges: redis::Value = self.node_cmd(port, &["CLUSTER", "SLOTS"]).unwrap();
        let redis::Value::Array(ranges) = ranges else {
            panic!("CLUSTER SLOTS: {ranges:?}")
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else { continue };
            let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to)), Some(redis::Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            if (*from..=*to).contains(&slot)
                && let Some(redis::Value::Int(p)) = master.get(1)
            {
                return *p as u16;
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// SIGKILLs the node on `port` (its data is gone with it).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every live node says the cluster is ok, each slot served.
    /// Until every replica has loaded its master's data: `cluster_state:ok` comes
    /// before that, and a replica that never synced refuses to be promoted (its
    /// data's age is unknown), so a master killed too soon would never be replaced.
    fn wait_until_replicas_synced(&self) {
        wait_for("three replicas in sync with their masters", || {
            let synced = self
                .live_ports()
                .filter(|port| {
                    self.node_cmd::<String>(*port, &["INFO", "replication"])
                        .is_ok_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
                })
                .count();
            synced == 3
        });
    }

    pub fn wait_until_ok(&self) {
        wait_for("cluster_state:ok on every node", || {
            self.live_ports().all(|port| {
                self.node_cmd::<String>(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        });
    }
}

/// Polls `ready` every 50 ms, for 30 s at most.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs a command on the cluster node on `port` (what [`RedisCluster::node_cmd`]
/// does, without the cluster: for a thread that moves slots while the test plays).
pub fn cluster_node_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut conn = connect(&format!("redis://127.0.0.1:{port}/"), Duration::from_millis(500))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

/// One hash slot moving from one master to another by hand, the way
/// `redis-cli --cluster reshard` does it, in steps a test can interleave with
/// traffic: [`begin`](Self::begin) (IMPORTING on the target, MIGRATING on the
/// source), [`move_keys`](Self::move_keys) (MIGRATE a few keys at a time: until
/// every key is over, a command on the slot is redirected with ASK, or refused
/// with TRYAGAIN when its keys are split), [`finish`](Self::finish) (SETSLOT NODE
/// on every master: the source then answers MOVED).
#[derive(Debug, Clone)]
pub struct SlotMigration {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    from_id: String,
    to_id: String,
}

impl SlotMigration {
    pub fn new(slot: u16, from: u16, to: u16) -> SlotMigration {
        let id = |port: u16| -> String {
            cluster_node_cmd(port, &["CLUSTER", "MYID"]).unwrap_or_else(|e| panic!("CLUSTER MYID on {port}: {e}"))
        };
        SlotMigration {
            slot,
            from,
            to,
            from_id: id(from),
            to_id: id(to),
        }
    }

    /// The target first, so that no ASK can point at a node not ready for it.
    pub fn begin(&self) {
        let slot = self.slot.to_string();
        let _: () = cluster_node_cmd(self.to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &self.from_id])
            .unwrap_or_else(|e| panic!("SETSLOT {slot} IMPORTING: {e}"));
        let _: () = cluster_node_cmd(self.from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &self.to_id])
            .unwrap_or_else(|e| panic!("SETSLOT {slot} MIGRATING: {e}"));
    }

    /// Moves at most `count` of the slot's keys still on the source; returns how
    /// many moved (0: none is left).
    pub fn move_keys(&self, count: usize) -> usize {
        let slot = self.slot.to_string();
        let keys: Vec<String> = cluster_node_cmd(self.from, &["CLUSTER", "GETKEYSINSLOT", &slot, &count.to_string()])
            .unwrap_or_else(|e| panic!("GETKEYSINSLOT {slot}: {e}"));
        if keys.is_empty() {
            return 0;
        }
        let to = self.to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        // NOKEY: a key that expired between the listing and the move.
        let _: redis::Value = cluster_node_cmd(self.from, &args).unwrap_or_else(|e| panic!("MIGRATE {keys:?}: {e}"));
        keys.len()
    }

    /// Gives the slot to the target on every master in `masters` (the target
    /// first, then the source, as redis-cli does), once no key is left behind.
    pub fn finish(&self, masters: &[u16]) {
        // Bounded: no key can be added to the slot on the source meanwhile (a
        // write of a key it lacks is sent on with ASK).
        let left = (0..10_000).find(|_| self.move_keys(100) == 0);
        assert!(left.is_some(), "slot {}: keys kept coming on the source", self.slot);
        let slot = self.slot.to_string();
        let mut order = vec![self.to, self.from];
        order.extend(masters.iter().filter(|p| **p != self.to && **p != self.from));
        for port in order {
            let _: () = cluster_node_cmd(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &self.to_id])
                .unwrap_or_else(|e| panic!("SETSLOT {slot} NODE on {port}: {e}"));
        }
    }
}

/// How many error replies of each kind (`MOVED`, `ASK`, `TRYAGAIN`, ...) the node
/// on `port` has sent since its statistics were last reset (`INFO errorstats`).
pub fn error_replies(port: u16, kind: &str) -> u64 {
    let info: String = cluster_node_cmd(port, &["INFO", "errorstats"]).unwrap_or_default();
    let prefix = format!("errorstat_{kind}:count=");
    info.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|n| n.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

impl RedisCluster {
    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        let slot: i64 = self
            .node_cmd(port, &["CLUSTER", "KEYSLOT", key])
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"));
        u16::try_from(slot).expect("a slot is below 16384")
    }

    /// How many keys of `slot` the node on `port` holds.
    pub fn keys_in_slot(&self, port: u16, slot: u16) -> i64 {
        self.node_cmd(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
            .unwrap_or_else(|e| panic!("COUNTKEYSINSLOT {slot} on {port}: {e}"))
    }
}

impl RedisCluster {
    /// The port of the replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        let nodes: String = self.node_cmd(port, &["CLUSTER", "NODES"]).unwrap();
        let port_of = |line: &str| -> Option<u16> { line.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok() };
        let master_id = nodes
            .lines()
            .find(|l| port_of(l) == Some(master))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("no node on {master}: {nodes}"));
        nodes
            .lines()
            .find(|l| l.split(' ').nth(3) == Some(master_id))
            .and_then(port_of)
            .unwrap_or_else(|| panic!("no replica of {master}: {nodes}"))
    }
}

impl RedisCluster {
    /// Stops (`STOP`) or resumes (`CONT`) the node on `port`, as a machine
    /// starved of CPU would: it keeps its sockets open but answers nothing, so
    /// its peers fail it over once it has been silent past the node timeout.
    /// While stopped, it is left out of the nodes the helpers ask.
    pub fn signal(&mut self, port: u16, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        let pid = node.child.as_ref().expect("a live node").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {pid} failed");
        node.frozen = name == "STOP";
    }
}

/// The server the tests start is the one chosen: a Valkey pass that ran Redis
/// by mistake (or the reverse) would prove nothing about Valkey.
#[test]
fn the_chosen_server_is_the_one_answering() {
    let program = server_binary();
    let server = RedisServer::start();
    let info: String = server.cmd(&["INFO", "server"]);
    // Valkey names itself in INFO (and keeps `redis_version` for old clients);
    // Redis has no `server_name` field.
    let valkey = info.lines().any(|l| l.trim() == "server_name:valkey");
    assert_eq!(
        valkey,
        program.contains("valkey"),
        "{program} was chosen, and this answered INFO: {info}"
    );
}

impl RedisCluster {
    /// Cuts the replication link of the master on `master` (its replicas are
    /// dropped as clients), so that, with its replica stopped first, the
    /// writes that follow reach the master alone: nothing sent before the cut
    /// is left in a socket for the replica to read when it resumes.
    pub fn cut_replication(&self, master: u16) {
        let cut: i64 = self
            .node_cmd(master, &["CLIENT", "KILL", "TYPE", "replica"])
            .unwrap_or_else(|e| panic!("CLIENT KILL TYPE replica on {master}: {e}"));
        assert!(cut >= 1, "the master on {master} had no replica to cut");
    }

    /// Promotes the replica on `replica` at once, without its master's consent
    /// or the other masters' vote (`CLUSTER FAILOVER TAKEOVER`), and waits
    /// (bounded) until the cluster serves `key` from it.
    pub fn take_over(&self, replica: u16, key: &str) {
        let _: () = self
            .node_cmd(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"])
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER TAKEOVER on {replica}: {e}"));
        wait_for("the replica to serve the slot", || self.master_of(key) == replica);
    }

    /// Waits (bounded) until the node on `port` is a replica in sync with its master.
    pub fn wait_until_replica(&self, port: u16) {
        wait_for("the old master to rejoin as a replica", || {
            self.node_cmd::<String>(port, &["INFO", "replication"])
                .is_ok_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
        });
    }
}

impl RedisServer {
    /// Kills the server (`SIGKILL`: nothing saved on the way out) and starts it
    /// again on the same port, loading the snapshot its last `SAVE` wrote: the
    /// writes since then are lost, what came before is back.
    pub fn restart_from_snapshot(&mut self) {
        self.kill();
        self.spawn();
    }
}
