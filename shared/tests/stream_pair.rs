//! A relay-role and an agent-role stream state machine, paired over a simulated tunnel with
//! random socket reads (frame splitting), random socket drains, random FIN timing and an
//! optional RST from either side at a random moment. Whatever the schedule:
//! - bytes arrive in order and unchanged (what a socket got is a prefix of what was sent);
//! - neither v2 (credit) nor v1 (a full queue stops the tunnel reader) ever resets on its own
//!   (no spurious RST), and both ends finish with every byte;
//! - an injected RST reaches the other side, which never answers it, and both ends are over.
//!
//! v2 runs with and without receive-window autotuning, on a clock that moves with the schedule
//! (now and then past the idle limit, so windows grow and shrink back).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nowconnect_shared::stream::{Event, Reset, Role, Stream, StreamParams};
use nowconnect_shared::{Drain, Frame, RstCode, Version};
use proptest::prelude::*;

const MAX_PAYLOAD: usize = 1000;

/// One end: its state machine and its (simulated) socket.
struct End {
    s: Stream,
    /// What this end's socket will hand us to send.
    source: Vec<u8>,
    read: usize,
    /// Admitted, not yet written to the socket.
    pending: VecDeque<Bytes>,
    /// Written to the socket (what the far application received).
    written: Vec<u8>,
    /// The socket's write side was shut.
    shut: bool,
    /// Frames on their way to the other end.
    out: VecDeque<Frame>,
    /// The RST this end received, if any.
    got_rst: Option<RstCode>,
    /// The RST this end sent, if any.
    sent_rst: Option<RstCode>,
    /// This end's clock: it drains at this time.
    now: Instant,
}

impl End {
    fn new(role: Role, params: &StreamParams, source: Vec<u8>) -> End {
        End {
            s: Stream::new(1, role, params),
            source,
            read: 0,
            pending: VecDeque::new(),
            written: Vec::new(),
            shut: false,
            out: VecDeque::new(),
            got_rst: None,
            sent_rst: None,
            now: Instant::now(),
        }
    }

    fn send_rst(&mut self, rst: Frame) {
        if let Frame::Rst { code, .. } = &rst {
            self.sent_rst = Some(*code);
        }
        self.pending.clear();
        self.out.push_back(rst);
    }

    /// The socket has `chunk` bytes ready: read what the budget allows. Returns progress.
    fn read(&mut self, chunk: usize) -> bool {
        if self.s.is_over() {
            return false;
        }
        let budget = self.s.read_budget(MAX_PAYLOAD);
        if budget == 0 {
            return false;
        }
        if self.read == self.source.len() {
            if let Some(fin) = self.s.on_eof() {
                self.out.push_back(fin);
                return true;
            }
            return false;
        }
        let n = chunk.clamp(1, budget).min(self.source.len() - self.read);
        let payload = Bytes::copy_from_slice(&self.source[self.read..self.read + n]);
        self.read += n;
        match self.s.on_read(payload) {
            Ok(f) => self.out.push_back(f),
            Err(rst) => self.send_rst(rst),
        }
        true
    }

    /// The socket takes up to `room` bytes.
    fn drain(&mut self, room: usize) -> bool {
        if self.s.is_over() || self.pending.is_empty() {
            return false;
        }
        let mut left = room.max(1);
        let (mut bytes, mut frames) = (0, 0);
        while left > 0 {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let n = front.len().min(left);
            self.written.extend_from_slice(&front[..n]);
            let rest = front.slice(n..);
            left -= n;
            bytes += n;
            if rest.is_empty() {
                self.pending.pop_front();
                frames += 1;
            } else {
                *front = rest;
            }
        }
        match self
            .s
            .on_written(bytes, frames, Drain::at(self.now, u32::MAX))
        {
            Ok(w) => {
                if let Some(win) = w.window {
                    self.out.push_back(win);
                }
                if w.shutdown {
                    self.shut_write();
                }
            }
            Err(rst) => self.send_rst(rst),
        }
        true
    }

    fn shut_write(&mut self) {
        assert!(!self.shut, "the write side is shut once");
        assert!(self.pending.is_empty(), "shut with bytes still to write");
        self.shut = true;
        self.s.on_write_shut();
    }

    fn receive(&mut self, f: Frame) {
        let was_over = self.s.is_over();
        let reset_in = matches!(f, Frame::Rst { .. });
        match self.s.on_frame(f) {
            Ok(Event::Data(b)) => {
                if !b.is_empty() {
                    self.pending.push_back(b)
                }
            }
            Ok(Event::ShutdownWrite) => self.shut_write(),
            Ok(Event::None) => {}
            Ok(Event::PeerReset(code)) => {
                assert!(reset_in);
                self.got_rst = Some(code);
                self.pending.clear();
            }
            Err(rst) => {
                assert!(!was_over, "a finished stream does not answer");
                self.send_rst(rst);
            }
        }
    }
}

/// Moves one frame from `a`'s wire to `b`, unless `b`'s queue is full (v1 backpressure: the
/// tunnel is not read then).
fn deliver(a: &mut End, b: &mut End) -> bool {
    if !b.s.is_over() && b.s.recv.is_full() {
        return false;
    }
    match a.out.pop_front() {
        Some(f) => {
            b.receive(f);
            true
        }
        None => false,
    }
}

fn run(
    version: Version,
    window: u32,
    max_window: u32,
    up: Vec<u8>,
    down: Vec<u8>,
    ops: Vec<(u8, u16)>,
    rst_at: Option<(bool, usize)>,
) {
    let params = StreamParams {
        window,
        max_window,
        v1_max_frames: 8,
        v1_max_bytes: 4 * MAX_PAYLOAD,
        ..StreamParams::new(version)
    };
    let mut relay = End::new(Role::Relay, &params, up.clone());
    let mut agent = End::new(Role::Agent, &params, down.clone());
    let step = |i: usize, op: u8, size: usize, relay: &mut End, agent: &mut End| -> bool {
        if let Some((by_relay, at)) = rst_at {
            if i == at {
                let who = if by_relay { &mut *relay } else { &mut *agent };
                if !who.s.is_over() {
                    let rst = who.s.reset(Reset::new(RstCode::IdleTimeout, ""));
                    who.send_rst(rst);
                    return true;
                }
            }
        }
        // The clock moves with the schedule; now and then a pause past the idle limit.
        let pause =
            Duration::from_micros(size as u64) + Duration::from_millis(1100) * u32::from(op >= 250);
        relay.now += pause;
        agent.now += pause;
        match op % 6 {
            0 => relay.read(size),
            1 => agent.read(size),
            2 => deliver(relay, agent),
            3 => deliver(agent, relay),
            4 => relay.drain(size),
            _ => agent.drain(size),
        }
    };
    let mut i = 0;
    for (op, size) in ops {
        step(i, op, size as usize, &mut relay, &mut agent);
        i += 1;
    }
    // Then a fair schedule until nothing moves: everything must settle (no deadlock).
    for round in 0..1_000_000usize {
        let mut moved = false;
        for op in 0..6u8 {
            moved |= step(i, op, 700 + round % 300, &mut relay, &mut agent);
            i += 1;
        }
        if !moved && rst_at.is_none_or(|(_, at)| i > at) {
            break;
        }
    }
    assert!(
        relay.out.is_empty() && agent.out.is_empty(),
        "frames left on the wire"
    );

    // In order and unchanged, whatever happened.
    assert!(
        up.starts_with(&agent.written),
        "c2a bytes changed or reordered"
    );
    assert!(
        down.starts_with(&relay.written),
        "a2c bytes changed or reordered"
    );
    assert!(relay.s.is_over() && agent.s.is_over(), "both ends are over");

    let injected = relay.sent_rst == Some(RstCode::IdleTimeout)
        || agent.sent_rst == Some(RstCode::IdleTimeout);
    if injected {
        // The other side took it and did not answer.
        let (sender, other) = if relay.sent_rst.is_some() {
            (&relay, &agent)
        } else {
            (&agent, &relay)
        };
        assert!(sender.got_rst.is_none() || sender.got_rst == other.sent_rst);
        assert!(
            other.sent_rst.is_none() || other.got_rst.is_none(),
            "an RST was answered"
        );
        return;
    }
    if let Some(code) = relay.sent_rst.or(agent.sent_rst) {
        panic!("{version:?}: spurious RST {code:?}");
    }
    assert!(relay.s.is_finished() && agent.s.is_finished());
    assert_eq!(agent.written, up, "every c2a byte arrived");
    assert_eq!(relay.written, down, "every a2c byte arrived");
    assert!(relay.shut && agent.shut);
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn ops() -> impl Strategy<Value = Vec<(u8, u16)>> {
    prop::collection::vec((any::<u8>(), 1u16..3000), 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn v2_conserves_bytes_and_never_resets(
        up in bytes(20_000), down in bytes(20_000), ops in ops(), window in 1u32..5000,
        grow in 0u32..4,
    ) {
        run(Version::V2, window, window << grow, up, down, ops, None);
    }

    #[test]
    fn v1_conserves_bytes_and_never_resets(up in bytes(20_000), down in bytes(20_000), ops in ops()) {
        run(Version::V1, 0, 0, up, down, ops, None);
    }

    #[test]
    fn an_rst_at_any_moment_ends_both_ends(
        up in bytes(10_000), down in bytes(10_000), ops in ops(),
        by_relay in any::<bool>(), at in 0usize..600, v1 in any::<bool>(),
    ) {
        let version = if v1 { Version::V1 } else { Version::V2 };
        run(version, 3000, 12_000, up, down, ops, Some((by_relay, at)));
    }
}
