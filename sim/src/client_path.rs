//! The simulated connection between a client and a node's request path
//! (`tarn_service::RequestPath`, the code the server runs): a client's
//! request travels as an encoded `ClientFrame`, the node decodes it and
//! feeds it to the path, and the path's `ServerFrame`s come back encoded.
//!
//! The path hands its inputs to a [`SimPort`], which passes them to the
//! node's executor with two looks of the simulator's own: a linearizable
//! read records the applied index it ran at and the commit floor when it
//! arrived (the read-index checks), and a proposal's answer must be one kv
//! response per request of its entry (a lone frame's write travels alone; a
//! shared session's connection reader packs the writes it finds together).
//! Answers go to the node's mailbox through a [`ClientSink`], so the world
//! plays them in order.

use std::sync::Arc;

use bytes::Bytes;
use tarn_core::Index;
use tarn_io::driver::{GroupInput, ProposeFn, ReadFn};
use tarn_io::wire::{self, WireError};
use tarn_kv::decode_entry;
use tarn_service::protocol::{ClientFrame, ServerFrame, MAX_CLIENT_FRAME_BYTES};
use tarn_service::{FrameSink, GroupPort};

use crate::exec::{Mailbox, SimEvent, SimSm};

/// Where one client's answers from one node go: the node's mailbox.
#[derive(Clone)]
pub(crate) struct ClientSink {
    pub client: u32,
    pub mailbox: Mailbox,
    /// A connection shared by a session's tasks: which client sent each
    /// request id (answers to others go to `client`).
    pub routes: Option<Arc<Vec<(u64, u32)>>>,
}

impl FrameSink for ClientSink {
    fn send(&self, frame: ServerFrame) {
        let routed = match (&frame, &self.routes) {
            (ServerFrame::Response { id, .. }, Some(routes)) => {
                routes.iter().find(|(request, _)| request == id).map(|&(_, client)| client)
            }
            _ => None,
        };
        self.mailbox.push(SimEvent::Frame { client: routed.unwrap_or(self.client), frame });
    }

    fn send_watch(&self, frame: ServerFrame) -> bool {
        self.send(frame);
        true
    }
}

/// The executor's inputs for one request, with the simulator's looks.
pub(crate) struct SimPort {
    pub inputs: Vec<GroupInput<SimSm>>,
    pub mailbox: Mailbox,
    /// The request's id (the client's attempt).
    pub attempt: u64,
    /// The highest commit index of any node when the request arrived.
    pub floor: Index,
}

impl GroupPort<SimSm> for SimPort {
    fn propose(&mut self, data: Bytes, reply: ProposeFn<SimSm>) {
        let (mailbox, attempt) = (self.mailbox.clone(), self.attempt);
        let requests = decode_entry(&data).map_or(0, |entry| entry.requests.len());
        let reply: ProposeFn<SimSm> = Box::new(move |outcome| {
            match &outcome {
                Ok(Err(error)) => mailbox.push(SimEvent::BadAnswer {
                    property: "kv-decode",
                    detail: format!("proposal {attempt}: {error}"),
                }),
                Ok(Ok(responses)) if responses.len() != requests => mailbox.push(SimEvent::BadAnswer {
                    property: "proposal-routing",
                    detail: format!(
                        "proposal {attempt} of {requests} request(s) was answered with {} responses",
                        responses.len()
                    ),
                }),
                _ => {}
            }
            reply(outcome);
        });
        self.inputs.push(GroupInput::Propose { data, reply });
    }

    fn read(&mut self, linearizable: bool, f: ReadFn<SimSm>) {
        if !linearizable {
            // A local read (a watch's registration, an unwatch) promises
            // nothing about the index it runs at: no read-index look.
            self.inputs.push(GroupInput::Read { linearizable, f });
            return;
        }
        let (mailbox, attempt, floor) = (self.mailbox.clone(), self.attempt, self.floor);
        let f: ReadFn<SimSm> = Box::new(move |sm| match sm {
            Ok(sm) => {
                let applied = sm.kv.applied_index();
                mailbox.push(SimEvent::ReadServed { attempt, applied, floor });
                f(Ok(sm))
            }
            Err(e) => f(Err(e)),
        });
        self.inputs.push(GroupInput::Read { linearizable, f });
    }
}

/// A client's request as it travels: one encoded frame.
pub(crate) fn encode_request(frame: &ClientFrame) -> Result<Bytes, WireError> {
    wire::encode_frame_vec(frame, MAX_CLIENT_FRAME_BYTES).map(Bytes::from)
}

/// A node's answer as it travels: one encoded frame.
pub(crate) fn encode_answer(frame: &ServerFrame) -> Result<Bytes, WireError> {
    wire::encode_frame_vec(frame, MAX_CLIENT_FRAME_BYTES).map(Bytes::from)
}

/// Decodes a client's request (one whole frame), or says why it does not decode.
pub(crate) fn decode_request(bytes: &[u8]) -> Result<ClientFrame, String> {
    let decoded = wire::decode_frame::<ClientFrame>(bytes, MAX_CLIENT_FRAME_BYTES);
    whole(decoded.map_err(|e| e.to_string())?, bytes.len())
}

/// Decodes a node's answer (one whole frame), or says why it does not decode.
pub(crate) fn decode_answer(bytes: &[u8]) -> Result<ServerFrame, String> {
    let decoded = wire::decode_frame::<ServerFrame>(bytes, MAX_CLIENT_FRAME_BYTES);
    whole(decoded.map_err(|e| e.to_string())?, bytes.len())
}

/// What travelled is one whole frame: no more, no less.
fn whole<T>(decoded: Option<(T, usize)>, len: usize) -> Result<T, String> {
    match decoded {
        Some((frame, used)) if used == len => Ok(frame),
        Some((_, used)) => Err(format!("{} bytes after a frame of {used}", len - used)),
        None => Err(format!("an incomplete frame of {len} bytes")),
    }
}
