//! The server side of TLS, on rustls's unbuffered API.
//!
//! Why not tokio-rustls: its `ServerConnection` keeps a 4 KiB record buffer
//! for the whole life of a connection, the largest single allocation of an
//! idle client (see `docs/benchmarks.md`). Here buffers exist only while bytes
//! are in flight; an idle connection holds its TLS state and nothing else.
//!
//! [`ServerTlsStream`] is an ordinary `AsyncRead + AsyncWrite`, so the session
//! and the WebSocket layer above it do not know the difference.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest plaintext encrypted per `poll_write`: a bound on the ciphertext
/// buffered at once.
const MAX_WRITE_CHUNK: usize = 64 * 1024;

/// Room for the record headers and tags of `len` bytes of plaintext, so that
/// one encryption usually fits the first guess.
fn ciphertext_room(len: usize) -> usize {
    len + (len / (16 * 1024) + 1) * 64
}

/// A TLS server connection over TCP that buffers only bytes in flight.
pub struct ServerTlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet processed (between calls, at most part
    /// of one record).
    incoming: Vec<u8>,
    /// Decrypted bytes the caller has not read yet, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// Encrypted bytes not yet written to the socket, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The peer sent close_notify or closed its side: reads return end of file.
    read_closed: bool,
    close_notify_sent: bool,
    /// The reader waiting for the socket, woken if a write decrypts records.
    read_waker: Option<Waker>,
}

/// Where the TLS state machine stopped.
enum Step {
    /// It needs more bytes from the peer (the handshake is not done).
    NeedsInput,
    /// Application data may be sent; this many bytes of it were encrypted.
    Writable(usize),
    /// Both sides sent close_notify; nothing more can be sent.
    Closed,
}

/// What to do when the state machine allows sending application data.
enum ToSend<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Completes the TLS handshake of a new connection.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<ServerTlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = ServerTlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        plaintext_read: 0,
        outgoing: Vec::new(),
        outgoing_sent: 0,
        read_closed: false,
        close_notify_sent: false,
        read_waker: None,
    };
    loop {
        let step = match stream.step(ToSend::Nothing) {
            Ok(step) => step,
            Err(e) => {
                let _ = stream.send_outgoing_now();
                return Err(e);
            }
        };
        std::future::poll_fn(|cx| stream.poll_send_outgoing(cx)).await?;
        match step {
            Step::Writable(_) => return Ok(stream),
            Step::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed during the TLS handshake",
                ));
            }
            Step::NeedsInput => {
                let read = std::future::poll_fn(|cx| stream.poll_receive(cx)).await?;
                if read == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    ));
                }
            }
        }
    }
}

impl ServerTlsStream {
    /// Runs the TLS state machine over the received bytes until it needs I/O:
    /// decrypted records go to `plaintext`, records to send to `outgoing`.
    fn step(&mut self, mut send: ToSend<'_>) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.encode_alert();
                    return Err(tls_error(e));
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        if self.plaintext_read == self.plaintext.len() {
                            self.plaintext.clear();
                            self.plaintext_read = 0;
                        }
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    if let Some(waker) = self.read_waker.take() {
                        waker.wake();
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append_encoded(&mut self.outgoing, 2048, |out| encode.encode(out))?;
                    None
                }
                // The records are in `outgoing`, which is sent before any
                // more input is awaited and before later records are added.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Step::NeedsInput),
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    Some(Step::Closed)
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    let written = match std::mem::replace(&mut send, ToSend::Nothing) {
                        ToSend::Nothing => 0,
                        ToSend::Data(data) => {
                            let data = &data[..data.len().min(MAX_WRITE_CHUNK)];
                            append_encrypted(
                                &mut self.outgoing,
                                ciphertext_room(data.len()),
                                |out| traffic.encrypt(data, out),
                            )?;
                            data.len()
                        }
                        ToSend::CloseNotify => {
                            append_encrypted(&mut self.outgoing, 64, |out| {
                                traffic.queue_close_notify(out)
                            })?;
                            self.close_notify_sent = true;
                            0
                        }
                    };
                    Some(Step::Writable(written))
                }
                // Early data is not enabled in the server config.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS state (early data?)",
                    ));
                }
            };
            self.incoming.drain(..discard);
            if self.incoming.is_empty() {
                // Idle connections keep no buffer.
                self.incoming = Vec::new();
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// After an error, encodes the alert rustls queued for the peer (so a
    /// client learns why, not just that the connection closed).
    fn encode_alert(&mut self) {
        let mut no_input: [u8; 0] = [];
        let status = self.conn.process_tls_records(&mut no_input);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let _ = append_encoded(&mut self.outgoing, 64, |out| encode.encode(out));
        }
    }

    /// Reads what the socket has into `incoming`; 0 means end of file.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::read_chunk::poll_read_appending(&mut self.tcp, cx, &mut self.incoming)
    }

    /// Writes all of `outgoing` to the socket.
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let sent = ready!(
                Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.outgoing_sent..])
            )?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += sent;
        }
        self.outgoing = Vec::new();
        self.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what of `outgoing` the socket takes now, without waiting: the
    /// read side must not take the write side's place as the task woken when
    /// the socket becomes writable. A rest is sent by the next write or flush.
    fn send_outgoing_now(&mut self) -> io::Result<()> {
        while self.outgoing_sent < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.outgoing_sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => self.outgoing_sent += sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.outgoing_sent = 0;
        Ok(())
    }
}

/// Appends to `out` what `write` puts into `room` spare bytes, growing the
/// room when the error says how much is `needed`.
fn append_grown<E>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needed: impl Fn(&E) -> Option<usize>,
) -> io::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(e) => match needed(&e) {
                Some(size) => room = size,
                None => {
                    out.truncate(start);
                    return Err(io::Error::other(e));
                }
            },
        }
    }
}

/// [`append_grown`] for handshake records and queued alerts.
fn append_encoded(
    out: &mut Vec<u8>,
    room: usize,
    encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    append_grown(out, room, encode, |e| match e {
        EncodeError::InsufficientSize(e) => Some(e.required_size),
        _ => None,
    })
}

/// [`append_grown`] for application data and close_notify.
fn append_encrypted(
    out: &mut Vec<u8>,
    room: usize,
    encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    append_grown(out, room, encrypt, |e| match e {
        EncryptError::InsufficientSize(e) => Some(e.required_size),
        _ => None,
    })
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plaintext_read < this.plaintext.len() {
                let pending = &this.plaintext[this.plaintext_read..];
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.plaintext_read += n;
                if this.plaintext_read == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plaintext_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            let read = match this.poll_receive(cx) {
                Poll::Ready(read) => read?,
                Poll::Pending => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            };
            if read == 0 {
                // The socket ended without close_notify: end of file all the
                // same (the frames above are length-prefixed, so a cut shows).
                this.read_closed = true;
                continue;
            }
            let stepped = this.step(ToSend::Nothing);
            // Answers the records may need (a key update, an alert).
            let sent = this.send_outgoing_now();
            stepped?;
            sent?;
        }
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        if this.close_notify_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let written = match this.step(ToSend::Data(data))? {
            Step::Writable(written) => written,
            Step::NeedsInput | Step::Closed => {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        };
        // Start sending now; what the socket does not take yet is sent by
        // the next write or flush, which wait for it.
        if let Poll::Ready(Err(e)) = this.poll_send_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        if !this.close_notify_sent {
            this.step(ToSend::CloseNotify)?;
            this.close_notify_sent = true;
            ready!(this.poll_send_outgoing(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    use super::{ServerTlsStream, accept};

    fn configs() -> (Arc<ServerConfig>, TlsConnector) {
        let certified = test_support::self_signed(&["localhost"]);
        let cert = CertificateDer::from(certified.cert_der);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_der));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), TlsConnector::from(Arc::new(client)))
    }

    /// A server connection and a tokio-rustls client connected to it.
    async fn pair() -> (ServerTlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let (server_config, connector) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(tcp, server_config).await.expect("server handshake")
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let client = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        (server.await.expect("server task"), client)
    }

    fn holds_no_buffers(stream: &ServerTlsStream) -> bool {
        stream.incoming.capacity() == 0
            && stream.plaintext.capacity() == 0
            && stream.outgoing.capacity() == 0
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_idle_connection_keeps_no_buffers() {
        let (mut server, mut client) = pair().await;
        // Larger than one record and than one write chunk, both ways.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let sending = tokio::spawn(async move {
            client.write_all(&big).await.expect("client write");
            client.flush().await.expect("client flush");
            let mut back = vec![0u8; 100_000];
            client.read_exact(&mut back).await.expect("client read");
            (client, back)
        });
        let mut received = vec![0u8; expected.len()];
        server.read_exact(&mut received).await.expect("server read");
        assert_eq!(received, expected);
        server
            .write_all(&received[..100_000])
            .await
            .expect("server write");
        server.flush().await.expect("server flush");
        let (_client, back) = sending.await.expect("client task");
        assert_eq!(back, expected[..100_000]);
        assert!(
            holds_no_buffers(&server),
            "an idle connection holds buffers"
        );
    }

    /// Every client connection holds one of these for its life. The
    /// patched rustls (`vendor/rustls/PATCH.md`, change 2) keeps QUIC's
    /// secrets out of it: 832 bytes, where the published rustls gives 1,240.
    #[test]
    fn an_established_connection_keeps_its_inline_state_small() {
        let size = std::mem::size_of::<ServerTlsStream>();
        assert!(
            size <= 900,
            "ServerTlsStream is {size} bytes: is vendor/rustls still patched in?"
        );
    }

    #[tokio::test]
    async fn data_sent_with_the_handshake_is_read() {
        let (server_config, connector) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut client = connector
                .connect(name, tcp)
                .await
                .expect("client handshake");
            // Written at once after the client's Finished, likely in the
            // same segment.
            client.write_all(b"hello").await.expect("write");
            client.flush().await.expect("flush");
            client
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut server = accept(tcp, server_config).await.expect("server handshake");
        let mut hello = [0u8; 5];
        server.read_exact(&mut hello).await.expect("read");
        assert_eq!(&hello, b"hello");
        drop(client.await.expect("client task"));
    }

    #[tokio::test]
    async fn shutdown_sends_close_notify_and_the_peer_sees_a_clean_end() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"bye").await.expect("write");
        server.shutdown().await.expect("shutdown");
        let mut all = Vec::new();
        // tokio-rustls reports a missing close_notify as an error, so a clean
        // end of file proves it was sent.
        client.read_to_end(&mut all).await.expect("clean end");
        assert_eq!(all, b"bye");
    }

    #[tokio::test]
    async fn a_client_key_update_is_followed() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"one").await.expect("write");
        client.flush().await.expect("flush");
        let mut buf = [0u8; 3];
        server.read_exact(&mut buf).await.expect("read");
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(b"two").await.expect("write after update");
        client.flush().await.expect("flush");
        server
            .read_exact(&mut buf)
            .await
            .expect("read after update");
        assert_eq!(&buf, b"two");
        server
            .write_all(b"three")
            .await
            .expect("server write after update");
        server.flush().await.expect("flush");
        let mut three = [0u8; 5];
        client
            .read_exact(&mut three)
            .await
            .expect("client read after update");
        assert_eq!(&three, b"three");
    }

    #[tokio::test]
    async fn the_peer_closing_without_close_notify_is_an_end_of_file() {
        let (mut server, mut client) = pair().await;
        // A FIN on the bare TCP connection, no TLS alert before it.
        client.get_mut().0.shutdown().await.expect("tcp shutdown");
        let mut buf = Vec::new();
        let read = server.read_to_end(&mut buf).await.expect("end of file");
        assert_eq!(read, 0);
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_an_error() {
        let (server_config, _) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let (accepted, _) = listener.accept().await.expect("accept");
        let err = accept(accepted, server_config)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // The client is told why: a TLS alert record (content type 21).
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("read the answer");
        assert_eq!(
            answer.first(),
            Some(&21),
            "expected an alert, got {answer:?}"
        );
    }
}
