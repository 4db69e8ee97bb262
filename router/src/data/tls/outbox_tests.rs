//! Parcels on real loopback sockets: sent whole as the turn ends and not before, in
//! order; taken back whole within the turn; the rest of one its socket pushed back on,
//! or its socket's error, handed back to a woken task; sent at once when dropped.

use std::time::Duration;

use tokio::net::TcpStream;

use super::*;
use crate::data::tls::test_io::{counting, nothing_arrived, pair, read_n, WAIT};

fn fd(tcp: &TcpStream) -> RawFd {
    std::os::fd::AsRawFd::as_raw_fd(tcp)
}

#[tokio::test]
async fn parcels_go_whole_as_the_turn_ends_and_not_before() {
    let (a, mut peer_a) = pair().await;
    let (b, mut peer_b) = pair().await;
    let (count, waker) = counting();
    let first = hand_over(fd(&a), b"for a".to_vec(), &waker);
    let second = hand_over(fd(&b), b"for b".to_vec(), &waker);
    assert!(first.waiting() && second.waiting());
    assert_eq!((first.len(), waiting()), (5, 2));
    nothing_arrived(&peer_a);
    nothing_arrived(&peer_b);
    end_turn();
    assert_eq!(read_n(&mut peer_a, 5).await, b"for a");
    assert_eq!(read_n(&mut peer_b, 5).await, b"for b");
    assert!(!first.waiting(), "its turn ended");
    assert_eq!((first.len(), waiting()), (0, 0), "known sent");
    assert!(matches!(first.take_back(), Ok(Returned::Sent)));
    assert!(matches!(second.take_back(), Ok(Returned::Sent)));
    assert_eq!(count.woken(), 0, "no task is woken for a parcel sent whole");
    // Its buffer is kept for the next one.
    assert!(spare().capacity() >= 5);
}

#[tokio::test]
async fn a_parcel_taken_back_within_its_turn_comes_back_whole_and_is_not_sent() {
    let (a, peer_a) = pair().await;
    let (_, waker) = counting();
    let parcel = hand_over(fd(&a), b"kept".to_vec(), &waker);
    match parcel.take_back() {
        Ok(Returned::Waiting(bytes)) => assert_eq!(bytes, b"kept"),
        other => panic!("{other:?}"),
    }
    end_turn();
    nothing_arrived(&peer_a);
    // Its slot serves the next parcel, which the old generation's entry does not send
    // twice.
    let again = hand_over(fd(&a), b"once".to_vec(), &waker);
    end_turn();
    let mut peer_a = peer_a;
    assert_eq!(read_n(&mut peer_a, 4).await, b"once");
    assert!(matches!(again.take_back(), Ok(Returned::Sent)));
    nothing_arrived(&peer_a);
}

#[tokio::test]
async fn a_socket_that_pushes_back_hands_the_rest_to_its_woken_task() {
    let (a, mut peer_a) = pair().await;
    let (b, mut peer_b) = pair().await;
    let (count, waker) = counting();
    socket2::SockRef::from(&a)
        .set_send_buffer_size(4096)
        .unwrap();
    // More than the socket and its peer take while the peer does not read.
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let stuck = hand_over(fd(&a), big.clone(), &waker);
    let fine = hand_over(fd(&b), b"small".to_vec(), &waker);
    end_turn();
    assert_eq!(count.woken(), 1, "the task of the parcel pushed back on");
    // The parcel sent whole in the same turn is known sent, from the table.
    assert_eq!(read_n(&mut peer_b, 5).await, b"small");
    assert!(matches!(fine.take_back(), Ok(Returned::Sent)));
    let unsent = stuck.len();
    let Ok(Returned::Unsent { bytes, from }) = stuck.take_back() else {
        panic!("pushed back");
    };
    assert!(from < big.len(), "{from}");
    assert_eq!(unsent, big.len() - from, "counted: what the socket refused");
    assert_eq!(
        bytes, big,
        "the whole buffer, from where the socket stopped"
    );
    // What the socket took, then the rest (as the task sends it), is the whole.
    let reader = tokio::spawn(async move { read_n(&mut peer_a, big.len()).await });
    let mut a = a;
    tokio::io::AsyncWriteExt::write_all(&mut a, &bytes[from..])
        .await
        .unwrap();
    assert_eq!(reader.await.unwrap(), bytes);
}

#[tokio::test]
async fn a_failed_socket_gives_its_error_to_its_woken_task() {
    let (a, peer_a) = pair().await;
    // The peer resets the connection; ours hears it (a read sees the reset).
    socket2::SockRef::from(&peer_a)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer_a);
    let mut buf = [0u8; 8];
    let heard = tokio::time::timeout(WAIT, async {
        loop {
            a.readable().await.unwrap();
            match a.try_read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the reset in time");
    assert!(matches!(heard, Err(_) | Ok(0)), "{heard:?}");
    let (count, waker) = counting();
    let parcel = hand_over(fd(&a), b"too late".to_vec(), &waker);
    end_turn();
    // A reset socket fails the send (an EOF seen instead, the kernel may still take
    // the bytes once: then it went whole, and the next parcel fails).
    let failed = match parcel.take_back() {
        Err(_) => true,
        Ok(Returned::Sent) => {
            let next = hand_over(fd(&a), b"again".to_vec(), &waker);
            end_turn();
            next.take_back().is_err()
        }
        Ok(other) => panic!("{other:?}"),
    };
    assert!(failed, "the socket's error reaches the stream");
    assert_eq!(count.woken(), 1);
}

#[tokio::test]
async fn a_parcel_dropped_before_the_turn_ends_goes_at_once() {
    let (a, mut peer_a) = pair().await;
    let (_, waker) = counting();
    let parcel = hand_over(fd(&a), b"promised".to_vec(), &waker);
    drop(parcel);
    assert_eq!(waiting(), 0, "no longer to send");
    assert_eq!(read_n(&mut peer_a, 8).await, b"promised");
    end_turn();
    assert_eq!(waiting(), 0);
    nothing_arrived(&peer_a);
}

#[tokio::test]
async fn a_later_flush_in_the_turn_joins_its_waiting_parcel_in_place() {
    let (a, mut peer_a) = pair().await;
    let (_, waker) = counting();
    let mut parcel = hand_over(fd(&a), b"head ".to_vec(), &waker);
    assert!(parcel.add(b"body"), "still waiting: joined");
    assert_eq!(
        (parcel.len(), waiting()),
        (9, 1),
        "one parcel, counted once"
    );
    end_turn();
    assert_eq!(read_n(&mut peer_a, 9).await, b"head body");
    assert!(!parcel.add(b"late"), "gone with its turn: sent otherwise");
    assert!(matches!(parcel.take_back(), Ok(Returned::Sent)));
    // A parcel taken back is no longer counted as waiting.
    let again = hand_over(fd(&a), b"x".to_vec(), &waker);
    assert_eq!(waiting(), 1);
    assert!(matches!(again.take_back(), Ok(Returned::Waiting(_))));
    assert_eq!(waiting(), 0);
}
