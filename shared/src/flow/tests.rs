//! Credit flow control: fixed windows, autotuning over simulated links, the tunnel lead.
use super::*;

#[test]
fn send_credit_never_negative() {
    let mut c = SendCredit::new(10);
    assert!(c.consume(4).is_ok());
    assert_eq!(c.available(), 6);
    assert_eq!(
        c.consume(7),
        Err(FlowError::NoCredit {
            len: 7,
            available: 6
        })
    );
    assert_eq!(c.available(), 6, "a refused consume spends nothing");
    assert!(c.consume(6).is_ok());
    assert_eq!(c.available(), 0);
    assert!(c.consume(usize::MAX).is_err());
}

#[test]
fn send_credit_overflow_detected() {
    let mut c = SendCredit::new(MAX_WINDOW - 5);
    assert!(c.grant(5).is_ok());
    assert_eq!(
        c.grant(1),
        Err(FlowError::Overflow {
            current: MAX_WINDOW,
            increment: 1
        })
    );
    let mut c = SendCredit::new(1);
    assert!(c.grant(u32::MAX).is_err());
    assert_eq!(c.available(), 1);
}

#[test]
fn window_update_sent_after_half_the_window_drains() {
    let mut w = RecvWindow::new(100);
    assert_eq!(w.threshold(), 50);
    w.on_data(100).expect("within window");
    assert_eq!(w.remaining(), 0);
    assert_eq!(w.on_drained(49), Ok(None), "49 < half: no WINDOW yet");
    assert_eq!(w.on_drained(1), Ok(Some(50)), "half drained: grant it back");
    assert_eq!(w.remaining(), 50);
    assert_eq!(w.on_drained(50), Ok(Some(50)));
    assert_eq!(w.remaining(), 100);
    assert_eq!(w.buffered(), 0);
}

#[test]
fn peer_exceeding_credit_is_an_error() {
    let mut w = RecvWindow::new(10);
    w.on_data(8).expect("within window");
    assert_eq!(
        w.on_data(3),
        Err(FlowError::PeerExceeded {
            len: 3,
            available: 2
        })
    );
    assert_eq!(w.buffered(), 8, "refused data is not accounted");
}

#[test]
fn draining_more_than_received_is_refused() {
    let mut w = RecvWindow::new(10);
    w.on_data(3).expect("within window");
    assert!(w.on_drained(4).is_err());
}

#[test]
fn sender_and_receiver_stay_in_step() {
    // A sender that only sends within credit never trips the receiver, whatever the sizes.
    let mut tx = SendCredit::new(DEFAULT_WINDOW);
    let mut rx = RecvWindow::new(DEFAULT_WINDOW);
    let mut sent = 0usize;
    for i in 0..10_000usize {
        let len = (i * 7919) % 70_000 + 1;
        let len = len.min(tx.available() as usize);
        if len == 0 {
            panic!("deadlock: no credit while the receiver drained everything");
        }
        tx.consume(len).expect("credit was available");
        rx.on_data(len).expect("sender stayed within credit");
        sent += len;
        if let Some(inc) = rx.on_drained(len).expect("drained what was received") {
            tx.grant(inc).expect("no overflow");
        }
        assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
    }
    assert!(sent > 10 * DEFAULT_WINDOW as usize);
}

/// A one-stream transfer over a link of `rate` bytes per second and a round trip of `rtt`,
/// from `t0` for `secs` of simulated time, with a reader that drains every byte as it
/// arrives: the sender sends 16 KiB frames while it has credit, WINDOW frames take half a
/// round trip back. Then what is in flight lands. Returns the bytes delivered in time and
/// the sender's credit, in step with `rx`.
fn transfer(
    rx: &mut RecvWindow,
    t0: Instant,
    rate: u64,
    rtt: Duration,
    room: u32,
    secs: u64,
) -> (u64, SendCredit) {
    use std::collections::BTreeMap;
    const FRAME: u32 = 16 * 1024;
    let half = rtt / 2;
    let mut tx = SendCredit::new(rx.remaining());
    // Events by time: DATA arriving at the receiver, WINDOW arriving at the sender.
    let mut events: BTreeMap<(Duration, u64), Result<u32, u32>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut link_free = Duration::ZERO;
    let mut now = Duration::ZERO;
    let mut delivered = 0u64;
    let end = Duration::from_secs(secs);
    let per_byte = Duration::from_secs(1).as_nanos() as u64 / rate.max(1);
    while let Some(((at, _), ev)) = events.pop_first().or_else(|| {
        // Nothing in flight: only at the start, when the sender has not sent yet.
        (now == Duration::ZERO && seq == 0).then_some(((Duration::ZERO, 0), Err(0)))
    }) {
        now = at;
        match ev {
            Ok(len) => {
                rx.on_data(len as usize)
                    .expect("sender stayed within credit");
                if now <= end {
                    delivered += u64::from(len);
                }
                let drain = Drain::at(t0 + now, room);
                if let Some(inc) = rx.on_drained_at(len as usize, drain).expect("drained") {
                    seq += 1;
                    events.insert((now + half, seq), Err(inc));
                }
            }
            Err(0) => {}
            Err(inc) => tx.grant(inc).expect("no overflow"),
        }
        // The sender sends what its credit allows, paced by the link, until the end.
        while tx.available() > 0 && now <= end {
            let len = tx.available().min(FRAME);
            tx.consume(len as usize).expect("within credit");
            link_free = link_free.max(now) + Duration::from_nanos(per_byte * u64::from(len));
            seq += 1;
            events.insert((link_free + half, seq), Ok(len));
        }
    }
    assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
    (delivered, tx)
}

const MIB: u32 = 1024 * 1024;

#[test]
fn a_window_that_limits_the_stream_grows_to_the_link() {
    // 200 Mbit/s, 50 ms: 1.25 MB in flight. The fixed window carries 256 KiB per round trip.
    let rate = 25_000_000;
    let rtt = Duration::from_millis(50);
    let t0 = Instant::now();
    let mut rx = RecvWindow::new(DEFAULT_WINDOW);
    let (fixed, _) = transfer(&mut rx, t0, rate, rtt, MIB * 64, 10);
    assert_eq!(rx.window(), DEFAULT_WINDOW);
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
    let (tuned, _) = transfer(&mut rx, t0, rate, rtt, MIB * 64, 10);
    let w = rx.window();
    let link = rate * 10;
    assert!(fixed < link / 4, "fixed window: {fixed} of {link}");
    assert!(tuned > link * 9 / 10, "autotuned: {tuned} of {link}");
    // It stops between two and four bandwidth-delay products (1.25 MB), far below the cap.
    assert!((2_500_000..=5_000_000 + 2 * MIB).contains(&w), "window {w}");
}

#[test]
fn a_window_the_link_fills_does_not_grow() {
    // 8 Mbit/s, 20 ms: 20 KB in flight, a tenth of the initial window. The first round
    // trips are timed behind the sender's own burst (at most a doubling), then no more.
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
    let rtt = Duration::from_millis(20);
    let (delivered, _) = transfer(&mut rx, Instant::now(), 1_000_000, rtt, 64 * MIB, 10);
    assert!(rx.window() <= 2 * DEFAULT_WINDOW, "window {}", rx.window());
    assert!(delivered > 9_500_000, "the link stays full: {delivered}");
}

#[test]
fn growth_stays_within_the_room_and_the_maximum() {
    let rate = 25_000_000;
    let rtt = Duration::from_millis(50);
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
    transfer(&mut rx, Instant::now(), rate, rtt, 0, 5);
    assert_eq!(rx.window(), DEFAULT_WINDOW, "no room: no growth");
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, MIB);
    transfer(&mut rx, Instant::now(), rate, rtt, 64 * MIB, 5);
    assert_eq!(rx.window(), MIB, "capped at the maximum");
    // Room for 100 KiB at a time: each step grows by at most that much.
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut tx = SendCredit::new(DEFAULT_WINDOW);
    let mut last = rx.window();
    for round in 0..20u64 {
        let n = tx.available() as usize;
        tx.consume(n).expect("credit");
        rx.on_data(n).expect("within window");
        // Half the window at once, then the other half 1 ms later: 50 ms after the last.
        let a = n / 2;
        for (len, t) in [(a, round * 50), (n - a, round * 50 + 1)] {
            if let Some(inc) = rx
                .on_drained_at(len, Drain::at(ms(t), 100 * 1024))
                .expect("drained")
            {
                tx.grant(inc).expect("no overflow");
            }
        }
        assert!(
            rx.window() - last <= 100 * 1024,
            "grew by more than the room"
        );
        last = rx.window();
        assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
    }
    assert!(rx.window() > DEFAULT_WINDOW, "it did grow: {}", rx.window());
}

#[test]
fn an_idle_stream_shrinks_back_and_credit_stays_in_step() {
    let rate = 25_000_000;
    let rtt = Duration::from_millis(50);
    // Grow it first, with the sender's credit in step.
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
    let t0 = Instant::now();
    let (_, mut tx) = transfer(&mut rx, t0, rate, rtt, 64 * MIB, 5);
    let mut t = Duration::from_secs(6);
    let grown = rx.window();
    assert!(grown >= 4 * DEFAULT_WINDOW, "grew: {grown}");
    // Two seconds of silence, then a slow trickle: credit is withheld until the window is
    // the initial one again, and it never returns more than drained meanwhile.
    t += Duration::from_secs(2);
    let mut returned = 0u64;
    let mut drained = 0u64;
    for _ in 0..2_000 {
        let n = (tx.available() as usize).min(4096);
        if n == 0 {
            break;
        }
        tx.consume(n).expect("credit");
        rx.on_data(n).expect("within window");
        t += Duration::from_millis(10);
        drained += n as u64;
        if let Some(inc) = rx.on_drained_at(n, Drain::at(t0 + t, 0)).expect("drained") {
            tx.grant(inc).expect("no overflow");
            returned += u64::from(inc);
        }
        assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
        assert!(returned <= drained);
    }
    assert_eq!(rx.window(), DEFAULT_WINDOW, "back to the initial window");
    assert!(
        tx.available() > 0,
        "the sender is never left without credit"
    );
}

#[test]
fn autotuned_sender_and_receiver_stay_in_step() {
    let mut tx = SendCredit::new(DEFAULT_WINDOW);
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 8 * MIB);
    let t0 = Instant::now();
    let mut t = Duration::ZERO;
    for i in 0..20_000u64 {
        let len = ((i * 7919) % 70_000 + 1) as usize;
        let len = len.min(tx.available() as usize);
        assert!(
            len > 0,
            "deadlock: no credit while the receiver drained everything"
        );
        tx.consume(len).expect("credit was available");
        rx.on_data(len).expect("sender stayed within credit");
        // Bursts and pauses, some past the idle limit.
        t += Duration::from_micros((i * 104_729) % 3_000) + IDLE_SHRINK * u32::from(i % 997 == 0);
        let room = if i % 3 == 0 { 0 } else { 512 * 1024 };
        if let Some(inc) = rx
            .on_drained_at(len, Drain::at(t0 + t, room))
            .expect("drained what was received")
        {
            tx.grant(inc).expect("no overflow");
        }
        assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
        assert!(rx.window() <= 8 * MIB);
        assert!(rx.window() >= DEFAULT_WINDOW);
    }
}

#[test]
fn the_lead_is_offered_to_others_follows_its_owner_and_lapses() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut lead = Lead::default();
    assert_eq!(lead.offer(1, t0), 0, "no lead yet");
    lead.update(1, 4 * MIB, ms(0));
    assert_eq!(lead.offer(2, ms(10)), 4 * MIB);
    assert_eq!(lead.offer(1, ms(10)), 0, "never offered to its owner");
    // A smaller window elsewhere does not take it; the owner shrinking does.
    lead.update(2, MIB, ms(20));
    assert_eq!(lead.offer(3, ms(20)), 4 * MIB);
    lead.update(1, 2 * MIB, ms(30));
    assert_eq!(lead.offer(3, ms(30)), 2 * MIB);
    // The owner stops draining: the lead lapses, and the next drain sets a new one.
    assert_eq!(lead.offer(2, ms(30) + IDLE_SHRINK), 0);
    lead.update(2, MIB, ms(30) + IDLE_SHRINK);
    assert_eq!(lead.offer(3, ms(31) + IDLE_SHRINK), MIB);
}

#[test]
fn an_idle_leader_shrinks_back_though_others_follow_it() {
    let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
    let t0 = Instant::now();
    let (_, mut tx) = transfer(
        &mut rx,
        t0,
        25_000_000,
        Duration::from_millis(50),
        64 * MIB,
        5,
    );
    assert!(rx.window() > DEFAULT_WINDOW);
    let mut lead = Lead::default();
    lead.update(1, rx.window(), t0 + Duration::from_secs(6));
    let mut t = Duration::from_secs(8);
    for _ in 0..2_000 {
        let n = (tx.available() as usize).min(4096);
        tx.consume(n).expect("credit");
        rx.on_data(n).expect("within window");
        t += Duration::from_millis(10);
        let at = Drain::at(t0 + t, 64 * MIB).with_lead(lead.offer(1, t0 + t));
        if let Some(inc) = rx.on_drained_at(n, at).expect("drained") {
            tx.grant(inc).expect("no overflow");
        }
        lead.update(1, rx.window(), t0 + t);
    }
    assert_eq!(
        rx.window(),
        DEFAULT_WINDOW,
        "its own lead does not hold it up"
    );
}
