//! WebSocket transport for browsers.
//!
//! A browser cannot open a raw TLS socket, so the node also accepts
//! WebSocket connections (over the same TLS). The byte stream inside is the
//! same as over TCP — length-prefixed postcard frames — carried in binary
//! WebSocket messages; a message may hold several frames or part of one.
//! Adapting the message stream to a byte stream lets one session
//! implementation serve both transports.

use std::io;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use crate::actor::ClientStream;

/// Completes the WebSocket handshake on `stream` and returns a byte stream
/// over its binary messages.
pub(crate) async fn accept<S>(
    stream: S,
    max_message_bytes: usize,
) -> io::Result<Box<dyn ClientStream>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config))
        .await
        .map_err(io::Error::other)?;
    let (sink, messages) = ws.split();
    // Binary messages carry the bytes; ping/pong are answered by tungstenite;
    // a close message or an error ends the stream.
    let bytes = messages
        .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(data)) => Some(Ok(data)),
                Ok(_) => None,
                Err(e) => Some(Err(io::Error::other(e))),
            })
        });
    let reader = StreamReader::new(Box::pin(bytes));
    let writer = SinkWriter::new(CopyToBytes::new(sink.sink_map_err(io::Error::other).with(
        |data: bytes::Bytes| std::future::ready(Ok::<_, io::Error>(Message::Binary(data))),
    )));
    Ok(Box::new(tokio::io::join(reader, writer)))
}
