//! Model-based property tests: seeded random request streams applied to the real state
//! machine and to the reference model (`model.rs`) must give the same responses, the same
//! state, the same watch events and the same live TTL armings; a snapshot round trip at the
//! end must rebuild a state with the same digest that keeps agreeing with the model.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tarn_core::{Index, Nanos};

use crate::command::{ClientId, Command, Request, SYSTEM_CLIENT_ID};
use crate::config::KvConfig;
use crate::error::KvError;
use crate::machine::KvStateMachine;
use crate::model::Model;
use crate::snapshot::decode_snapshot;
use crate::watch::{WatchEvent, WatchPoll};

pub(crate) fn test_config() -> KvConfig {
    crate::model::small_bounds_config()
}

struct Client {
    id: ClientId,
    next_seq: u64,
    first_unacked: u64,
    /// Sent requests, for retries.
    sent: Vec<Request>,
}

pub(crate) struct Gen {
    rng: ChaCha8Rng,
    clients: Vec<Client>,
    next_client_id: ClientId,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        let mut gen = Gen { rng: ChaCha8Rng::seed_from_u64(seed), clients: Vec::new(), next_client_id: 1 };
        for _ in 0..5 {
            gen.new_client();
        }
        gen
    }

    fn new_client(&mut self) -> usize {
        let id = self.next_client_id;
        self.next_client_id += 1;
        self.clients.push(Client { id, next_seq: 1, first_unacked: 1, sent: Vec::new() });
        self.clients.len() - 1
    }

    fn key(&mut self) -> String {
        if self.rng.gen_ratio(1, 40) {
            return ["", "a..b", ".a", "a.", "a b", "abcdefghijklmnopq"][self.rng.gen_range(0..6)].to_owned();
        }
        let depth = self.rng.gen_range(1..=3);
        let segments: Vec<&str> = (0..depth).map(|_| ["a", "b", "c"][self.rng.gen_range(0..3)]).collect();
        segments.join(".")
    }

    /// Lock operations mostly target a few keys, so that locks are contended.
    fn lock_key(&mut self) -> String {
        match self.rng.gen_range(0..10) {
            0..=4 => "l".to_owned(),
            5..=6 => "a.l".to_owned(),
            _ => self.key(),
        }
    }

    fn value(&mut self) -> Bytes {
        match self.rng.gen_range(0..30) {
            0 => Bytes::new(),
            1 => Bytes::from_static(b"123456789"),
            n => Bytes::from(format!("v{}", n % 4)),
        }
    }

    fn ttl(&mut self) -> Nanos {
        match self.rng.gen_range(0..20) {
            0 => 0,
            1 => 5_000,
            n => 10 + n * 20,
        }
    }

    fn command(&mut self, model: &Model) -> Command {
        match self.rng.gen_range(0..100) {
            0..=19 => Command::Put { key: self.key(), value: self.value() },
            20..=27 => Command::Remove { key: self.key() },
            28..=41 => Command::Mkdir { key: self.key() },
            42..=45 => {
                let n = self.rng.gen_range(0..=5);
                Command::BatchPut { items: (0..n).map(|_| (self.key(), self.value())).collect() }
            }
            46..=47 => {
                let n = self.rng.gen_range(0..=5);
                Command::BatchRemove { keys: (0..n).map(|_| self.key()).collect() }
            }
            48..=55 => {
                let key = self.key();
                let current = model.nodes.get(&key).map(|n| n.value.clone()).filter(|v| !v.is_empty());
                let expected = match self.rng.gen_range(0..3) {
                    0 => None,
                    1 => current,
                    _ => Some(self.value()),
                };
                let new = if self.rng.gen_ratio(1, 3) { None } else { Some(self.value()) };
                Command::CompareAndSet { key, expected, new }
            }
            56..=61 => Command::PutTemp { key: self.key(), value: self.value(), ttl_nanos: self.ttl() },
            62..=65 => Command::MkdirTemp { key: self.key(), ttl_nanos: self.ttl() },
            66..=68 => {
                let key = if self.rng.gen_ratio(1, 4) { self.lock_key() } else { self.key() };
                if self.rng.gen_ratio(1, 3) {
                    Command::RenewTtl { key, ttl_nanos: self.ttl() }
                } else {
                    Command::UpdateTtl { key, ttl_nanos: self.ttl() }
                }
            }
            69..=75 => {
                let wait_nanos = if self.rng.gen_ratio(1, 3) { 0 } else { self.ttl() };
                Command::TryLock { key: self.lock_key(), lease_nanos: self.ttl(), wait_nanos }
            }
            76..=79 => Command::Unlock { key: self.lock_key() },
            80..=81 => Command::UpdateLease { key: self.lock_key(), lease_nanos: self.ttl() },
            82..=87 => {
                let armings = model.armings();
                if !armings.is_empty() && self.rng.gen_ratio(3, 4) {
                    let (arm_id, key) = armings[self.rng.gen_range(0..armings.len())].clone();
                    Command::Expire { key, arm_id }
                } else {
                    Command::Expire { key: self.key(), arm_id: self.rng.gen_range(0..model.next_arm_id + 2) }
                }
            }
            88..=90 => Command::Get { key: self.key() },
            91..=93 => {
                let (limit, after) = match self.rng.gen_range(0..3) {
                    0 => (None, None),
                    1 => (Some(self.rng.gen_range(0..4u32)), None),
                    _ => (
                        Some(self.rng.gen_range(1..4u32)),
                        Some(["a", "b", "c"][self.rng.gen_range(0..3)].to_owned()),
                    ),
                };
                Command::List { key: self.key(), limit, after }
            }
            94..=95 => {
                let n = self.rng.gen_range(0..=5);
                Command::BatchGet { keys: (0..n).map(|_| self.key()).collect() }
            }
            _ => Command::KeepAlive,
        }
    }

    /// The next request: mostly a new one from a client, sometimes a retry, sometimes a
    /// system request. Expire from a client (refused) also appears.
    pub fn request(&mut self, model: &Model) -> (usize, Request) {
        let command = self.command(model);
        if let Command::Expire { .. } = command {
            if self.rng.gen_ratio(9, 10) {
                return (usize::MAX, Request::system(command));
            }
        }
        let at = self.rng.gen_range(0..self.clients.len());
        if self.rng.gen_ratio(1, 10) && !self.clients[at].sent.is_empty() {
            let client = &self.clients[at];
            let retry = client.sent[self.rng.gen_range(0..client.sent.len())].clone();
            let request = Request { first_unacked_seq: client.first_unacked, ..retry };
            return (at, request);
        }
        let client = &mut self.clients[at];
        let seq = client.next_seq;
        client.next_seq += 1;
        let request = Request { client_id: client.id, seq, first_unacked_seq: client.first_unacked, command };
        client.sent.push(request.clone());
        if client.sent.len() > 8 {
            client.sent.remove(0);
        }
        (at, request)
    }

    /// Client bookkeeping after a response: acknowledge now and then, start over on expiry.
    pub fn answered(&mut self, at: usize, request: &Request, response: &crate::response::Response) {
        if at == usize::MAX {
            return;
        }
        if let Err(KvError::SessionExpired { .. }) = response {
            self.clients.remove(at);
            self.new_client();
            return;
        }
        let client = &mut self.clients[at];
        if self.rng.gen_ratio(1, 3) && request.seq >= client.first_unacked {
            client.first_unacked = request.seq + 1;
        }
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

pub(crate) fn assert_same_state(machine: &KvStateMachine, model: &Model, context: &str) {
    crate::model::assert_same_state(machine, model, context);
}

fn drain_events(machine: &mut KvStateMachine, watch: u64, into: &mut Vec<WatchEvent>) {
    match machine.poll_watch(watch, usize::MAX) {
        WatchPoll::Events(events) => into.extend(events),
        other => panic!("root watcher lost: {other:?}"),
    }
}

/// Runs one seeded stream of `steps` requests; returns the machine and the model.
pub(crate) fn run(seed: u64, steps: usize) -> (KvStateMachine, Model) {
    run_with_coverage(seed, steps, &mut std::collections::BTreeMap::new())
}

/// A short name for the shape of a response, to check the streams reach every corner.
fn outcome_name(response: &crate::response::Response) -> String {
    use crate::response::Reply;
    match response {
        Ok(Reply::Expired(true)) => "expired".into(),
        Ok(Reply::Lock(crate::response::LockOutcome::Queued { .. })) => "lock-queued".into(),
        Ok(Reply::Lock(_)) => "lock-acquired".into(),
        Ok(Reply::Batch(items)) if items.iter().any(|i| i.is_ok()) && items.iter().any(|i| i.is_err()) => {
            "batch-mixed".into()
        }
        Ok(_) => "ok".into(),
        Err(error) => format!("{error:?}").split([' ', '{']).next().unwrap_or_default().to_owned(),
    }
}

pub(crate) fn run_with_coverage(
    seed: u64,
    steps: usize,
    coverage: &mut std::collections::BTreeMap<String, usize>,
) -> (KvStateMachine, Model) {
    let config = test_config();
    let mut machine = KvStateMachine::new(config.clone());
    let mut model = Model::new(config);
    let watch = machine.watch("", true, Some(0)).expect("watch the root");
    let mut seen_events = Vec::new();
    let mut gen = Gen::new(seed);
    let mut index: Index = 0;
    let mut leader_time: Nanos = 0;
    let mut local_clock: Nanos = 1_000_000;
    for step in 0..steps {
        // One step is one entry: a new index (several requests may share it, below).
        index += 1;
        // The leader's clock mostly advances, sometimes stalls or jumps back (a new leader).
        leader_time = match gen.rng().gen_range(0..50) {
            0 => leader_time.saturating_sub(100),
            _ => leader_time + gen.rng().gen_range(0..15),
        };
        local_clock += gen.rng().gen_range(0..15);
        let (requests, clients): (Vec<Request>, Vec<usize>) = if gen.rng().gen_ratio(1, 20) {
            // The leader's own expiry proposals, from its tracker.
            if gen.rng().gen_ratio(1, 10) {
                machine.rearm_ttls(local_clock);
            }
            let expired = machine.expired(local_clock, 3);
            let n = expired.len();
            (expired, vec![usize::MAX; n])
        } else {
            let count = if gen.rng().gen_ratio(1, 5) { 3 } else { 1 };
            (0..count).map(|_| gen.request(&model)).map(|(at, request)| (request, at)).unzip()
        };
        for (request, at) in requests.iter().zip(clients) {
            let expected = model.apply(index, leader_time, request);
            let actual = machine.apply(index, leader_time, request);
            assert_eq!(actual, expected, "seed {seed} step {step} index {index}: {request:?}");
            *coverage.entry(outcome_name(&actual)).or_default() += 1;
            if let Err(error) = request.command.validate(&model.config) {
                if request.client_id != SYSTEM_CLIENT_ID {
                    let session_refusal = matches!(
                        actual,
                        Err(KvError::SessionExpired { .. }
                            | KvError::SessionSeqTooOld { .. }
                            | KvError::TooManySessions { .. })
                    );
                    assert!(
                        session_refusal || actual == Err(error.clone()),
                        "validate said {error:?}, apply {actual:?}"
                    );
                    *coverage.entry("validate-agreed".into()).or_default() += 1;
                }
            }
            gen.answered(at, request, &actual);
        }
        if step % 97 == 0 {
            assert_same_state(&machine, &model, &format!("seed {seed} step {step}"));
            drain_events(&mut machine, watch, &mut seen_events);
            assert_eq!(seen_events, model.events, "seed {seed} step {step}: watch events");
        }
    }
    assert_same_state(&machine, &model, &format!("seed {seed} end"));
    drain_events(&mut machine, watch, &mut seen_events);
    assert_eq!(seen_events, model.events, "seed {seed} end: watch events");
    (machine, model)
}

#[test]
fn machine_agrees_with_model_on_random_streams() {
    let mut coverage = std::collections::BTreeMap::new();
    for seed in 0..24 {
        run_with_coverage(seed, 3_000, &mut coverage);
    }
    // The generator must reach every outcome, or agreement proves little.
    let expected = [
        "ok",
        "expired",
        "lock-queued",
        "lock-acquired",
        "batch-mixed",
        "InvalidKey",
        "ValueTooLarge",
        "EmptyValue",
        "NotFound",
        "NotADir",
        "IsADir",
        "DirNotEmpty",
        "ParentMissing",
        "CasMismatch",
        "CasBothAbsent",
        "NotOwner",
        "NotTemporary",
        "NotTemporaryConflict",
        "IsALock",
        "NotALock",
        "LockNotHeld",
        "LockBusy",
        "TooManyWaiters",
        "InvalidTtl",
        "TooManyItems",
        "SessionExpired",
        "SessionSeqTooOld",
        "SystemOnly",
        "validate-agreed",
    ];
    for outcome in expected {
        assert!(
            coverage.get(outcome).copied().unwrap_or(0) >= 3,
            "outcome {outcome} barely reached: {coverage:?}"
        );
    }
}

#[test]
fn snapshot_round_trip_keeps_digest_and_agreement() {
    for seed in 100..106 {
        let (machine, mut model) = run(seed, 4_000);
        for chunk_target in [64, 4096, usize::MAX] {
            let chunks: Vec<Bytes> = machine.snapshot_chunks(chunk_target).collect();
            if chunk_target == 64 {
                assert!(chunks.len() > 3, "small chunk target gives several chunks");
            }
            let decoded = decode_snapshot(test_config(), chunks.iter().map(|c| &c[..])).expect("decodes");
            assert_eq!(decoded.digest(), machine.digest(), "seed {seed}: digest after round trip");
            assert_same_state(&decoded, &model, &format!("seed {seed} decoded"));
        }
        // Both keep agreeing when the same requests follow.
        let chunks: Vec<Bytes> = machine.snapshot_chunks(1024).collect();
        let mut decoded = decode_snapshot(test_config(), chunks.iter().map(|c| &c[..])).expect("decodes");
        let mut original = machine;
        let mut gen = Gen::new(seed + 1_000);
        let mut index = original.applied_index();
        let time = original.time_nanos();
        for step in 0..500u64 {
            index += 1;
            let (at, request) = gen.request(&model);
            let expected = model.apply(index, time + step, &request);
            assert_eq!(original.apply(index, time + step, &request), expected);
            assert_eq!(decoded.apply(index, time + step, &request), expected, "seed {seed} step {step}");
            gen.answered(at, &request, &expected);
        }
        assert_eq!(decoded.digest(), original.digest());
        assert_same_state(&decoded, &model, &format!("seed {seed} after more requests"));
    }
}

#[test]
fn same_stream_same_digest_different_stream_different_digest() {
    let (a, _) = run(7, 1_500);
    let (b, _) = run(7, 1_500);
    let (c, _) = run(8, 1_500);
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn system_client_id_is_reserved() {
    let mut machine = KvStateMachine::new(test_config());
    let put = Request::system(Command::Put { key: "a".into(), value: Bytes::from_static(b"v") });
    assert_eq!(machine.apply(1, 0, &put), Err(KvError::ReservedClientId));
    let expire = Request {
        client_id: 5,
        seq: 1,
        first_unacked_seq: 1,
        command: Command::Expire { key: "a".into(), arm_id: 1 },
    };
    assert!(matches!(machine.apply(2, 0, &expire), Err(KvError::SystemOnly { .. })));
    assert_eq!(machine.node_count(), 0);
    let _ = SYSTEM_CLIENT_ID;
}

#[test]
fn system_requests_write_the_reserved_namespace_alike_in_machine_and_model() {
    use crate::response::Reply;
    let mut machine = KvStateMachine::new(test_config());
    let mut model = Model::new(test_config());
    let addr = || Bytes::from_static(b"h:7804"); // test_config allows 8-byte values
    let steps = [
        (Request::system(Command::Mkdir { key: "_tarn".into() }), Ok(Reply::Done)),
        (Request::system(Command::Mkdir { key: "_tarn.peers".into() }), Ok(Reply::Done)),
        (Request::system(Command::Put { key: "_tarn.peers.4".into(), value: addr() }), Ok(Reply::Done)),
        (Request::system(Command::Remove { key: "_tarn.peers.4".into() }), Ok(Reply::Done)),
        // Only plain writes, only in the namespace.
        (Request::system(Command::Put { key: "app".into(), value: addr() }), Err(KvError::ReservedClientId)),
        (
            Request::system(Command::PutTemp {
                key: "_tarn.t".into(),
                value: addr(),
                ttl_nanos: 1_000_000_000,
            }),
            Err(KvError::ReservedClientId),
        ),
    ];
    for (i, (request, want)) in steps.into_iter().enumerate() {
        let index = i as u64 + 1;
        assert_eq!(machine.apply(index, 0, &request), want, "machine, step {i}");
        assert_eq!(model.apply(index, 0, &request), want, "model, step {i}");
    }
    assert_eq!(machine.node_count(), 2);
    assert!(machine.get("_tarn.peers").expect("readable").is_some());
}

#[test]
fn checked_pair_agrees_on_mutated_entry_bytes() {
    // What the kv_apply fuzz target does, with a seeded mutator: valid entries, some with
    // flipped bytes, decoded and applied to the machine and the model side by side.
    let mut pair = crate::model::Checked::new(test_config());
    let mut gen = Gen::new(4242);
    let mut decoded = 0;
    for index in 1..=3_000u64 {
        let (_, request) = gen.request(&pair.model);
        let entry = crate::command::KvEntry { leader_time_nanos: index * 3, requests: vec![request] };
        let mut bytes = crate::command::encode_entry(&entry);
        if gen.rng().gen_ratio(1, 4) {
            let at = gen.rng().gen_range(0..bytes.len());
            bytes[at] ^= 1 << gen.rng().gen_range(0..8);
        }
        if crate::command::decode_entry(&bytes).is_ok() {
            decoded += 1;
        }
        pair.apply_entry_bytes(index, &bytes);
        if index % 250 == 0 {
            pair.check();
        }
    }
    pair.check();
    assert!(decoded > 2_000, "most entries decode ({decoded})");
}

/// The events a bounded history keeps: the longest suffix made of whole indexes that fits in
/// `max_events` (what evicting oldest-first, a whole index at a time, leaves behind).
fn kept_floor(events: &[WatchEvent], max_events: usize) -> Index {
    let mut start = events.len();
    while start > 0 {
        let index = events[start - 1].index;
        let mut group_start = start;
        while group_start > 0 && events[group_start - 1].index == index {
            group_start -= 1;
        }
        if events.len() - group_start > max_events {
            break;
        }
        start = group_start;
    }
    if start == 0 {
        0
    } else {
        events[start - 1].index
    }
}

#[test]
fn watches_resume_exactly_or_say_why_not() {
    use crate::machine::WatchRegisterError;
    use crate::watch::{CutOffReason, WatchError};

    let history_max = 60;
    let queue_max = 25;
    let config = KvConfig {
        watch_history_max_events: history_max,
        watch_queue_max_events: queue_max,
        ..test_config()
    };
    for seed in 0..8u64 {
        let mut machine = KvStateMachine::new(config.clone());
        let mut model = Model::new(config.clone());
        let mut gen = Gen::new(seed + 77);
        // A long-lived watcher that polls too little and resumes after cut-offs. Seeds alternate
        // between everything (falls behind for good) and one subtree (mostly keeps up).
        let followed = if seed % 2 == 0 { "" } else { "a" };
        let matches = |key: &str| crate::key::is_in_subtree(key, followed);
        let mut follower = machine.watch(followed, true, None).unwrap();
        let mut delivered: Vec<WatchEvent> = Vec::new();
        let mut resumed_after_compaction = 0;
        let mut cut_offs = 0;
        let mut compactions = 0;
        for step in 1..=2_500u64 {
            let (at, request) = gen.request(&model);
            let expected = model.apply(step, step, &request);
            assert_eq!(machine.apply(step, step, &request), expected);
            gen.answered(at, &request, &expected);

            // A fresh watcher from a random past index sees exactly the model's events.
            if step % 37 == 0 {
                let key = gen.key();
                let subtree = gen.rng().gen_ratio(1, 2);
                let after = step.saturating_sub(gen.rng().gen_range(0..600));
                let floor = kept_floor(&model.events, history_max);
                let wanted: Vec<WatchEvent> = model
                    .events
                    .iter()
                    .filter(|e| e.index > after)
                    .filter(
                        |e| if subtree { crate::key::is_in_subtree(&e.key, &key) } else { *e.key == *key },
                    )
                    .cloned()
                    .collect();
                match machine.watch(&key, subtree, Some(after)) {
                    Err(WatchRegisterError::Key(_)) => {
                        assert!(crate::key::validate_key_or_root(&key, &config).is_err())
                    }
                    Err(WatchRegisterError::Watch(WatchError::Compacted { requested, oldest_kept })) => {
                        assert_eq!((requested, oldest_kept), (after, floor));
                        assert!(after < floor);
                        compactions += 1;
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                    Ok(id) => {
                        assert!(after >= floor, "seed {seed} step {step}: after {after} floor {floor}");
                        let WatchPoll::Events(got) = machine.poll_watch(id, usize::MAX) else { panic!() };
                        assert_eq!(
                            got, wanted,
                            "seed {seed} step {step}: watch {key:?} subtree {subtree} after {after}"
                        );
                        assert!(machine.unwatch(id));
                    }
                }
            }

            // The follower polls every 40 steps; when cut off it resumes from its last index.
            if step % 40 == 0 {
                match machine.poll_watch(follower, 4) {
                    WatchPoll::Events(events) => delivered.extend(events),
                    WatchPoll::CutOff(CutOffReason::QueueFull { last_delivered_index, .. }) => {
                        cut_offs += 1;
                        assert_eq!(
                            last_delivered_index,
                            delivered.last().map_or(0, |e| e.index).max(last_delivered_index)
                        );
                        match machine.watch(followed, true, Some(last_delivered_index)) {
                            Ok(id) => follower = id,
                            Err(_) => {
                                // Gone or too far behind: the client re-reads and starts afresh.
                                resumed_after_compaction += 1;
                                delivered.retain(|_| false);
                                follower = machine.watch(followed, true, None).unwrap();
                                let now = machine.applied_index();
                                delivered.extend(
                                    model
                                        .events
                                        .iter()
                                        .filter(|e| e.index <= now && matches(&e.key))
                                        .cloned(),
                                );
                            }
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // Drain and compare: no gap, no duplicate, same order as the model.
        loop {
            match machine.poll_watch(follower, 1_000) {
                WatchPoll::Events(events) if events.is_empty() => break,
                WatchPoll::Events(events) => delivered.extend(events),
                other => panic!("unexpected at drain {other:?}"),
            }
        }
        let expected: Vec<WatchEvent> = model.events.iter().filter(|e| matches(&e.key)).cloned().collect();
        assert_eq!(delivered, expected, "seed {seed}: follower stream");
        assert!(compactions > 0, "seed {seed}: compaction path not exercised");
        assert_eq!(
            cut_offs, resumed_after_compaction,
            "seed {seed}: a cut-off means the history left it behind"
        );
        if followed.is_empty() {
            assert!(cut_offs > 0, "seed {seed}: cut-off path not exercised");
        }
    }
}

#[test]
fn local_parts_never_leak_into_replicated_state() {
    // A "leader" that consults its TTL tracker and serves watchers, and a "follower" that does
    // neither, apply the same entries (the leader's expiry proposals included): same digest.
    let config = test_config();
    let mut leader = KvStateMachine::new(config.clone());
    let mut follower = KvStateMachine::new(config.clone());
    let mut model = Model::new(config);
    let mut gen = Gen::new(999);
    let watch = leader.watch("", true, None).unwrap();
    let mut clock: Nanos = 5_000;
    for index in 1..=3_000u64 {
        clock += gen.rng().gen_range(0..20);
        let requests = if gen.rng().gen_ratio(1, 8) {
            if gen.rng().gen_ratio(1, 20) {
                leader.rearm_ttls(clock);
            }
            leader.next_ttl_deadline(clock);
            leader.expired(clock, 4)
        } else {
            let (at, request) = gen.request(&model);
            gen.answered(at, &request, &model.clone().apply(index, index, &request));
            vec![request]
        };
        for request in &requests {
            let expected = model.apply(index, index, request);
            assert_eq!(leader.apply(index, index, request), expected);
            assert_eq!(follower.apply(index, index, request), expected);
        }
        leader.advance_to(index);
        follower.advance_to(index);
        model.applied_index = index;
        if index % 5 == 0 {
            let _ = leader.poll_watch(watch, 3);
        }
    }
    assert_eq!(leader.digest(), follower.digest());
    assert_eq!(leader.ttl_count(), follower.ttl_count());
    assert_same_state(&follower, &model, "follower");
}
