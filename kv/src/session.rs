//! Client sessions: exactly-once application of retried writes (Raft thesis §6.3).
//!
//! For each client the table remembers the responses of writes whose seq is at or above the
//! session's `floor_seq`. A request whose seq is remembered gets the remembered response; one
//! below the floor is refused (its response is gone and it may have been applied). The client
//! raises the floor with `first_unacked_seq`; the table raises it when the per-session bound
//! `max_session_responses` forces the oldest response out. Sessions without a write for
//! `session_ttl_nanos` of replicated time are forgotten.

use std::collections::{HashMap, VecDeque};

use tarn_core::Nanos;

use crate::command::{ClientId, Request};
use crate::config::KvConfig;
use crate::error::KvError;
use crate::response::Response;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub last_active_nanos: Nanos,
    /// Every seq below this is forgotten.
    pub floor_seq: u64,
    /// Responses by seq, ascending. Seqs mostly arrive in order, so recording is a push at
    /// the back and forgetting a pop at the front: no allocation per request once warm.
    pub responses: VecDeque<(u64, Response)>,
}

/// What the session table says about a request before it is applied.
pub(crate) enum Admission {
    /// New write: apply it, then `record` the response.
    Apply,
    /// Already applied: this is its first response.
    Duplicate(Response),
    /// Refused without applying.
    Refuse(KvError),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Sessions {
    pub map: HashMap<ClientId, Session>,
    pub last_sweep_nanos: Nanos,
}

impl Sessions {
    pub fn admit(&mut self, request: &Request, now: Nanos, config: &KvConfig) -> Admission {
        let session = match self.map.get_mut(&request.client_id) {
            Some(session) => session,
            None => {
                if request.first_unacked_seq > 1 {
                    return Admission::Refuse(KvError::SessionExpired { client_id: request.client_id });
                }
                if self.map.len() >= config.max_sessions {
                    return Admission::Refuse(KvError::TooManySessions { max: config.max_sessions });
                }
                self.map.entry(request.client_id).or_insert(Session {
                    last_active_nanos: now,
                    floor_seq: 0,
                    responses: VecDeque::new(),
                })
            }
        };
        session.last_active_nanos = session.last_active_nanos.max(now);
        if request.first_unacked_seq > session.floor_seq {
            session.floor_seq = request.first_unacked_seq;
            // Usually one response goes (the client acknowledges as it goes): pop, do not split.
            while session.responses.front().is_some_and(|&(seq, _)| seq < session.floor_seq) {
                session.responses.pop_front();
            }
        }
        if request.seq < session.floor_seq {
            return Admission::Refuse(KvError::SessionSeqTooOld {
                client_id: request.client_id,
                seq: request.seq,
                floor: session.floor_seq,
            });
        }
        match session.responses.binary_search_by_key(&request.seq, |&(seq, _)| seq) {
            Ok(at) => Admission::Duplicate(session.responses[at].1.clone()),
            Err(_) => Admission::Apply,
        }
    }

    pub fn record(&mut self, client_id: ClientId, seq: u64, response: Response, config: &KvConfig) {
        let session = self.map.get_mut(&client_id).expect("record follows a successful admit");
        #[cfg(feature = "planted-bugs")]
        let always_at_the_back = config.planted_bug == Some(tarn_core::PlantedBug::SessionResponsesUnsorted);
        #[cfg(not(feature = "planted-bugs"))]
        let always_at_the_back = false;
        match session.responses.back() {
            Some(&(last, _)) if last >= seq && !always_at_the_back => {
                let at = session.responses.partition_point(|&(other, _)| other < seq);
                debug_assert!(session.responses[at].0 != seq, "record of an applied seq");
                session.responses.insert(at, (seq, response));
            }
            _ => session.responses.push_back((seq, response)),
        }
        while session.responses.len() > config.max_session_responses {
            let (oldest, _) = session.responses.pop_front().expect("len > max >= 1");
            session.floor_seq = session.floor_seq.max(oldest.saturating_add(1));
        }
    }

    /// Forgets sessions idle for `session_ttl_nanos`, at most once per sweep interval.
    pub fn sweep(&mut self, now: Nanos, config: &KvConfig) {
        if now < self.last_sweep_nanos.saturating_add(config.session_sweep_interval_nanos) {
            return;
        }
        self.last_sweep_nanos = now;
        // Every session is judged alone, so the map's iteration order cannot change the result.
        self.map
            .retain(|_, session| session.last_active_nanos.saturating_add(config.session_ttl_nanos) > now);
    }

    /// Client ids in ascending order (for snapshot and digest).
    pub fn sorted_ids(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self.map.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}
