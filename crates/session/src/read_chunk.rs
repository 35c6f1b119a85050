//! Reading through a stack buffer, so that a connection waiting for input
//! holds no read buffer of its own.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BufMut;
use tokio::io::{AsyncRead, ReadBuf};

/// Most bytes taken in one read: one largest TLS record and its header.
const READ_CHUNK: usize = 16 * 1024 + 5 + 256;

/// Reads what `reader` has and appends it to `out`; 0 means end of file.
/// The bytes pass through a stack buffer that exists only during the poll
/// (uninitialised: zeroing it on every read would be wasted work).
pub(crate) fn poll_read_appending<R, B>(
    reader: &mut R,
    cx: &mut Context<'_>,
    out: &mut B,
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + Unpin + ?Sized,
    B: BufMut,
{
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut chunk);
    ready!(Pin::new(reader).poll_read(cx, &mut read))?;
    out.put_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}
