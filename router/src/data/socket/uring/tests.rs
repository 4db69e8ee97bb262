use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Runs `test` as an I/O thread runs its sockets: a ring on the thread with its reaper,
/// the turn's end submitting and reaping. The ring is taken away after the runtime is
/// gone (its reaper's registration first), so a later test the harness runs on the same
/// thread finds none.
fn on_io_thread<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(end_of_turn)
        .build()
        .unwrap();
    rt.block_on(async {
        let fd = enable_on_this_thread().unwrap();
        tokio::spawn(reap_when_ready(fd));
        test().await;
    });
    drop(rt);
    DRIVER.with_borrow_mut(Option::take);
}

/// `n` connected pairs: a plain std socket, and its peer adopted onto this thread's ring.
async fn pairs(n: usize) -> Vec<(std::net::TcpStream, UringTcp)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        out.push((client, UringTcp::adopt(server).unwrap()));
    }
    out
}

fn starvations() -> u64 {
    DRIVER.with_borrow(|d| d.as_ref().map_or(0, |d| d.starvations))
}

/// Twice as many sockets as pool buffers, each with three buffers' worth of data
/// waiting before its reader starts: the receives that find the pool empty starve, and
/// each is tried again as buffers come back, until every byte of every socket is read.
#[test]
fn sockets_outnumbering_the_pool_all_get_their_bytes() {
    on_io_thread(|| async {
        let len = 3 * bufs::SIZE;
        let mut readers = Vec::new();
        for (i, (mut client, mut server)) in pairs(16).await.into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
            client.write_all(&data).unwrap();
            readers.push(tokio::spawn(async move {
                let mut got = vec![0u8; len];
                server.read_exact(&mut got).await.unwrap();
                assert!(got == data, "socket {i} read other bytes");
                drop(client);
            }));
        }
        let all = futures_util::future::join_all(readers);
        for r in tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .unwrap()
        {
            r.unwrap();
        }
        assert!(starvations() > 0, "the pool ran out at least once");
    });
}

/// A write is sent whole however large (more than a socket may have waiting), a
/// shutdown waits for it, and the peer then sees the end.
#[test]
fn a_large_write_is_sent_whole_before_the_shutdown() {
    on_io_thread(|| async {
        let (client, mut server) = pairs(1).await.pop().unwrap();
        let data: Vec<u8> = (0..4 * WRITE_MAX + 7).map(|k| (k * 7) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &client, &mut got).unwrap();
            got
        });
        let sent = async {
            server.write_all(&data).await.unwrap();
            server.shutdown().await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .unwrap();
        assert!(reader.join().unwrap() == data);
    });
}

/// Reading into no room reads nothing and is not the end; writing nothing sends nothing.
#[test]
fn empty_reads_and_writes_are_no_ops() {
    on_io_thread(|| async {
        let (mut client, mut server) = pairs(1).await.pop().unwrap();
        assert_eq!(server.write(&[]).await.unwrap(), 0);
        client.write_all(b"hi").unwrap();
        let mut none = [0u8; 0];
        assert_eq!(server.read(&mut none).await.unwrap(), 0);
        let mut two = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), server.read_exact(&mut two))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&two, b"hi");
    });
}
