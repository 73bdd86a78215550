//! A byte-counting TCP forwarder between clients and the git daemon.

use super::*;

#[derive(Default)]
pub(crate) struct Counts {
    /// Client to server.
    pub(crate) up: AtomicU64,
    /// Server to client.
    pub(crate) down: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) open: AtomicU64,
}

pub(crate) struct Proxy {
    pub(crate) port: u16,
    pub(crate) counts: Arc<Counts>,
}

/// Bytes and connections of one client run through the proxy.
#[derive(Clone, Copy, Default)]
pub(crate) struct Traffic {
    pub(crate) up: u64,
    pub(crate) down: u64,
    pub(crate) connections: u64,
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards each connection to `target`. The
    /// accept thread lives as long as the bench.
    pub(crate) fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                c.connections.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                thread::spawn(move || {
                    forward(client, target, &c);
                    c.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy { port, counts }
    }

    pub(crate) fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}.git", self.port)
    }

    /// What went through since the last call, once every connection closed.
    pub(crate) fn take(&self) -> Traffic {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.counts.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "proxy: a connection stayed open 10 s after its client exited"
            );
            thread::sleep(Duration::from_millis(1));
        }
        Traffic {
            up: self.counts.up.swap(0, Ordering::SeqCst),
            down: self.counts.down.swap(0, Ordering::SeqCst),
            connections: self.counts.connections.swap(0, Ordering::SeqCst),
        }
    }
}

pub(crate) fn forward(client: TcpStream, target: u16, counts: &Arc<Counts>) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up_counts = counts.clone();
    let up = thread::spawn(move || pump(c2, s2, &up_counts.up));
    pump(server, client, &counts.down);
    let _ = up.join();
}

pub(crate) fn pump(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
