//! A tiny driver for end-to-end tests: one entry per request, a leader clock the test moves.
#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use tarn_kv::{ClientId, Command, KvConfig, KvStateMachine, Request, Response};

pub struct Harness {
    pub kv: KvStateMachine,
    pub index: u64,
    /// The leader's clock carried in entries.
    pub time: u64,
    seqs: HashMap<ClientId, u64>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: KvConfig) -> Self {
        Harness { kv: KvStateMachine::new(config), index: 0, time: 1_000, seqs: HashMap::new() }
    }

    /// Sends `command` as the next request of `client` (acknowledging all earlier ones).
    pub fn run(&mut self, client: ClientId, command: Command) -> Response {
        let seq = self.seqs.entry(client).or_insert(0);
        *seq += 1;
        let request = Request { client_id: client, seq: *seq, first_unacked_seq: *seq, command };
        self.send(&request)
    }

    /// Applies `request` as the next entry.
    pub fn send(&mut self, request: &Request) -> Response {
        self.index += 1;
        self.kv.apply(self.index, self.time, request)
    }

    pub fn system(&mut self, command: Command) -> Response {
        self.send(&Request::system(command))
    }

    /// Proposes and applies whatever the leader's tracker says expired at `now`.
    pub fn expire_at(&mut self, now: u64) -> Vec<Response> {
        let requests = self.kv.expired(now, usize::MAX);
        requests.iter().map(|r| self.send(r)).collect()
    }

    pub fn value(&self, key: &str) -> Option<Bytes> {
        self.kv.get(key).unwrap().map(|node| node.value)
    }

    pub fn exists(&self, key: &str) -> bool {
        self.kv.get(key).unwrap().is_some()
    }
}

pub fn config() -> KvConfig {
    KvConfig { min_ttl_nanos: 10, max_ttl_nanos: 1_000_000, ..KvConfig::default() }
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put { key: key.into(), value: b(value) }
}

pub fn mkdir(key: &str) -> Command {
    Command::Mkdir { key: key.into() }
}

pub fn remove(key: &str) -> Command {
    Command::Remove { key: key.into() }
}
