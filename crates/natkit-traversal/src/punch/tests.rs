use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const ID: u64 = 0x1234_5678_9abc_def0;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn alice_addrs() -> Vec<SocketAddr> {
    vec![sa("203.0.113.10:50500")]
}

fn bob_addrs() -> Vec<SocketAddr> {
    vec![sa("203.0.113.20:50500")]
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(p: &mut Punch) -> Vec<Output> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

fn connect(attempt: u8, addrs: Vec<SocketAddr>) -> Message {
    Message::Connect {
        id: ID,
        attempt,
        addrs,
    }
}

fn reply(attempt: u8) -> Message {
    Message::ConnectReply {
        id: ID,
        attempt,
        addrs: bob_addrs(),
    }
}

fn initiator(t0: Instant) -> Punch {
    Punch::initiate(ID, &alice_addrs(), PunchConfig::default(), t0)
}

fn responder(t0: Instant) -> Punch {
    Punch::respond(
        &connect(1, alice_addrs()),
        &bob_addrs(),
        PunchConfig::default(),
        t0,
    )
    .unwrap()
}

/// Runs an initiator to its `Dial` of attempt `attempt` (reply after `rtt`).
fn to_dial(p: &mut Punch, at: Instant, attempt: u8, rtt: Duration) -> Instant {
    p.handle_message(&reply(attempt), at + rtt).unwrap();
    let dial_at = at + rtt + rtt / 2;
    p.handle_timeout(dial_at);
    drain(p);
    dial_at
}

#[test]
fn initiator_sends_connect_then_sync_and_dials_half_an_rtt_later() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    assert_eq!(drain(&mut p), vec![Output::Send(connect(1, alice_addrs()))]);
    assert_eq!(p.poll_timeout(), Some(t0 + PUNCH_REPLY_TIMEOUT));

    p.handle_message(&reply(1), t0 + ms(100)).unwrap();
    assert_eq!(
        drain(&mut p),
        vec![Output::Send(Message::Sync { id: ID, attempt: 1 })]
    );
    assert_eq!(p.rtt(), Some(ms(100)));
    assert_eq!(p.poll_timeout(), Some(t0 + ms(150)));

    p.handle_timeout(t0 + ms(149));
    assert!(drain(&mut p).is_empty(), "not yet");
    p.handle_timeout(t0 + ms(150));
    let dial = Output::Dial {
        attempt: 1,
        addrs: bob_addrs(),
    };
    assert_eq!(drain(&mut p), vec![dial]);
    assert_eq!(p.poll_timeout(), Some(t0 + ms(150) + PUNCH_DIAL_TIMEOUT));

    p.handle_dial_result(bob_addrs()[0], DialResult::Connected, t0 + ms(160));
    let done = Output::Succeeded {
        attempt: 1,
        addr: bob_addrs()[0],
        rtt: Some(ms(100)),
    };
    assert_eq!(drain(&mut p), vec![done]);
    assert!(p.is_done());
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn responder_replies_and_dials_on_sync() {
    let t0 = Instant::now();
    let mut p = responder(t0);
    assert_eq!(p.role(), PunchRole::Responder);
    assert_eq!(drain(&mut p), vec![Output::Send(reply(1))]);
    p.handle_message(&Message::Sync { id: ID, attempt: 1 }, t0 + ms(50))
        .unwrap();
    let dial = Output::Dial {
        attempt: 1,
        addrs: alice_addrs(),
    };
    assert_eq!(drain(&mut p), vec![dial]);
    p.handle_dial_result(alice_addrs()[0], DialResult::Connected, t0 + ms(60));
    assert!(matches!(
        drain(&mut p)[..],
        [Output::Succeeded {
            attempt: 1,
            rtt: None,
            ..
        }]
    ));
}

/// Both machines over a channel with `one_way` delay in each direction:
/// returns when each side dialed.
fn simulate(one_way: Duration) -> (Instant, Instant, Instant) {
    let t0 = Instant::now();
    let mut a = initiator(t0);
    let Some(Output::Send(c)) = a.poll_output() else {
        panic!()
    };
    let mut b = Punch::respond(&c, &bob_addrs(), PunchConfig::default(), t0 + one_way).unwrap();
    let Some(Output::Send(r)) = b.poll_output() else {
        panic!()
    };
    a.handle_message(&r, t0 + one_way * 2).unwrap();
    let Some(Output::Send(sync)) = a.poll_output() else {
        panic!()
    };
    let a_dial = match a.poll_output() {
        // Zero RTT: the dial comes at once.
        Some(Output::Dial { .. }) => t0 + one_way * 2,
        None => {
            let at = a.poll_timeout().unwrap();
            a.handle_timeout(at);
            assert!(matches!(a.poll_output(), Some(Output::Dial { .. })));
            at
        }
        other => panic!("{other:?}"),
    };
    let b_dial = t0 + one_way * 3;
    b.handle_message(&sync, b_dial).unwrap();
    assert!(matches!(b.poll_output(), Some(Output::Dial { .. })));
    (t0, a_dial, b_dial)
}

#[test]
fn both_sides_dial_at_the_same_moment() {
    for one_way in [ms(0), ms(1), ms(20), ms(150), ms(999)] {
        let (t0, a_dial, b_dial) = simulate(one_way);
        assert_eq!(a_dial, b_dial, "one-way delay {one_way:?}");
        assert_eq!(a_dial - t0, one_way * 3);
    }
}

#[test]
fn zero_rtt_dials_at_once() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    p.handle_message(&reply(1), t0).unwrap();
    let out = drain(&mut p);
    assert!(
        matches!(
            out[..],
            [Output::Send(Message::Sync { .. }), Output::Dial { .. }]
        ),
        "{out:?}"
    );
}

#[test]
fn failed_dials_start_a_fresh_attempt_up_to_three() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    let mut now = t0;
    for attempt in 1..=MAX_PUNCH_ATTEMPTS {
        let rtt = ms(100 * u64::from(attempt));
        now = to_dial(&mut p, now, attempt, rtt);
        assert_eq!(p.rtt(), Some(rtt), "fresh RTT each attempt");
        p.handle_dial_result(bob_addrs()[0], DialResult::Failed, now);
        let out = drain(&mut p);
        if attempt < MAX_PUNCH_ATTEMPTS {
            assert_eq!(out, vec![Output::Send(connect(attempt + 1, alice_addrs()))]);
            assert_eq!(p.attempt(), attempt + 1);
        } else {
            let cancel = Message::Cancel {
                id: ID,
                attempt,
                reason: CancelReason::AttemptsExhausted,
            };
            let failed = Output::Failed(PunchFailure::AttemptsExhausted(3));
            assert_eq!(out, vec![Output::Send(cancel), failed]);
        }
    }
    assert!(p.is_done());
}

#[test]
fn dial_timeout_ends_an_attempt() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    let dialed = to_dial(&mut p, t0, 1, ms(10));
    p.handle_timeout(dialed + PUNCH_DIAL_TIMEOUT);
    assert_eq!(drain(&mut p), vec![Output::Send(connect(2, alice_addrs()))]);
}

#[test]
fn no_reply_retries_then_fails() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    let mut now = t0;
    for attempt in 1..=MAX_PUNCH_ATTEMPTS {
        assert!(
            matches!(drain(&mut p)[..], [Output::Send(Message::Connect { attempt: a, .. })] if a == attempt)
        );
        now += PUNCH_REPLY_TIMEOUT;
        p.handle_timeout(now);
    }
    let out = drain(&mut p);
    assert_eq!(out.last(), Some(&Output::Failed(PunchFailure::NoReply)));
}

#[test]
fn overall_timeout_wins() {
    let t0 = Instant::now();
    let config = PunchConfig {
        timeout: ms(300),
        ..PunchConfig::default()
    };
    let mut p = Punch::initiate(ID, &alice_addrs(), config, t0);
    drain(&mut p);
    assert_eq!(p.poll_timeout(), Some(t0 + ms(300)));
    p.handle_timeout(t0 + ms(300));
    let cancel = Message::Cancel {
        id: ID,
        attempt: 1,
        reason: CancelReason::Timeout,
    };
    assert_eq!(
        drain(&mut p),
        vec![Output::Send(cancel), Output::Failed(PunchFailure::Timeout)]
    );
}

#[test]
fn a_peer_cancel_ends_the_punch_without_an_answer() {
    let t0 = Instant::now();
    let mut p = responder(t0);
    drain(&mut p);
    let cancel = Message::Cancel {
        id: ID,
        attempt: 1,
        reason: CancelReason::Connected,
    };
    p.handle_message(&cancel, t0).unwrap();
    let failed = Output::Failed(PunchFailure::PeerCancelled(CancelReason::Connected));
    assert_eq!(drain(&mut p), vec![failed]);
    assert_eq!(p.handle_message(&cancel, t0), Err(PunchError::Finished));
}

#[test]
fn cancel_here_tells_the_peer() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    p.cancel(CancelReason::Connected);
    let out = drain(&mut p);
    assert!(matches!(
        out[..],
        [
            Output::Send(Message::Cancel {
                reason: CancelReason::Connected,
                ..
            }),
            Output::Failed(PunchFailure::Cancelled(CancelReason::Connected))
        ]
    ));
    p.cancel(CancelReason::Aborted);
    assert!(drain(&mut p).is_empty(), "once");
}

#[test]
fn unrelated_or_stale_messages_are_ignored() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    let other = Message::Sync { id: 1, attempt: 1 };
    assert_eq!(
        p.handle_message(&other, t0),
        Err(PunchError::WrongId {
            expected: ID,
            got: 1
        })
    );
    let sync = Message::Sync { id: ID, attempt: 1 };
    assert!(matches!(
        p.handle_message(&sync, t0),
        Err(PunchError::Unexpected { .. })
    ));
    assert_eq!(
        p.handle_message(&reply(2), t0),
        Err(PunchError::StaleAttempt { current: 1, got: 2 })
    );
    assert!(drain(&mut p).is_empty());

    let mut r = responder(t0);
    drain(&mut r);
    assert_eq!(
        r.handle_message(&connect(4, alice_addrs()), t0),
        Err(PunchError::AttemptOutOfRange { got: 4, max: 3 })
    );
    assert!(matches!(
        r.handle_message(&reply(1), t0),
        Err(PunchError::Unexpected { .. })
    ));
    let sync2 = Message::Sync { id: ID, attempt: 2 };
    assert!(matches!(
        r.handle_message(&sync2, t0),
        Err(PunchError::StaleAttempt { .. })
    ));
    assert!(drain(&mut r).is_empty());
}

#[test]
fn respond_needs_a_connect_within_the_attempt_limit() {
    let t0 = Instant::now();
    let sync = Message::Sync { id: ID, attempt: 1 };
    let err = Punch::respond(&sync, &bob_addrs(), PunchConfig::default(), t0).unwrap_err();
    assert!(matches!(
        err,
        PunchError::Unexpected {
            kind: MessageType::Sync,
            ..
        }
    ));
    let late = connect(9, alice_addrs());
    let err = Punch::respond(&late, &bob_addrs(), PunchConfig::default(), t0).unwrap_err();
    assert_eq!(err, PunchError::AttemptOutOfRange { got: 9, max: 3 });
    let zero = connect(0, alice_addrs());
    let err = Punch::respond(&zero, &bob_addrs(), PunchConfig::default(), t0).unwrap_err();
    assert_eq!(err, PunchError::AttemptOutOfRange { got: 0, max: 3 });
    // A first Connect that was lost: the responder joins at attempt 2.
    let second = connect(2, alice_addrs());
    let p = Punch::respond(&second, &bob_addrs(), PunchConfig::default(), t0).unwrap();
    assert_eq!(p.attempt(), 2);
}

#[test]
fn responder_follows_the_initiators_retries() {
    let t0 = Instant::now();
    let mut r = responder(t0);
    drain(&mut r);
    // A duplicate Connect while waiting for Sync: the reply is sent again.
    r.handle_message(&connect(1, alice_addrs()), t0).unwrap();
    assert_eq!(drain(&mut r), vec![Output::Send(reply(1))]);

    r.handle_message(&Message::Sync { id: ID, attempt: 1 }, t0)
        .unwrap();
    drain(&mut r);
    r.handle_message(&connect(1, alice_addrs()), t0).unwrap();
    assert!(drain(&mut r).is_empty(), "a late duplicate is not acted on");
    r.handle_dial_result(alice_addrs()[0], DialResult::Failed, t0 + ms(5));
    assert!(drain(&mut r).is_empty(), "the responder waits for a retry");

    let fresh = vec![sa("203.0.113.10:50502")];
    r.handle_message(&connect(2, fresh.clone()), t0 + ms(10))
        .unwrap();
    assert_eq!(drain(&mut r), vec![Output::Send(reply(2))]);
    r.handle_message(&Message::Sync { id: ID, attempt: 2 }, t0 + ms(20))
        .unwrap();
    assert_eq!(
        drain(&mut r),
        vec![Output::Dial {
            attempt: 2,
            addrs: fresh
        }]
    );
    assert!(matches!(
        r.handle_message(&connect(1, alice_addrs()), t0),
        Err(PunchError::StaleAttempt { current: 2, got: 1 })
    ));
}

#[test]
fn responder_gives_up_when_the_initiator_goes_quiet() {
    let t0 = Instant::now();
    let mut r = responder(t0);
    drain(&mut r);
    let wait = PUNCH_REPLY_TIMEOUT + PUNCH_DIAL_TIMEOUT;
    assert_eq!(r.poll_timeout(), Some(t0 + wait));
    r.handle_timeout(t0 + wait);
    let out = drain(&mut r);
    assert_eq!(out.last(), Some(&Output::Failed(PunchFailure::NoReply)));
    assert!(matches!(out[0], Output::Send(Message::Cancel { .. })));
}

#[test]
fn responder_fails_after_the_last_attempt() {
    let t0 = Instant::now();
    let last = connect(MAX_PUNCH_ATTEMPTS, alice_addrs());
    let mut r = Punch::respond(&last, &bob_addrs(), PunchConfig::default(), t0).unwrap();
    let sync = Message::Sync {
        id: ID,
        attempt: MAX_PUNCH_ATTEMPTS,
    };
    r.handle_message(&sync, t0).unwrap();
    r.handle_dial_result(alice_addrs()[0], DialResult::Failed, t0);
    let out = drain(&mut r);
    assert_eq!(
        out.last(),
        Some(&Output::Failed(PunchFailure::AttemptsExhausted(3)))
    );
}

#[test]
fn a_connection_from_an_earlier_attempt_still_counts() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    let dialed = to_dial(&mut p, t0, 1, ms(10));
    p.handle_timeout(dialed + PUNCH_DIAL_TIMEOUT);
    drain(&mut p);
    p.handle_dial_result(
        bob_addrs()[0],
        DialResult::Connected,
        dialed + PUNCH_DIAL_TIMEOUT,
    );
    assert!(matches!(
        drain(&mut p)[..],
        [Output::Succeeded { attempt: 2, .. }]
    ));
}

#[test]
fn failures_for_addresses_not_dialed_are_ignored() {
    let t0 = Instant::now();
    let mut p = initiator(t0);
    drain(&mut p);
    let dialed = to_dial(&mut p, t0, 1, ms(10));
    p.handle_dial_result(sa("198.51.100.1:1"), DialResult::Failed, dialed);
    assert!(drain(&mut p).is_empty());
    assert!(!p.is_done());
}

#[test]
fn both_initiating_the_larger_id_wins() {
    let t0 = Instant::now();
    let mut small = Punch::initiate(5, &alice_addrs(), PunchConfig::default(), t0);
    let mut large = Punch::initiate(9, &bob_addrs(), PunchConfig::default(), t0);
    let Some(Output::Send(from_small)) = small.poll_output() else {
        panic!()
    };
    let Some(Output::Send(from_large)) = large.poll_output() else {
        panic!()
    };
    assert_eq!(
        large.handle_message(&from_small, t0),
        Err(PunchError::Glare { ours: 9, theirs: 5 })
    );
    assert!(drain(&mut large).is_empty());
    small.handle_message(&from_large, t0).unwrap();
    assert_eq!(
        drain(&mut small),
        vec![Output::Failed(PunchFailure::Superseded { by: 9 })]
    );
    let mut answer =
        Punch::respond(&from_large, &alice_addrs(), PunchConfig::default(), t0).unwrap();
    assert!(matches!(
        answer.poll_output(),
        Some(Output::Send(Message::ConnectReply { id: 9, .. }))
    ));
    assert!(yields_to(5, 9) && !yields_to(9, 5) && !yields_to(7, 7));
}

#[test]
fn addresses_are_cleaned_and_bounded() {
    let t0 = Instant::now();
    let peer = vec![
        sa("127.0.0.1:22"),
        sa("0.0.0.0:80"),
        sa("224.0.0.1:80"),
        sa("255.255.255.255:80"),
        sa("[::1]:22"),
        sa("203.0.113.20:1"),
        sa("203.0.113.20:1"),
        sa("203.0.113.20:2"),
        sa("203.0.113.20:3"),
    ];
    let mut r =
        Punch::respond(&connect(1, peer), &bob_addrs(), PunchConfig::default(), t0).unwrap();
    drain(&mut r);
    r.handle_message(&Message::Sync { id: ID, attempt: 1 }, t0)
        .unwrap();
    let want: Vec<SocketAddr> = (1..=3)
        .map(|p| SocketAddr::new("203.0.113.20".parse().unwrap(), p))
        .collect();
    assert_eq!(
        drain(&mut r),
        vec![Output::Dial {
            attempt: 1,
            addrs: want
        }]
    );

    let many: Vec<SocketAddr> = (1..=20)
        .map(|p| SocketAddr::new("203.0.113.10".parse().unwrap(), p))
        .collect();
    let mut p = Punch::initiate(ID, &many, PunchConfig::default(), t0);
    let Some(Output::Send(msg)) = p.poll_output() else {
        panic!()
    };
    assert!(msg.emit().is_ok(), "our Connect always fits the wire");
    let Message::Connect { addrs, .. } = msg else {
        panic!()
    };
    assert_eq!(addrs.len(), wire::MAX_PUNCH_ADDRS);
}

#[test]
fn one_request_yields_a_bounded_number_of_syns() {
    let t0 = Instant::now();
    let many: Vec<SocketAddr> = (1..=8)
        .map(|p| SocketAddr::new("203.0.113.10".parse().unwrap(), p))
        .collect();
    let mut r = Punch::respond(
        &connect(1, many.clone()),
        &bob_addrs(),
        PunchConfig::default(),
        t0,
    )
    .unwrap();
    let mut syns = 0;
    let mut now = t0;
    for attempt in 1..=MAX_PUNCH_ATTEMPTS {
        if attempt > 1 {
            r.handle_message(&connect(attempt, many.clone()), now)
                .unwrap();
        }
        r.handle_message(&Message::Sync { id: ID, attempt }, now)
            .unwrap();
        for out in drain(&mut r) {
            if let Output::Dial { addrs, .. } = out {
                syns += addrs.len();
            }
        }
        now += PUNCH_DIAL_TIMEOUT;
        r.handle_timeout(now);
    }
    assert!(r.is_done());
    assert_eq!(
        syns,
        usize::from(MAX_PUNCH_ATTEMPTS) * MAX_DIALS_PER_ATTEMPT
    );
}

#[derive(Debug, Clone)]
enum Input {
    Msg(u8, u8, u8),
    Dial(u8, bool),
    Tick(u16),
    Cancel,
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (0u8..5, 0u8..5, 0u8..3).prop_map(|(k, a, i)| Input::Msg(k, a, i)),
        (0u8..3, any::<bool>()).prop_map(|(a, ok)| Input::Dial(a, ok)),
        any::<u16>().prop_map(Input::Tick),
        Just(Input::Cancel),
    ]
}

fn message_for(kind: u8, attempt: u8, which_id: u8) -> Message {
    let id = [ID, ID - 1, ID + 1][usize::from(which_id % 3)];
    let addrs = vec![sa("203.0.113.20:50500"), sa("203.0.113.20:50502")];
    match kind {
        0 => Message::Connect { id, attempt, addrs },
        1 => Message::ConnectReply { id, attempt, addrs },
        2 => Message::Sync { id, attempt },
        _ => Message::Cancel {
            id,
            attempt,
            reason: CancelReason::Timeout,
        },
    }
}

proptest! {
    /// Any sequence of inputs: no panic, every message sent is valid on the
    /// wire, the end comes once and last, and time-outs stay within the
    /// overall limit.
    #[test]
    fn any_inputs_keep_the_machine_sane(
        as_responder in any::<bool>(),
        inputs in proptest::collection::vec(input(), 0..60),
    ) {
        let t0 = Instant::now();
        let mut p = if as_responder { responder(t0) } else { initiator(t0) };
        let mut now = t0;
        let mut outputs = Vec::new();
        for i in inputs {
            match i {
                Input::Msg(k, a, w) => { let _ = p.handle_message(&message_for(k, a, w), now); }
                Input::Dial(a, ok) => {
                    let addr = SocketAddr::new("203.0.113.20".parse().unwrap(), 50500 + u16::from(a));
                    let r = if ok { DialResult::Connected } else { DialResult::Failed };
                    p.handle_dial_result(addr, r, now);
                }
                Input::Tick(step) => {
                    now += Duration::from_millis(u64::from(step));
                    p.handle_timeout(now);
                }
                Input::Cancel => p.cancel(CancelReason::Aborted),
            }
            if let Some(t) = p.poll_timeout() {
                prop_assert!(t <= t0 + PUNCH_TIMEOUT);
            }
            outputs.extend(drain(&mut p));
        }
        let ends = outputs.iter().filter(|o| matches!(o, Output::Succeeded { .. } | Output::Failed(_))).count();
        prop_assert!(ends <= 1);
        if ends == 1 {
            let last_is_end = matches!(outputs.last(), Some(Output::Succeeded { .. } | Output::Failed(_)));
            prop_assert!(last_is_end);
            prop_assert!(p.is_done());
        }
        for o in &outputs {
            if let Output::Send(m) = o {
                prop_assert!(m.emit().is_ok());
            }
            if let Output::Dial { addrs, .. } = o {
                prop_assert!(addrs.len() <= MAX_DIALS_PER_ATTEMPT);
            }
        }
    }
}

#[test]
fn nothing_to_dial_on_either_side_fails_at_once() {
    let t0 = Instant::now();
    // The initiator has no public address, and the reply brings none.
    let mut a = Punch::initiate(ID, &[], PunchConfig::default(), t0);
    drain(&mut a);
    let empty_reply = Message::ConnectReply {
        id: ID,
        attempt: 1,
        addrs: vec![],
    };
    a.handle_message(&empty_reply, t0 + ms(40)).unwrap();
    // Sync, then (at once: half the RTT later) nothing to dial on either side.
    let at = a.poll_timeout().unwrap();
    a.handle_timeout(at);
    let out = drain(&mut a);
    assert!(
        matches!(out.last(), Some(Output::Failed(PunchFailure::NoAddresses))),
        "{out:?}"
    );
    assert!(a.is_done());
    // The responder without addresses, to a Connect without any, likewise on Sync.
    let mut b = Punch::respond(&connect(1, vec![]), &[], PunchConfig::default(), t0).unwrap();
    drain(&mut b);
    b.handle_message(&Message::Sync { id: ID, attempt: 1 }, t0 + ms(60))
        .unwrap();
    let out = drain(&mut b);
    assert!(
        matches!(out.last(), Some(Output::Failed(PunchFailure::NoAddresses))),
        "{out:?}"
    );
    // One side with an address is enough to try.
    let mut c = Punch::initiate(ID, &alice_addrs(), PunchConfig::default(), t0);
    drain(&mut c);
    c.handle_message(&empty_reply, t0 + ms(40)).unwrap();
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    assert!(!c.is_done());
}
