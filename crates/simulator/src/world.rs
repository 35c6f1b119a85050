//! The simulated cluster: nodes (their replica cores, membership table and
//! disk), the event queue on a virtual clock, faults, and the shell that
//! carries out the cores' actions as the node's fragment actor does.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster::peers::{self, PeerTable};
use cluster::{AckPolicy, HeartbeatConfig};
use offline_queue::remote::FragmentWire;
use offline_queue::replica::{
    SnapshotChunk, export_fragment_in, import_chunk, load_divergent, load_owner, log_divergent,
    store_owner,
};
use offline_queue::replica_core::{
    Action, Caller, ClusterSetup, Endpoint, Event, LocalRequest, ReplicaCore, Waiter,
};
use offline_queue::store::{RedbMailbox, WriteOp, apply_ops};
use offline_queue::{FragmentConfig, FragmentError, Push};
use proto::PhoneNumber;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router::{FragmentId, Islands, Placement};
use storage::Store;

use crate::checks::Checks;
use crate::net::{InFlight, Net, NetMsg};
use crate::users::{Reply, Target, Users};

/// The shape and length of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes, in islands of two (an even number).
    pub nodes: usize,
    /// Mailbox fragments.
    pub fragments: u16,
    /// Users; each sends to the next.
    pub users: usize,
    /// Of them, the first this many send to a group of every user
    /// instead (its home fails over, is cut off and merged like any
    /// fragment's data).
    pub group_senders: usize,
    /// Messages each user sends.
    pub messages: u64,
    /// Virtual milliseconds of faults.
    pub fault_ms: u64,
    /// Virtual milliseconds after healing for everything to settle.
    pub settle_ms: u64,
    /// Inject faults (off: a fault-free run, for the harness itself).
    pub faults: bool,
    /// Also cut single links one way (between two nodes that both still
    /// see the rest): it can split an island's partners while each sees a
    /// majority, and both serve the fragment at two epochs for a while.
    pub pair_cuts: bool,
    /// The chance that an owner dies 1–30 ms after it begins a copy to its
    /// partner (a take-over in the middle of a copy).
    pub mid_copy_crash: f64,
    /// The chance that a slow disk stalls instead: 3–8 s per commit,
    /// longer than a partner may leave a write unconfirmed (so the owner
    /// copies to it afresh while it still holds the writes).
    pub disk_stall: f64,
    /// Rows per copy chunk: small, so that a copy takes many messages and
    /// commits, and faults land in the middle of one.
    pub copy_chunk_rows: usize,
    /// Keep this many trace lines for a failure.
    pub trace_lines: usize,
    /// Trace every fragment message delivered between nodes, not only
    /// the lost ones (a long trace; for chasing one seed).
    pub trace_wire: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 4,
            fragments: 4,
            users: 6,
            group_senders: 0,
            messages: 30,
            fault_ms: 40_000,
            settle_ms: 90_000,
            faults: true,
            pair_cuts: true,
            mid_copy_crash: 0.1,
            copy_chunk_rows: 8,
            disk_stall: 0.25,
            trace_lines: 400,
            trace_wire: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub steps: u64,
    pub acked: u64,
    pub delivered: u64,
    pub faults: u64,
    pub virtual_ms: u64,
    /// Messages pushed a second time under another id (two owners
    /// overlapped); the client hides them by sender and client id.
    pub second_copies: u64,
    /// Messages that arrived after a later one of their sender because an
    /// owner acked them alone (divergent) before its partner took over.
    pub reordered_by_splits: u64,
}

/// A broken invariant, with the seed and the last steps.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at {} ms: {}",
            self.seed, self.at_ms, self.what
        )?;
        writeln!(f, "last steps:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

pub(crate) type Core = ReplicaCore<Target, Reply>;
type SimEvent = Event<Target, Reply>;
type SimAction = Action<Target, Reply>;

/// A write handed to a node's disk and not yet committed.
enum Write {
    Persist {
        fragment: FragmentId,
        generation: u64,
        tag: u64,
        ops: Vec<WriteOp>,
        divergent: bool,
    },
    Replica {
        fragment: FragmentId,
        from: String,
        rseq: u64,
        ops: Vec<WriteOp>,
    },
    Chunk {
        fragment: FragmentId,
        from: String,
        rseq: u64,
        first: bool,
        last: bool,
        chunk: SnapshotChunk,
    },
    ClearDivergent {
        fragment: FragmentId,
        upto: u64,
    },
}

pub(crate) struct Node {
    pub(crate) name: String,
    store: Store,
    pub(crate) alive: bool,
    /// Bumped at every crash: events for an older life are dropped.
    pub(crate) life: u64,
    frozen_until: Option<u64>,
    pub(crate) cores: Vec<Core>,
    table: Option<PeerTable>,
    heard: BTreeMap<usize, u64>,
    pending: VecDeque<Write>,
    commit_due: bool,
    /// Added to the virtual clock for this node's wall clock.
    clock_offset: i64,
    /// Commits take this long.
    disk_ms: (u64, u64),
    /// The next commit fails (the node exits).
    disk_fails: bool,
}

/// Things that happen at a time.
pub(crate) enum Ev {
    MembershipTick(usize, u64),
    FragmentTick(usize, u64),
    Sweep(usize, u64),
    Dial {
        from: usize,
        to: usize,
        life: u64,
    },
    /// A dialed link is authenticated (the lives of both ends when it was
    /// dialed).
    LinkUp {
        from: usize,
        to: usize,
        link: u64,
        lives: (u64, u64),
    },
    Deliver(InFlight),
    Commit(usize, u64),
    Core {
        node: usize,
        life: u64,
        fragment: FragmentId,
        event: SimEvent,
    },
    Request {
        node: usize,
        life: u64,
        fragment: FragmentId,
        request: LocalRequest<Target, Reply>,
    },
    Answer {
        reply: Reply,
        answer: offline_queue::replica_core::Answer,
    },
    Push {
        target: Target,
        push: Push,
    },
    Client(usize),
    Fault,
    Restart(usize),
    /// Kill a node (if no other is down).
    Crash(usize),
    /// Kill a node's host (if no other node is down): what it had sent
    /// and its peers had not yet received is lost with it.
    HostDies(usize),
    Thaw(usize),
    HealDirection(usize, usize),
    DiskNormal(usize),
    LinksNormal,
}

/// The whole simulated world.
pub(crate) struct World {
    pub(crate) seed: u64,
    pub(crate) now: u64,
    pub(crate) rng: StdRng,
    /// Draws for crashes in the middle of a copy, apart from `rng` so that
    /// adding them did not change the schedules of the other faults.
    copy_crash_rng: StdRng,
    /// Whether a slow disk stalls: its own stream, so that the other
    /// faults' schedules are those of runs without stalls.
    disk_stall_rng: StdRng,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_event: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) net: Net,
    pub(crate) users: Users,
    pub(crate) placement: Placement,
    islands: Islands,
    options: Options,
    base: Instant,
    pub(crate) checks: Checks,
    trace: VecDeque<String>,
    link_delay: (u64, u64),
    /// When the last message between a client and a node is due, per
    /// direction: a connection delivers in order.
    client_due: BTreeMap<(bool, usize, usize), u64>,
    faults_until: u64,
    pub(crate) steps: u64,
    faults: u64,
}

const HEARTBEAT: HeartbeatConfig = HeartbeatConfig {
    interval_ms: 200,
    down_after_ms: 1_000,
    max_redial_ms: 2_000,
};

impl Caller for Reply {
    fn gone(&self) -> bool {
        false
    }
}

/// Runs one seeded schedule.
pub fn run(seed: u64, options: &Options) -> Result<Summary, Failure> {
    let mut world = World::new(seed, options.clone()).map_err(|what| Failure {
        seed,
        at_ms: 0,
        what,
        trace: Vec::new(),
    })?;
    world.run().map_err(|what| world.failure(what))?;
    Ok(Summary {
        steps: world.steps,
        acked: world.users.acked(),
        delivered: world.users.delivered(),
        faults: world.faults,
        virtual_ms: world.now,
        second_copies: world.users.second_copies,
        reordered_by_splits: world.users.reordered_by_splits,
    })
}

impl World {
    fn new(seed: u64, options: Options) -> Result<Self, String> {
        let names: Vec<String> = (1..=options.nodes).map(|i| format!("n{i}")).collect();
        let pairs: Vec<[String; 2]> = names
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| [pair[0].clone(), pair[1].clone()])
            .collect();
        let islands = Islands::new(pairs);
        let placement = Placement::new(options.fragments).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for name in &names {
            let store = Store::in_memory(Default::default()).map_err(|e| e.to_string())?;
            nodes.push(Node {
                name: name.clone(),
                store,
                alive: false,
                life: 0,
                frozen_until: None,
                cores: Vec::new(),
                table: None,
                heard: BTreeMap::new(),
                pending: VecDeque::new(),
                commit_due: false,
                clock_offset: 0,
                disk_ms: (1, 4),
                disk_fails: false,
            });
        }
        let users = Users::new(
            options.users,
            options.group_senders,
            options.messages,
            &placement,
        );
        let mut world = Self {
            seed,
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            copy_crash_rng: StdRng::seed_from_u64(seed ^ 0x6d69_645f_636f_7079),
            disk_stall_rng: StdRng::seed_from_u64(seed ^ 0x6469_736b_5f73_746c),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            net: Net::default(),
            users,
            placement,
            islands,
            base: Instant::now(),
            checks: Checks::default(),
            trace: VecDeque::new(),
            link_delay: (1, 8),
            client_due: BTreeMap::new(),
            faults_until: options.fault_ms,
            options,
            steps: 0,
            faults: 0,
        };
        for n in 0..world.nodes.len() {
            world.start_node(n).map_err(|e| e.to_string())?;
        }
        for u in 0..world.users.len() {
            let at = world.rng.random_range(0..500);
            world.at(at, Ev::Client(u));
        }
        if world.options.faults {
            let at = world.rng.random_range(1_000..3_000);
            world.at(at, Ev::Fault);
        }
        Ok(world)
    }

    /// Schedules `ev` `delay` ms from now.
    pub(crate) fn at(&mut self, delay: u64, ev: Ev) {
        let id = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now + delay, id)));
        self.events.insert(id, ev);
    }

    pub(crate) fn note(&mut self, line: String) {
        if self.trace.len() == self.options.trace_lines {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>7} {line}", self.now));
    }

    fn failure(&self, what: String) -> Failure {
        Failure {
            seed: self.seed,
            at_ms: self.now,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    pub(crate) fn link_delay(&mut self) -> u64 {
        let (lo, hi) = self.link_delay;
        self.rng.random_range(lo..=hi)
    }

    /// A delay for a message between user `user` and node `node` (`up`:
    /// from the user), never due before the one sent before it.
    pub(crate) fn client_delay(&mut self, up: bool, user: usize, node: usize) -> u64 {
        let delay = self.link_delay();
        let last = self.client_due.entry((up, user, node)).or_insert(0);
        *last = (*last).max(self.now + delay);
        *last - self.now
    }

    fn run(&mut self) -> Result<(), String> {
        let end = self.options.fault_ms + self.options.settle_ms;
        let mut healed = false;
        let mut next_look = 0;
        while let Some(Reverse((time, id))) = self.queue.pop() {
            if time > end {
                break;
            }
            self.now = time;
            if !healed && self.now >= self.faults_until {
                healed = true;
                self.heal_all()?;
            }
            let Some(ev) = self.events.remove(&id) else {
                continue;
            };
            self.steps += 1;
            self.handle(ev)?;
            if healed && self.now >= next_look {
                next_look = self.now + 500;
                if self.settled()? {
                    break;
                }
            }
        }
        self.check_end()
    }

    /// Whether the healed cluster has nothing left to do: every send
    /// acknowledged and delivered, every node sees every other, nothing
    /// waits, every divergent log drained.
    fn settled(&self) -> Result<bool, String> {
        let all_up = self.nodes.iter().all(|n| {
            n.table
                .as_ref()
                .is_some_and(|t| t.up().count() + 1 == self.nodes.len())
        });
        let quiet = self.nodes.iter().all(|n| {
            n.alive && n.pending.is_empty() && n.cores.iter().all(|c| c.unanswered() == 0)
        });
        if !(self.users.all_done() && all_up && quiet) {
            return Ok(false);
        }
        for node in &self.nodes {
            for f in 0..self.options.fragments {
                if !load_divergent(&node.store, f)
                    .map_err(|e| e.to_string())?
                    .1
                    .is_empty()
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        // A frozen node does nothing until it thaws: its events wait.
        if let Some(node) = self.target_node(&ev)
            && let Some(until) = self.nodes[node].frozen_until
        {
            let delay = until.saturating_sub(self.now);
            self.at(delay, ev);
            return Ok(());
        }
        match ev {
            Ev::MembershipTick(n, life) => {
                if self.alive(n, life) {
                    let now = self.instant();
                    let actions = self.nodes[n]
                        .table
                        .as_mut()
                        .map(|t| t.tick(now))
                        .unwrap_or_default();
                    self.membership(n, actions)?;
                    self.at(HEARTBEAT.interval_ms, Ev::MembershipTick(n, life));
                }
            }
            Ev::FragmentTick(n, life) => {
                if self.alive(n, life) {
                    for f in 0..self.options.fragments {
                        let lately = self.lately(n);
                        self.step(n, f, Event::Tick { lately })?;
                    }
                    self.at(1_000, Ev::FragmentTick(n, life));
                }
            }
            Ev::Sweep(n, life) => {
                if self.alive(n, life) {
                    for f in 0..self.options.fragments {
                        self.step(n, f, Event::Sweep)?;
                    }
                    self.at(60_000, Ev::Sweep(n, life));
                }
            }
            Ev::Dial { from, to, life } => self.dial(from, to, life)?,
            Ev::LinkUp {
                from,
                to,
                link,
                lives,
            } => self.link_up(from, to, link, lives)?,
            Ev::Deliver(flight) => self.deliver(flight)?,
            Ev::Commit(n, life) => {
                if self.alive(n, life) {
                    self.nodes[n].commit_due = false;
                    self.commit(n)?;
                }
            }
            Ev::Core {
                node,
                life,
                fragment,
                event,
            } => {
                if self.alive(node, life) {
                    self.step(node, fragment, event)?;
                }
            }
            Ev::Request {
                node,
                life,
                fragment,
                request,
            } => {
                if self.alive(node, life) {
                    if let LocalRequest::Ack { ids, .. } = &request {
                        let line = format!(
                            "{} f{fragment} takes an ack of {} entries",
                            self.nodes[node].name,
                            ids.len()
                        );
                        self.note(line);
                    }
                    self.step(node, fragment, Event::Local(request))?;
                }
            }
            Ev::Answer { reply, answer } => self.client_answer(reply, answer)?,
            Ev::Push { target, push } => self.client_push(target, push)?,
            Ev::Client(u) => self.client_wake(u)?,
            Ev::Fault => self.fault()?,
            Ev::Restart(n) => {
                if !self.nodes[n].alive {
                    self.note(format!("{} restarts", self.nodes[n].name));
                    self.start_node(n).map_err(|e| e.to_string())?;
                    // Failures come in cascades: now and then the partner
                    // dies while it is copying the fragments to the node
                    // that just came back.
                    if self.now < self.faults_until && self.rng.random_bool(0.3) {
                        let partner = n ^ 1;
                        let after = self.rng.random_range(20..400);
                        self.at(after, Ev::Crash(partner));
                    }
                }
            }
            Ev::Crash(n) | Ev::HostDies(n) => {
                let down = self.nodes.iter().filter(|n| !n.alive).count();
                if self.nodes[n].alive && down == 0 && self.now < self.faults_until {
                    if matches!(ev, Ev::HostDies(_)) {
                        self.sever_links(n);
                    }
                    self.crash(n);
                    let after = self.rng.random_range(500..8_000);
                    self.at(after, Ev::Restart(n));
                }
            }
            Ev::Thaw(n) => {
                if self.nodes[n].frozen_until.is_some_and(|t| t <= self.now) {
                    self.nodes[n].frozen_until = None;
                    self.note(format!("{} thaws", self.nodes[n].name));
                }
            }
            Ev::HealDirection(a, b) => self.heal_direction(a, b),
            Ev::DiskNormal(n) => self.nodes[n].disk_ms = (1, 4),
            Ev::LinksNormal => self.link_delay = (1, 8),
        }
        Ok(())
    }

    /// The node an event runs on, if it runs on one.
    fn target_node(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::MembershipTick(n, _)
            | Ev::FragmentTick(n, _)
            | Ev::Sweep(n, _)
            | Ev::Commit(n, _) => Some(*n),
            Ev::Dial { from, .. } | Ev::LinkUp { from, .. } => Some(*from),
            Ev::Deliver(flight) => Some(flight.to),
            Ev::Core { node, .. } | Ev::Request { node, .. } => Some(*node),
            _ => None,
        }
    }

    /// Whether faults are still being injected.
    pub(crate) fn faulty(&self) -> bool {
        self.options.faults && self.now < self.faults_until
    }

    pub(crate) fn alive(&self, n: usize, life: u64) -> bool {
        self.nodes[n].alive && self.nodes[n].life == life
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    /// The node's wall clock (it may jump).
    fn wall(&self, n: usize) -> u64 {
        // Far from zero, so that a jump back never goes below it.
        let base: i64 = 1_800_000_000_000;
        (base + self.now as i64 + self.nodes[n].clock_offset) as u64
    }

    fn lately(&self, n: usize) -> BTreeSet<String> {
        let half = HEARTBEAT.down_after_ms / 2;
        let Some(table) = &self.nodes[n].table else {
            return BTreeSet::new();
        };
        table
            .up()
            .filter(|peer| {
                self.index_of(peer).is_some_and(|p| {
                    self.nodes[n]
                        .heard
                        .get(&p)
                        .is_some_and(|t| self.now.saturating_sub(*t) <= half)
                })
            })
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Starts (or restarts) node `n` from its disk.
    fn start_node(&mut self, n: usize) -> Result<(), FragmentError> {
        let addr = |i: usize| SocketAddr::from(([127, 0, 0, i as u8 + 1], 6222));
        let names: Vec<(String, SocketAddr)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.name.clone(), addr(i)))
            .collect();
        let now = self.instant();
        let wall = self.wall(n);
        let node = &mut self.nodes[n];
        node.alive = true;
        node.life += 1;
        node.pending.clear();
        node.commit_due = false;
        node.heard.clear();
        node.disk_fails = false;
        node.table = Some(PeerTable::new(
            &node.name,
            names.iter().map(|(name, a)| (name.as_str(), *a)),
            &HEARTBEAT,
            now,
        ));
        let mut cores = Vec::new();
        for f in 0..self.options.fragments {
            let setup = ClusterSetup {
                this: node.name.clone(),
                islands: self.islands.clone(),
                policy: AckPolicy::Replicated,
                nodes: self.options.nodes,
                relink_ms: HEARTBEAT.max_redial_ms + HEARTBEAT.down_after_ms,
                owner: load_owner(&node.store, f)?,
                up: BTreeSet::new(),
            };
            let reads = RedbMailbox::new(node.store.clone(), f);
            cores.push(Core::new(
                f,
                self.placement,
                FragmentConfig::default(),
                Some(setup),
                wall,
                &reads,
            )?);
        }
        node.cores = cores;
        let life = node.life;
        self.at(0, Ev::MembershipTick(n, life));
        self.at(1_000, Ev::FragmentTick(n, life));
        self.at(60_000, Ev::Sweep(n, life));
        for f in 0..self.options.fragments {
            self.at(
                0,
                Ev::Core {
                    node: n,
                    life,
                    fragment: f,
                    event: Event::Start,
                },
            );
        }
        Ok(())
    }

    /// Steps one core and carries out its actions, as the fragment actor does.
    pub(crate) fn step(&mut self, n: usize, f: FragmentId, event: SimEvent) -> Result<(), String> {
        if !self.nodes[n].alive {
            return Ok(());
        }
        let mut queue = VecDeque::new();
        queue.push_back(event);
        while let Some(event) = queue.pop_front() {
            let wall = self.wall(n);
            let reads = RedbMailbox::new(self.nodes[n].store.clone(), f);
            let actions = self.nodes[n].cores[usize::from(f)]
                .step(wall, event, &reads)
                .map_err(|e| format!("{} fragment {f}: core failed: {e}", self.nodes[n].name))?;
            let mut actions = VecDeque::from(actions);
            while let Some(action) = actions.pop_front() {
                if let Some(event) = self.perform(n, f, action)? {
                    let reads = RedbMailbox::new(self.nodes[n].store.clone(), f);
                    let wall = self.wall(n);
                    let more = self.nodes[n].cores[usize::from(f)]
                        .step(wall, event, &reads)
                        .map_err(|e| {
                            format!("{} fragment {f}: core failed: {e}", self.nodes[n].name)
                        })?;
                    for action in more.into_iter().rev() {
                        actions.push_front(action);
                    }
                }
                if !self.nodes[n].alive {
                    return Ok(());
                }
            }
        }
        self.checks.owners(self, f)
    }

    fn perform(
        &mut self,
        n: usize,
        f: FragmentId,
        action: SimAction,
    ) -> Result<Option<SimEvent>, String> {
        let life = self.nodes[n].life;
        match action {
            Action::Answer { to, answer } => self.answer(n, to, answer),
            Action::Deliver { endpoint, push } => {
                if let Push::Entries(entries) = &push {
                    let ids: Vec<String> = entries.iter().map(|e| format!("{:#x}", e.id)).collect();
                    self.note(format!(
                        "{} f{f} -> user {}: push [{}]",
                        self.nodes[n].name,
                        endpoint.target.user,
                        ids.join(" ")
                    ));
                }
                let delay = self.client_delay(false, endpoint.target.user, n);
                self.at(
                    delay,
                    Ev::Push {
                        target: endpoint.target,
                        push,
                    },
                );
            }
            Action::Send { to, wire } => {
                if matches!(
                    wire,
                    FragmentWire::Detach { .. }
                        | FragmentWire::Replaced { .. }
                        | FragmentWire::Owner { .. }
                        | FragmentWire::AttachAt { .. }
                        | FragmentWire::Merge { .. }
                        | FragmentWire::MergeDone { .. }
                        | FragmentWire::Snapshot { .. }
                        | FragmentWire::SnapshotWithAccounts { .. }
                        | FragmentWire::Push { .. }
                ) {
                    let line = match &wire {
                        FragmentWire::Owner { owner, reply } => {
                            format!("owner {}@{} reply={reply}", owner.node, owner.epoch)
                        }
                        FragmentWire::Push {
                            entries,
                            session_id,
                            ..
                        } => {
                            let ids: Vec<String> =
                                entries.iter().map(|e| format!("{:#x}", e.id)).collect();
                            format!("push [{}] to session {session_id}", ids.join(" "))
                        }
                        other => other.kind().to_owned(),
                    };
                    self.note(format!("{} f{f} -> {to}: {line}", self.nodes[n].name));
                }
                let copy_begins = matches!(
                    wire,
                    FragmentWire::Snapshot {
                        first: true,
                        last: false,
                        ..
                    } | FragmentWire::SnapshotWithAccounts {
                        first: true,
                        last: false,
                        ..
                    }
                );
                // Now and then the owner dies while its partner is half way
                // through a copy (the partner's first chunk erases what it
                // held; it must not take over from the rest).
                if copy_begins
                    && self.now < self.faults_until
                    && self.copy_crash_rng.random_bool(self.options.mid_copy_crash)
                {
                    let after = self.copy_crash_rng.random_range(1..30);
                    // Half the time the host goes too, and the chunks still
                    // on their way with it.
                    if self.copy_crash_rng.random_bool(0.5) {
                        self.at(after, Ev::HostDies(n));
                    } else {
                        self.at(after, Ev::Crash(n));
                    }
                }
                if let Some(to) = self.index_of(&to) {
                    self.send(n, to, NetMsg::Fragment { fragment: f, wire });
                }
            }
            Action::Persist {
                generation,
                tag,
                ops,
                divergent,
            } => {
                if divergent {
                    self.checks.written_alone(&ops);
                }
                for op in &ops {
                    if let WriteOp::PutMessage {
                        id,
                        client_msg_id,
                        sender,
                        recipient,
                        ..
                    } = op
                    {
                        let line = format!(
                            "{} f{f} stores {sender}'s message {client_msg_id} to {recipient} as {id:#x}{}",
                            self.nodes[n].name,
                            if divergent { " (alone)" } else { "" }
                        );
                        self.note(line);
                    }
                    if let WriteOp::LogGroup {
                        position,
                        dedupe: Some((sender, client_msg_id)),
                        ..
                    } = op
                    {
                        let line = format!(
                            "{} f{f} logs {sender}'s group message {client_msg_id} at {position:#x}{}",
                            self.nodes[n].name,
                            if divergent { " (alone)" } else { "" }
                        );
                        self.note(line);
                    }
                    if let WriteOp::GroupGap { from, to, .. } = op {
                        let line = format!(
                            "{} f{f} records a fan-out gap ({from:#x}, {to:#x}]",
                            self.nodes[n].name
                        );
                        self.note(line);
                    }
                    if let Some((through, entries)) = group_entries(op) {
                        let owners: Vec<String> = entries
                            .iter()
                            .map(|(owner, id)| format!("{owner}:{id:#x}"))
                            .collect();
                        let line = format!(
                            "{} f{f} stores group items through {through:#x} [{}]{}",
                            self.nodes[n].name,
                            owners.join(" "),
                            if divergent { " (alone)" } else { "" }
                        );
                        self.note(line);
                    }
                    if let WriteOp::Delete { owner, ids } = op {
                        let ids: Vec<String> = ids.iter().map(|i| format!("{i:#x}")).collect();
                        let line = format!(
                            "{} f{f} deletes {owner}'s [{}]",
                            self.nodes[n].name,
                            ids.join(" ")
                        );
                        self.note(line);
                    }
                }
                self.hand_to_disk(
                    n,
                    Write::Persist {
                        fragment: f,
                        generation,
                        tag,
                        ops,
                        divergent,
                    },
                )
            }
            Action::ApplyReplica { from, rseq, ops } => self.hand_to_disk(
                n,
                Write::Replica {
                    fragment: f,
                    from,
                    rseq,
                    ops,
                },
            ),
            Action::ImportChunk {
                from,
                rseq,
                first,
                last,
                chunk,
            } => self.hand_to_disk(
                n,
                Write::Chunk {
                    fragment: f,
                    from,
                    rseq,
                    first,
                    last,
                    chunk,
                },
            ),
            Action::ClearDivergent { upto } => {
                self.hand_to_disk(n, Write::ClearDivergent { fragment: f, upto })
            }
            Action::SaveOwner(owner) => {
                self.note(format!(
                    "{} fragment {f}: owner {} epoch {}",
                    self.nodes[n].name, owner.node, owner.epoch
                ));
                self.write_now(n, |txn| store_owner(txn, f, &owner))?;
            }
            Action::LogDivergent(ops) => {
                self.checks.written_alone(&ops);
                self.write_now(n, |txn| log_divergent(txn, f, &ops))?;
            }
            Action::Flush => {
                if !self.flush(n)? {
                    return Ok(None);
                }
                return Ok(Some(Event::Flushed));
            }
            Action::TakeSnapshot => {
                if !self.flush(n)? {
                    return Ok(None);
                }
                let store = &self.nodes[n].store;
                let upto = load_divergent(store, f).map_err(|e| e.to_string())?.0;
                let chunks = export_fragment_in(store, f, self.options.copy_chunk_rows)
                    .map_err(|e| e.to_string())?;
                return Ok(Some(Event::Snapshot {
                    chunks,
                    divergent_upto: upto,
                }));
            }
            Action::ApplyMerge {
                from,
                upto,
                ops,
                touched,
                accounts,
                last,
            } => {
                for op in &ops {
                    if let WriteOp::Delete { owner, ids } = op {
                        let ids: Vec<String> = ids.iter().map(|i| format!("{i:#x}")).collect();
                        let line = format!(
                            "{} f{f} merge from {from} deletes {owner}'s [{}]",
                            self.nodes[n].name,
                            ids.join(" ")
                        );
                        self.note(line);
                    }
                    if let WriteOp::PutMessage {
                        id, client_msg_id, ..
                    } = op
                    {
                        let line = format!(
                            "{} f{f} merge from {from} stores message {client_msg_id} as {id:#x}",
                            self.nodes[n].name
                        );
                        self.note(line);
                    }
                    if let Some((through, entries)) = group_entries(op) {
                        let ids: Vec<String> =
                            entries.iter().map(|(_, id)| format!("{id:#x}")).collect();
                        let line = format!(
                            "{} f{f} merge from {from} stores group items through {through:#x} [{}]",
                            self.nodes[n].name,
                            ids.join(" ")
                        );
                        self.note(line);
                    }
                    if let WriteOp::GroupGapFilled { positions, .. } = op {
                        let line = format!(
                            "{} f{f} merge from {from} fills gaps at {positions:x?}",
                            self.nodes[n].name
                        );
                        self.note(line);
                    }
                }
                self.checks.stored_ops(self.seed, &ops)?;
                if !self.write_now(n, |txn| apply_ops(txn, f, &ops))? {
                    return Ok(None);
                }
                return Ok(Some(Event::Merged {
                    from,
                    upto,
                    touched,
                    accounts,
                    last,
                }));
            }
            Action::ReceiptElsewhere {
                fragment,
                request,
                waiter,
            } => {
                let reply = match waiter {
                    None => None,
                    Some(Waiter::Local(reply)) => Some(reply),
                    Some(Waiter::Remote { node, req }) => Some(Reply::Remote {
                        node,
                        req,
                        fragment: f,
                    }),
                };
                self.at(
                    0,
                    Ev::Request {
                        node: n,
                        life,
                        fragment,
                        request: LocalRequest::StoreReceipt { request, reply },
                    },
                );
            }
            Action::GroupElsewhere { fragment, note } => self.at(
                0,
                Ev::Request {
                    node: n,
                    life,
                    fragment,
                    request: LocalRequest::Note(note),
                },
            ),
            Action::DeleteAckedElsewhere {
                fragment,
                owner,
                ids,
            } => self.at(
                0,
                Ev::Request {
                    node: n,
                    life,
                    fragment,
                    request: LocalRequest::DeleteAcked { owner, ids },
                },
            ),
        }
        Ok(None)
    }

    /// An answer to a caller on node `n`: a client, or a request of another
    /// node passed on to this fragment (answered over the link).
    fn answer(&mut self, n: usize, to: Reply, answer: offline_queue::replica_core::Answer) {
        match to {
            Reply::Remote {
                node,
                req,
                fragment,
            } => {
                let result = match answer {
                    offline_queue::replica_core::Answer::Stored(result) => result,
                    _ => Err(FragmentError::Unavailable(fragment)),
                };
                if let Some(to) = self.index_of(&node) {
                    let wire = FragmentWire::AppendDone { req, result };
                    self.send(n, to, NetMsg::Fragment { fragment, wire });
                }
            }
            Reply::Send { user, .. }
            | Reply::Attach { user, .. }
            | Reply::CreateGroup { user, .. }
            | Reply::SendGroup { user, .. } => {
                let delay = self.client_delay(false, user, n);
                self.at(delay, Ev::Answer { reply: to, answer });
            }
        }
    }

    pub(crate) fn send(&mut self, from: usize, to: usize, msg: NetMsg) {
        let delay = self.link_delay();
        if let Some((due, flight)) = self.net.send(self.now, delay, from, to, msg) {
            let delay = due - self.now;
            self.at(delay, Ev::Deliver(flight));
        }
    }

    fn deliver(&mut self, flight: InFlight) -> Result<(), String> {
        let InFlight {
            from,
            to,
            link,
            msg,
        } = flight;
        let severed = self.net.severed.contains(&link) && !matches!(msg, NetMsg::Closed);
        if !self.nodes[to].alive || self.net.link(to, from) != Some(link) || severed {
            if let NetMsg::Fragment { fragment, wire } = &msg {
                self.note(format!(
                    "{} f{fragment} -> {}: {} lost with link {link}",
                    self.nodes[from].name,
                    self.nodes[to].name,
                    wire.kind()
                ));
            }
            return Ok(());
        }
        let peer = self.nodes[from].name.clone();
        let now = self.instant();
        match msg {
            NetMsg::Ping | NetMsg::Pong => {
                if matches!(msg, NetMsg::Ping) {
                    self.send(to, from, NetMsg::Pong);
                }
                self.nodes[to].heard.insert(from, self.now);
                let actions = self
                    .table(to)
                    .map(|t| t.heard(&peer, now))
                    .unwrap_or_default();
                self.membership(to, actions)?;
            }
            NetMsg::Hello => {
                self.nodes[to].heard.insert(from, self.now);
                let actions = self
                    .table(to)
                    .map(|t| t.layout(&peer, true, now))
                    .unwrap_or_default();
                self.membership(to, actions)?;
            }
            NetMsg::Closed => self.link_closed(to, from, link)?,
            NetMsg::Fragment { fragment, wire } => {
                if self.options.trace_wire {
                    let (from, to) = (&self.nodes[from].name, &self.nodes[to].name);
                    let detail = match &wire {
                        FragmentWire::FanOut { fanout, .. } => format!(
                            " after {:#x} through {:#x} items {:x?}",
                            fanout.after,
                            fanout.through,
                            fanout
                                .items
                                .iter()
                                .map(|i| (i.position, i.recipients.len()))
                                .collect::<Vec<_>>()
                        ),
                        _ => String::new(),
                    };
                    self.note(format!(
                        "{from} f{fragment} => {to}: {}{detail}",
                        wire.kind()
                    ));
                }
                self.step(to, fragment, Event::Peer { from: peer, wire })?;
            }
        }
        Ok(())
    }

    fn table(&mut self, n: usize) -> Option<&mut PeerTable> {
        self.nodes[n].table.as_mut()
    }

    /// Carries out membership actions of node `n`.
    fn membership(&mut self, n: usize, actions: Vec<peers::Action>) -> Result<(), String> {
        for action in actions {
            match action {
                peers::Action::Dial { name, .. } => {
                    if let Some(to) = self.index_of(&name) {
                        let delay = self.rng.random_range(2..30);
                        let life = self.nodes[n].life;
                        self.at(delay, Ev::Dial { from: n, to, life });
                    }
                }
                peers::Action::Ping { name } => {
                    if let Some(to) = self.index_of(&name) {
                        self.send(n, to, NetMsg::Ping);
                    }
                }
                peers::Action::Hello { name } => {
                    if let Some(to) = self.index_of(&name) {
                        self.send(n, to, NetMsg::Hello);
                    }
                }
                peers::Action::DropLink { name } => {
                    let Some(peer) = self.index_of(&name) else {
                        continue;
                    };
                    if let Some(link) = self.net.link(n, peer) {
                        self.send(n, peer, NetMsg::Closed);
                        self.link_closed(n, peer, link)?;
                    } else {
                        // As the membership actor does when it holds no
                        // such link: the table's is closed.
                        let now = self.instant();
                        let actions = self
                            .table(n)
                            .map(|t| {
                                let link = t.link_of(&name).unwrap_or_default();
                                t.link_closed(&name, link, now, 1.0)
                            })
                            .unwrap_or_default();
                        self.membership(n, actions)?;
                    }
                }
                peers::Action::Up { name } => {
                    self.note(format!("{} sees {name} up", self.nodes[n].name));
                    for f in 0..self.options.fragments {
                        let lately = self.lately(n);
                        self.step(
                            n,
                            f,
                            Event::PeerUp {
                                peer: name.clone(),
                                lately,
                            },
                        )?;
                    }
                }
                peers::Action::Down { name, .. } => {
                    self.note(format!("{} sees {name} down", self.nodes[n].name));
                    for f in 0..self.options.fragments {
                        let lately = self.lately(n);
                        self.step(
                            n,
                            f,
                            Event::PeerDown {
                                peer: name.clone(),
                                lately,
                            },
                        )?;
                    }
                }
            }
            if !self.nodes[n].alive {
                break;
            }
        }
        Ok(())
    }

    /// A dial from `from` to `to` ends: a link if both are running and the
    /// way is open both ways.
    fn dial(&mut self, from: usize, to: usize, life: u64) -> Result<(), String> {
        if !self.alive(from, life) {
            return Ok(());
        }
        let ok = self.nodes[to].alive
            && self.nodes[to].frozen_until.is_none()
            && self.net.open_both_ways(from, to);
        let now = self.instant();
        let jitter = self.rng.random_range(0.5..=1.0);
        let peer = self.nodes[to].name.clone();
        if let Some(table) = self.table(from) {
            table.dial_finished(&peer, ok, now, jitter);
        }
        if !ok {
            return Ok(());
        }
        // The connection is there; authenticating it takes a few round
        // trips (long ones on slow links), and the dialer may dial again
        // meanwhile.
        let link = self.net.next_link_id();
        let auth = 2 * self.link_delay() + self.rng.random_range(1..20);
        let lives = (self.nodes[from].life, self.nodes[to].life);
        self.at(
            auth,
            Ev::LinkUp {
                from,
                to,
                link,
                lives,
            },
        );
        Ok(())
    }

    /// A dialed link is authenticated: the link in use between the two
    /// nodes, unless they have one already, in which case ractor_cluster
    /// closes this second one (both ends see it close).
    fn link_up(
        &mut self,
        from: usize,
        to: usize,
        link: u64,
        lives: (u64, u64),
    ) -> Result<(), String> {
        if !self.alive(from, lives.0)
            || !self.alive(to, lives.1)
            || !self.net.open_both_ways(from, to)
        {
            return Ok(());
        }
        let now = self.instant();
        if self.net.link(from, to).is_some() {
            self.note(format!(
                "{} - {}: a second link ({link}) closed as a duplicate",
                self.nodes[from].name, self.nodes[to].name
            ));
            for (a, b) in [(from, to), (to, from)] {
                let peer = self.nodes[b].name.clone();
                let jitter = self.rng.random_range(0.5..=1.0);
                let actions = self
                    .table(a)
                    .map(|t| t.link_closed(&peer, link, now, jitter))
                    .unwrap_or_default();
                self.membership(a, actions)?;
            }
            return Ok(());
        }
        self.net.open(from, to, link);
        for (a, b) in [(from, to), (to, from)] {
            self.nodes[a].heard.insert(b, self.now);
            let peer = self.nodes[b].name.clone();
            let actions = self
                .table(a)
                .map(|t| t.link_ready(&peer, link, now))
                .unwrap_or_default();
            self.membership(a, actions)?;
        }
        Ok(())
    }

    /// Link `link` of node `n` to `peer` closed.
    fn link_closed(&mut self, n: usize, peer: usize, link: u64) -> Result<(), String> {
        if self.net.link(n, peer) != Some(link) {
            return Ok(());
        }
        self.net.forget(n, peer);
        self.nodes[n].heard.remove(&peer);
        let name = self.nodes[peer].name.clone();
        let now = self.instant();
        let jitter = self.rng.random_range(0.5..=1.0);
        let actions = self
            .table(n)
            .map(|t| t.link_closed(&name, link, now, jitter))
            .unwrap_or_default();
        self.membership(n, actions)
    }

    fn hand_to_disk(&mut self, n: usize, write: Write) {
        let node = &mut self.nodes[n];
        node.pending.push_back(write);
        if !node.commit_due {
            node.commit_due = true;
            let (lo, hi) = node.disk_ms;
            let life = node.life;
            let delay = self.rng.random_range(lo..=hi);
            self.at(delay, Ev::Commit(n, life));
        }
    }

    /// Commits what waits on node `n`'s disk; false if the disk failed (the
    /// node is gone).
    fn commit(&mut self, n: usize) -> Result<bool, String> {
        if self.nodes[n].pending.is_empty() {
            return Ok(true);
        }
        if self.nodes[n].disk_fails {
            self.note(format!(
                "{}: a commit fails; the node exits",
                self.nodes[n].name
            ));
            self.crash(n);
            return Ok(false);
        }
        let writes: Vec<Write> = self.nodes[n].pending.drain(..).collect();
        for write in &writes {
            match write {
                Write::Persist { ops, .. } | Write::Replica { ops, .. } => {
                    self.checks.stored_ops(self.seed, ops)?
                }
                Write::Chunk { chunk, .. } => self.checks.stored_chunk(chunk)?,
                Write::ClearDivergent { .. } => {}
            }
        }
        let store = self.nodes[n].store.clone();
        let txn = store.db().begin_write().map_err(|e| e.to_string())?;
        for write in &writes {
            match write {
                Write::Persist {
                    fragment,
                    ops,
                    divergent,
                    ..
                } => {
                    apply_ops(&txn, *fragment, ops).map_err(|e| e.to_string())?;
                    if *divergent {
                        log_divergent(&txn, *fragment, ops).map_err(|e| e.to_string())?;
                    }
                }
                Write::Replica { fragment, ops, .. } => {
                    apply_ops(&txn, *fragment, ops).map_err(|e| e.to_string())?
                }
                Write::Chunk {
                    fragment,
                    first,
                    last,
                    chunk,
                    ..
                } => import_chunk(&txn, *fragment, *first, *last, chunk)
                    .map_err(|e| e.to_string())?,
                Write::ClearDivergent { fragment, upto } => {
                    offline_queue::replica::clear_divergent(&txn, *fragment, *upto)
                        .map_err(|e| e.to_string())?
                }
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        let life = self.nodes[n].life;
        for write in writes {
            match write {
                Write::Persist {
                    fragment,
                    generation,
                    tag,
                    ..
                } => self.at(
                    0,
                    Ev::Core {
                        node: n,
                        life,
                        fragment,
                        event: Event::Committed {
                            generation,
                            tag,
                            outcome: Ok(()),
                        },
                    },
                ),
                Write::Replica {
                    fragment,
                    from,
                    rseq,
                    ..
                } => {
                    if let Some(to) = self.index_of(&from) {
                        let wire = FragmentWire::Replicated { rseq, ok: true };
                        self.send(n, to, NetMsg::Fragment { fragment, wire });
                    }
                }
                Write::Chunk {
                    fragment,
                    from,
                    rseq,
                    last: true,
                    ..
                } => {
                    if let Some(to) = self.index_of(&from) {
                        let wire = FragmentWire::Replicated { rseq, ok: true };
                        self.send(n, to, NetMsg::Fragment { fragment, wire });
                    }
                }
                Write::Chunk { .. } | Write::ClearDivergent { .. } => {}
            }
        }
        Ok(true)
    }

    /// Commits everything waiting (as a write behind them in the writer's
    /// queue waits for them); false if the disk failed.
    fn flush(&mut self, n: usize) -> Result<bool, String> {
        self.commit(n)
    }

    /// A write the shell awaits: after everything waiting, durable at once.
    fn write_now(
        &mut self,
        n: usize,
        apply: impl FnOnce(&storage::redb::WriteTransaction) -> Result<(), storage::StorageError>,
    ) -> Result<bool, String> {
        if !self.flush(n)? {
            return Ok(false);
        }
        let store = self.nodes[n].store.clone();
        let txn = store.db().begin_write().map_err(|e| e.to_string())?;
        apply(&txn).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Node `n` dies: its uncommitted writes, sessions and links with it.
    pub(crate) fn crash(&mut self, n: usize) {
        self.note(format!("{} crashes", self.nodes[n].name));
        let node = &mut self.nodes[n];
        node.alive = false;
        node.cores.clear();
        node.table = None;
        node.pending.clear();
        node.frozen_until = None;
        let peers: Vec<usize> = (0..self.nodes.len()).filter(|p| *p != n).collect();
        for peer in peers {
            if self.net.link(n, peer).is_some() {
                // The kernel resets the connections of a dead process.
                self.send(n, peer, NetMsg::Closed);
                self.net.forget(n, peer);
            }
        }
        for u in self.users.node_lost(n) {
            let back = self.rng.random_range(200..2_000);
            self.wake(u, back);
        }
    }

    /// Node `n`'s host dies: what it sent that is still on the way is lost.
    fn sever_links(&mut self, n: usize) {
        self.note(format!("{}'s host dies", self.nodes[n].name));
        for peer in (0..self.nodes.len()).filter(|p| *p != n) {
            if let Some(link) = self.net.link(n, peer) {
                self.net.severed.insert(link);
            }
        }
    }

    fn heal_direction(&mut self, a: usize, b: usize) {
        if !self.net.cut.contains(&(a, b)) {
            return;
        }
        self.note(format!(
            "{} -> {} healed",
            self.nodes[a].name, self.nodes[b].name
        ));
        let delay = self.link_delay();
        for (due, flight) in self.net.heal(self.now, delay, a, b) {
            let delay = due - self.now;
            self.at(delay, Ev::Deliver(flight));
        }
    }

    /// The end of the faults: every cut heals, frozen nodes thaw, dead ones
    /// restart, disks and links are well.
    fn heal_all(&mut self) -> Result<(), String> {
        self.note("--- faults end: healing everything ---".into());
        let cuts: Vec<(usize, usize)> = self.net.cut.iter().copied().collect();
        for (a, b) in cuts {
            self.heal_direction(a, b);
        }
        self.link_delay = (1, 8);
        for n in 0..self.nodes.len() {
            self.nodes[n].disk_ms = (1, 4);
            self.nodes[n].disk_fails = false;
            if self.nodes[n].frozen_until.is_some() {
                self.nodes[n].frozen_until = None;
            }
            if !self.nodes[n].alive {
                self.start_node(n).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Injects one fault and schedules the next.
    fn fault(&mut self) -> Result<(), String> {
        if self.now >= self.faults_until {
            return Ok(());
        }
        self.faults += 1;
        let nodes = self.nodes.len();
        let n = self.rng.random_range(0..nodes);
        let name = self.nodes[n].name.clone();
        match self.rng.random_range(0..9) {
            0 | 1 => {
                let down = self.nodes.iter().filter(|n| !n.alive).count();
                if self.nodes[n].alive && down == 0 {
                    self.crash(n);
                    let after = self.rng.random_range(500..8_000);
                    self.at(after, Ev::Restart(n));
                }
            }
            2 => {
                // Cut off from everyone, both ways.
                let back = self.rng.random_range(500..8_000);
                self.note(format!("{name} cut off both ways for {back} ms"));
                for p in (0..nodes).filter(|p| *p != n) {
                    self.net.cut.insert((n, p));
                    self.net.cut.insert((p, n));
                    self.at(back, Ev::HealDirection(n, p));
                    self.at(back, Ev::HealDirection(p, n));
                }
            }
            3 if self.options.pair_cuts => {
                // One way only.
                let p = (n + self.rng.random_range(1..nodes)) % nodes;
                let back = self.rng.random_range(500..8_000);
                self.note(format!(
                    "{name} -> {} cut one way for {back} ms",
                    self.nodes[p].name
                ));
                self.net.cut.insert((n, p));
                self.at(back, Ev::HealDirection(n, p));
            }
            4 => {
                // Staggered: the links fail one after another.
                let back = self.rng.random_range(2_000..8_000);
                self.note(format!(
                    "{name} cut off link by link, healed after {back} ms"
                ));
                let mut at = 0;
                for p in (0..nodes).filter(|p| *p != n) {
                    self.net.cut.insert((n, p));
                    self.net.cut.insert((p, n));
                    self.at(back + at, Ev::HealDirection(n, p));
                    self.at(back + at, Ev::HealDirection(p, n));
                    at += self.rng.random_range(100..900);
                }
            }
            5 => {
                if self.nodes[n].alive && self.nodes[n].frozen_until.is_none() {
                    let span = self.rng.random_range(300..5_000);
                    self.note(format!("{name} frozen for {span} ms"));
                    self.nodes[n].frozen_until = Some(self.now + span);
                    self.at(span, Ev::Thaw(n));
                }
            }
            6 => {
                let span = self.rng.random_range(1_000..10_000);
                if self.disk_stall_rng.random_bool(self.options.disk_stall) {
                    self.note(format!("{name}: disk stalls for {span} ms"));
                    self.nodes[n].disk_ms = (3_000, 8_000);
                } else {
                    self.note(format!("{name}: slow disk for {span} ms"));
                    self.nodes[n].disk_ms = (50, 1_500);
                }
                self.at(span, Ev::DiskNormal(n));
            }
            7 => {
                if self.rng.random_bool(0.3) {
                    let down = self.nodes.iter().filter(|n| !n.alive).count();
                    if self.nodes[n].alive && down == 0 {
                        self.note(format!("{name}: its disk will fail"));
                        self.nodes[n].disk_fails = true;
                        let after = self.rng.random_range(2_000..8_000);
                        self.at(after, Ev::Restart(n));
                    }
                } else {
                    let jump: i64 = self.rng.random_range(-30_000..30_000);
                    self.note(format!("{name}: clock jumps {jump} ms"));
                    self.nodes[n].clock_offset += jump;
                }
            }
            _ => {
                let span = self.rng.random_range(1_000..6_000);
                self.note(format!("slow links for {span} ms"));
                self.link_delay = (20, 400);
                self.at(span, Ev::LinksNormal);
            }
        }
        let next = self.rng.random_range(500..4_000);
        self.at(next, Ev::Fault);
        Ok(())
    }

    /// The checks after the faults and the settling.
    fn check_end(&mut self) -> Result<(), String> {
        if !self.users.all_done() {
            return Err(format!(
                "not every send was acknowledged and delivered {} ms after healing: {}\n{}",
                self.options.settle_ms,
                self.users.unfinished(),
                self.fragments_now()
            ));
        }
        for node in &self.nodes {
            for f in 0..self.options.fragments {
                let log = load_divergent(&node.store, f).map_err(|e| e.to_string())?.1;
                if !log.is_empty() {
                    return Err(format!(
                        "{} fragment {f}: {} divergent writes never drained",
                        node.name,
                        log.len()
                    ));
                }
                let core = &node.cores[usize::from(f)];
                if core.unanswered() > 0 {
                    return Err(format!(
                        "{} fragment {f}: {} requests left unanswered",
                        node.name,
                        core.unanswered()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each fragment as each node sees it, for a failure's report.
    fn fragments_now(&self) -> String {
        let mut lines = Vec::new();
        for f in 0..self.options.fragments {
            let mut line = format!("fragment {f}:");
            for node in &self.nodes {
                let Some(core) = node.cores.get(usize::from(f)) else {
                    line.push_str(&format!(" {} down;", node.name));
                    continue;
                };
                let owner = core
                    .owner()
                    .map_or("-".to_owned(), |o| format!("{}@{}", o.node, o.epoch));
                line.push_str(&format!(
                    " {} serves={} online={} owner={owner} waiting={} unanswered={};",
                    node.name,
                    core.serves(),
                    core.counts().online,
                    core.waiting_for_owner(),
                    core.unanswered()
                ));
            }
            lines.push(line);
        }
        let users: Vec<String> = (0..self.users.len())
            .map(|u| {
                let f = self.placement.fragment_of(&self.phone(u));
                let stored: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|node| {
                        use offline_queue::store::MailboxRead;
                        let reads = RedbMailbox::new(node.store.clone(), f);
                        let ids = reads
                            .page(&self.phone(u), None, 1_000)
                            .map(|page| {
                                page.iter()
                                    .map(|e| format!("{:#x}", e.id))
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default();
                        format!("{} holds [{}]", node.name, ids.join(" "))
                    })
                    .collect();
                format!("user {u} on fragment {f}: {}", stored.join(", "))
            })
            .collect();
        lines.extend(users);
        lines.join("\n")
    }

    /// A session of user `u` on node `n` attaches.
    pub(crate) fn endpoint(&self, user: usize, session: u64) -> Endpoint<Target> {
        Endpoint {
            session_id: session,
            token_generation: None,
            target: Target { user, session },
        }
    }

    pub(crate) fn phone(&self, user: usize) -> PhoneNumber {
        self.users.phone(user)
    }
}

/// The batch end and `(member, entry id)`s of a write storing a group's
/// items in members' mailboxes (for the trace).
fn group_entries(op: &WriteOp) -> Option<(u64, Vec<(&PhoneNumber, u64)>)> {
    match op {
        WriteOp::PutGroupEntries {
            through, entries, ..
        } => Some((
            *through,
            entries.iter().map(|(o, id, _)| (o, *id)).collect(),
        )),
        WriteOp::PutGroupShared {
            through, entries, ..
        } => Some((
            *through,
            entries.iter().map(|(o, id, _)| (o, *id)).collect(),
        )),
        _ => None,
    }
}
