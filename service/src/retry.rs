//! What a client does with an error answer: the leader-discovery and retry
//! decisions of the client library (`tarn_server::client`), without its
//! sockets and timers, so the simulator's clients decide the same way.
//! [`after_error`] classifies an answer; [`Route`] carries one request
//! from try to try (which endpoint next, how long to pause, which hints to
//! trust, how long the next try may wait) and [`Backoff`] draws its pauses.

use std::time::Duration;

use tarn_core::NodeId;

use crate::protocol::ServerError;

/// Exponential backoff with full jitter: pause `n` is uniform in
/// `[0, min(first * 2^n, max)]`, so clients of a leaderless cluster neither
/// hammer the survivors nor retry in lockstep. Seeded per use: no global
/// RNG, and a simulated client draws the same pauses on every replay.
#[derive(Debug, Clone)]
pub struct Backoff {
    bound: Duration,
    first: Duration,
    max: Duration,
    state: u64,
}

impl Backoff {
    /// Pauses from `first` up to `max`, drawn from `seed`.
    pub fn new(first: Duration, max: Duration, seed: u64) -> Self {
        let first = first.min(max);
        Backoff { bound: first, first, max, state: seed | 1 }
    }

    /// The next pause; the bound doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        // splitmix64: cheap, decent spread, no shared state.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bound_ns = u64::try_from(self.bound.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(if bound_ns == 0 { 0 } else { z % bound_ns.saturating_add(1) });
        self.bound = self.bound.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the first, shortest bound (after a success).
    pub fn reset(&mut self) {
        self.bound = self.first;
    }
}

/// Where a client's guess of the leader moves after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderMove {
    /// Keep trying the same endpoint.
    Stay,
    /// The next endpoint, in order (only if the guess still points at the
    /// endpoint tried: another request may have found the leader meanwhile).
    Next,
    /// The hinted leader's endpoint.
    To(usize),
}

/// The next try of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Where the leader guess moves.
    pub leader: LeaderMove,
    /// How long to pause first (zero: at once).
    pub pause: Duration,
}

/// One request's way through a cluster's endpoints, from try to try: the
/// client library's retry loop without its sockets and timers, so the
/// simulator's clients retry as real clients do. A fresh hint is followed at
/// once, but not twice in a row (stale hints that point at each other must
/// not spin), and never back to an endpoint that already refused the
/// request in this round of the endpoints (a node with a stale hint and the
/// node it names, which knows no leader, would bounce the request between
/// them forever while the real leader sits elsewhere: simulator seed 358, 7
/// nodes); a try that timed out makes its endpoint a suspect whose hints
/// are ignored (the hint may be that very node, frozen) and doubles the
/// next try's wait; anything else pauses by the backoff.
#[derive(Debug, Clone)]
pub struct Route {
    backoff: Backoff,
    attempt_timeout: Duration,
    attempt_timeout_max: Duration,
    /// How many endpoints the client has.
    endpoints: usize,
    /// The endpoint whose last try timed out.
    suspect: Option<usize>,
    /// Endpoints (below 64) that refused the request in this round.
    refused: u64,
    /// The previous try followed a hint without pausing.
    hopped: bool,
}

impl Route {
    /// A request to one of `endpoints` whose first try waits
    /// `attempt_timeout`; tries that time out double it up to
    /// `attempt_timeout_max`.
    pub fn new(
        backoff: Backoff,
        attempt_timeout: Duration,
        attempt_timeout_max: Duration,
        endpoints: usize,
    ) -> Self {
        Route {
            backoff,
            attempt_timeout,
            attempt_timeout_max,
            endpoints,
            suspect: None,
            refused: 0,
            hopped: false,
        }
    }

    /// How long the next try may wait for its answer.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// The try at `endpoint` got no answer in time: try the next endpoint at
    /// once (the wait was the pause), and wait longer there.
    pub fn timed_out(&mut self, endpoint: usize) -> Retry {
        self.suspect = Some(endpoint);
        self.attempt_timeout = self.attempt_timeout.saturating_mul(2).min(self.attempt_timeout_max);
        self.next(LeaderMove::Next, false)
    }

    /// `endpoint` could not be reached: the next one, after a pause.
    pub fn unreachable(&mut self, _endpoint: usize) -> Retry {
        self.next(LeaderMove::Next, true)
    }

    /// `endpoint` answered `error`. `hint` is the endpoint of the leader it
    /// named, if the client knows it; `any_node` requests (status, admin)
    /// take no redirect. `None`: retrying cannot help, report `error`.
    pub fn refused(
        &mut self,
        endpoint: usize,
        error: &ServerError,
        hint: Option<usize>,
        any_node: bool,
    ) -> Option<Retry> {
        if self.suspect == Some(endpoint) {
            self.suspect = None;
        }
        Some(match after_error(error) {
            Next::Redirect(_) if !any_node => {
                self.note_refused(endpoint);
                match hint {
                    Some(e) if e != endpoint && Some(e) != self.suspect && !self.has_refused(e) => {
                        let pause = self.hopped;
                        self.next(LeaderMove::To(e), pause)
                    }
                    _ => self.next(LeaderMove::Next, true),
                }
            }
            // Leadership changed after the write was appended: the same
            // request (same seq: it applies once either way), here.
            Next::RetrySame => self.next(LeaderMove::Stay, true),
            Next::RetryElsewhere => {
                self.note_refused(endpoint);
                self.next(LeaderMove::Next, true)
            }
            Next::Redirect(_) | Next::Fail => return None,
        })
    }

    /// `endpoint` refused: once every endpoint has, a new round starts
    /// (an election may have ended meanwhile).
    fn note_refused(&mut self, endpoint: usize) {
        if endpoint >= 64 {
            return;
        }
        self.refused |= 1 << endpoint;
        if self.refused.count_ones() as usize >= self.endpoints.min(64) {
            self.refused = 1 << endpoint;
        }
    }

    fn has_refused(&self, endpoint: usize) -> bool {
        endpoint < 64 && self.refused & (1 << endpoint) != 0
    }

    fn next(&mut self, leader: LeaderMove, pause: bool) -> Retry {
        self.hopped = !pause;
        Retry { leader, pause: if pause { self.backoff.next_delay() } else { Duration::ZERO } }
    }
}

/// The client's next step after an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The node is not the leader: try the hinted node (`None`: no leader
    /// known; try another node after a pause).
    Redirect(Option<NodeId>),
    /// Leadership changed after the write was appended: retry the same
    /// request (same session seq: it applies once either way) after a pause.
    RetrySame,
    /// The node cannot serve now (no leader yet, a group stopping, a
    /// refused proposal): try another node after a pause.
    RetryElsewhere,
    /// Retrying cannot fix it: report the error.
    Fail,
}

/// The step after `error`.
pub fn after_error(error: &ServerError) -> Next {
    match error {
        ServerError::NotLeader { leader, .. } => Next::Redirect(*leader),
        ServerError::MaybeCommitted { .. } => Next::RetrySame,
        ServerError::Unavailable { .. } => Next::RetryElsewhere,
        ServerError::NoSuchGroup { .. }
        | ServerError::BadRequest { .. }
        | ServerError::PeerPort { .. }
        | ServerError::ReplyTooLarge { .. }
        | ServerError::PermissionDenied { .. }
        | ServerError::Unauthenticated { .. } => Next::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter_and_resets() {
        let (first, max) = (Duration::from_millis(10), Duration::from_millis(200));
        let mut b = Backoff::new(first, max, 7);
        let mut bound = first;
        let mut total = Duration::ZERO;
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(d <= bound, "{d:?} above the bound {bound:?}");
            total += d;
            bound = (bound * 2).min(max);
        }
        // Full jitter: about half the cap on average once capped, never a
        // fixed value (no lockstep between clients).
        let mean = total / 200;
        assert!(mean > Duration::from_millis(50) && mean < Duration::from_millis(150), "{mean:?}");
        b.reset();
        assert!(b.next_delay() <= first);
        let (mut x, mut y) = (Backoff::new(max, max, 1), Backoff::new(max, max, 2));
        assert!((0..10).any(|_| x.next_delay() != y.next_delay()), "seeds differ, pauses differ");
    }

    fn route() -> Route {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200), 3);
        Route::new(b, Duration::from_millis(100), Duration::from_millis(350), 7)
    }

    fn not_leader(leader: Option<NodeId>) -> ServerError {
        ServerError::NotLeader { node: 1, group: 1, leader }
    }

    #[test]
    fn a_route_follows_a_fresh_hint_at_once_but_never_twice_in_a_row() {
        let mut r = route();
        let first = r.refused(0, &not_leader(Some(2)), Some(1), false).expect("retried");
        assert_eq!(
            first,
            Retry { leader: LeaderMove::To(1), pause: Duration::ZERO },
            "a fresh hint, at once"
        );
        let second = r.refused(1, &not_leader(Some(3)), Some(2), false).expect("retried");
        assert_eq!(second.leader, LeaderMove::To(2));
        assert!(!r.hopped, "a second hint in a row pauses");
        assert_eq!(r.backoff.bound, Duration::from_millis(20), "the pause was drawn from the backoff");
        // No hint, or a hint at the node itself: the next endpoint, paused.
        assert_eq!(r.refused(2, &not_leader(None), None, false).map(|r| r.leader), Some(LeaderMove::Next));
        assert_eq!(
            r.refused(3, &not_leader(Some(4)), Some(3), false).map(|r| r.leader),
            Some(LeaderMove::Next)
        );
        // Admin requests take no redirect; refusals are final.
        assert_eq!(r.refused(4, &not_leader(Some(6)), Some(5), true), None);
        assert_eq!(r.refused(4, &ServerError::BadRequest { reason: "key".into() }, None, false), None);
        assert_eq!(
            r.refused(4, &ServerError::MaybeCommitted { leader: None }, None, false).map(|r| r.leader),
            Some(LeaderMove::Stay),
            "maybe committed: the same request, same place"
        );
    }

    /// Simulator seed 358 (7 nodes): node 5 still named node 4 as leader,
    /// node 4 knew no leader, node 6 led. Following every hint bounced the
    /// request between 4 and 5 for the rest of the run.
    #[test]
    fn a_hint_back_to_an_endpoint_that_refused_this_round_is_not_followed() {
        let mut r = route();
        let at4 = r.refused(3, &not_leader(None), None, false).expect("retried");
        assert_eq!(at4.leader, LeaderMove::Next, "node 4 knows no leader: on to node 5");
        let at5 = r.refused(4, &not_leader(Some(4)), Some(3), false).expect("retried");
        assert_eq!(
            at5.leader,
            LeaderMove::Next,
            "node 5's hint points back at node 4, which refused: on to node 6"
        );
        // Once every endpoint refused, a new round trusts hints again.
        for e in [5, 6, 0, 1, 2] {
            r.refused(e, &not_leader(None), None, false);
        }
        assert_eq!(
            r.refused(4, &not_leader(Some(4)), Some(3), false).map(|r| r.leader),
            Some(LeaderMove::To(3))
        );
    }

    #[test]
    fn a_timed_out_endpoint_is_suspect_and_each_timeout_doubles_the_wait_to_its_cap() {
        let mut r = route();
        assert_eq!(r.timed_out(2), Retry { leader: LeaderMove::Next, pause: Duration::ZERO });
        assert_eq!(r.attempt_timeout(), Duration::from_millis(200));
        // Its hint is not followed while it is suspect (it may be frozen itself).
        assert_eq!(
            r.refused(0, &not_leader(Some(3)), Some(2), false).map(|r| r.leader),
            Some(LeaderMove::Next)
        );
        // Once it answers, it is trusted again.
        r.refused(2, &ServerError::MaybeCommitted { leader: None }, None, false);
        assert_eq!(
            r.refused(1, &not_leader(Some(3)), Some(2), false).map(|r| r.leader),
            Some(LeaderMove::To(2))
        );
        r.timed_out(0);
        assert_eq!(r.attempt_timeout(), Duration::from_millis(350), "capped");
    }

    #[test]
    fn hints_are_followed_maybe_committed_retried_in_place_and_refusals_final() {
        let not_leader = ServerError::NotLeader { node: 1, group: 1, leader: Some(3) };
        assert_eq!(after_error(&not_leader), Next::Redirect(Some(3)));
        assert_eq!(after_error(&ServerError::MaybeCommitted { leader: None }), Next::RetrySame);
        assert_eq!(
            after_error(&ServerError::Unavailable { reason: "no leader".into() }),
            Next::RetryElsewhere
        );
        assert_eq!(after_error(&ServerError::BadRequest { reason: "bad key".into() }), Next::Fail);
    }
}
