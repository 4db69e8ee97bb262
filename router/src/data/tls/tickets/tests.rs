//! Tickets sealed by one replica open on another with the same file; rotation keeps old
//! tickets opening; anything else opens as nothing.

use super::*;

fn key(fill: u8) -> Vec<u8> {
    let mut k = vec![fill; KEY_LEN];
    // A distinct name per fill.
    k[0] = fill;
    k[1] = fill.wrapping_add(1);
    k
}

fn ticketer(file: &[u8]) -> Arc<SharedTicketer> {
    SharedTicketer::new(
        TicketKeys::parse(file).unwrap_or_else(|e| panic!("{e}")),
        Duration::from_secs(3600),
    )
}

#[test]
fn two_replicas_with_one_file_open_each_others_tickets() {
    let file = key(7);
    let (a, b) = (ticketer(&file), ticketer(&file));
    let t = a.encrypt(b"session state").unwrap_or_default();
    assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
    // Sealed afresh each time (a random nonce), never the same bytes twice.
    assert_ne!(a.encrypt(b"session state"), Some(t));
}

#[test]
fn a_rotation_that_keeps_the_old_key_second_opens_old_tickets_and_seals_with_the_new() {
    let (old, new) = (key(1), key(2));
    let replica = ticketer(&old);
    let before = replica.encrypt(b"old").unwrap_or_default();
    replica.swap(
        TicketKeys::parse(&[new.clone(), old.clone()].concat()).unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(replica.decrypt(&before).as_deref(), Some(&b"old"[..]));
    let after = replica.encrypt(b"new").unwrap_or_default();
    assert_eq!(&after[..NAME_LEN], &new[..NAME_LEN]);
    // A replica that has only the new key opens the new tickets, not the old ones.
    let next = ticketer(&new);
    assert_eq!(next.decrypt(&after).as_deref(), Some(&b"new"[..]));
    assert_eq!(next.decrypt(&before), None);
}

#[test]
fn another_files_tickets_and_garbage_open_as_nothing() {
    let a = ticketer(&key(1));
    let t = a.encrypt(b"state").unwrap_or_default();
    // Same name, other secret: the seal does not open.
    let mut forged = key(1);
    forged[40] ^= 1;
    assert_eq!(ticketer(&forged).decrypt(&t), None);
    // Any changed byte.
    for i in 0..t.len() {
        let mut bad = t.clone();
        bad[i] ^= 0x80;
        assert_eq!(a.decrypt(&bad), None, "byte {i}");
    }
    for len in 0..t.len() {
        assert_eq!(a.decrypt(&t[..len]), None, "cut to {len}");
    }
    assert_eq!(a.decrypt(&[]), None);
}

#[test]
fn a_ticket_past_its_lifetime_or_from_the_future_is_not_opened() {
    let a = ticketer(&key(3));
    let now = now_secs();
    let old = a.seal(b"s", now - 3601).unwrap_or_default();
    assert_eq!(a.open(&old, now), None);
    let fresh = a.seal(b"s", now - 3599).unwrap_or_default();
    assert!(a.open(&fresh, now).is_some());
    let future = a.seal(b"s", now + 3600).unwrap_or_default();
    assert_eq!(a.open(&future, now), None);
    assert_eq!(a.lifetime(), 3600);
}

#[test]
fn bad_files_are_refused_with_why() {
    assert_eq!(TicketKeys::parse(b"").err(), Some(TicketKeysError::Empty));
    assert_eq!(
        TicketKeys::parse(&[0; 48]).err(),
        Some(TicketKeysError::Length(48))
    );
    assert_eq!(
        TicketKeys::parse(&[0; 81]).err(),
        Some(TicketKeysError::Length(81))
    );
    assert_eq!(
        TicketKeys::parse(&[key(1), key(2), key(1)].concat()).err(),
        Some(TicketKeysError::DuplicateName(3))
    );
    assert_eq!(
        TicketKeys::parse(&[key(1), key(2)].concat())
            .map(|k| k.len())
            .ok(),
        Some(2)
    );
    // The secrets never reach a log.
    let shown = format!("{:?}", ticketer(&key(9)));
    assert!(!shown.contains("9, 9"), "{shown}");
}

#[test]
fn random_keys_are_each_processes_own() {
    let a = SharedTicketer::new(
        TicketKeys::random().unwrap_or_else(|e| panic!("{e}")),
        Duration::from_secs(60),
    );
    let b = SharedTicketer::new(
        TicketKeys::random().unwrap_or_else(|e| panic!("{e}")),
        Duration::from_secs(60),
    );
    let t = a.encrypt(b"s").unwrap_or_default();
    assert!(a.decrypt(&t).is_some());
    assert_eq!(b.decrypt(&t), None);
}
