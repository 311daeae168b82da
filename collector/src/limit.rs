//! At most `collector.max_connections` OTLP connections open at once, over both endpoints.
//!
//! The reading budget (`budget.rs`) caps the bodies Tidewatch is reading, but every open connection also
//! holds buffers it does not control: on HTTP/2 up to hyper's 1 MiB flow-control window of data the client
//! sent ahead. So the number of connections is capped too. A connection past the cap is accepted and
//! closed at once (the exporters treat that as a transient error and retry), counted in
//! `tidewatch_collector_connections_refused_total`; `tidewatch_collector_connections` shows how many are open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::stats::Stats;

/// The shared cap; cheap to clone.
#[derive(Clone)]
pub struct ConnLimit {
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
}

impl ConnLimit {
    pub fn new(max: usize, stats: Arc<Stats>) -> ConnLimit {
        ConnLimit {
            permits: Arc::new(Semaphore::new(max)),
            stats,
        }
    }

    /// A place under the cap for a new connection, held until the connection ends; `None` (counted) when
    /// the cap is reached, and the caller closes the connection.
    pub fn place(&self) -> Option<Place> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.stats.connection_opened();
                Some(Place {
                    stats: self.stats.clone(),
                    _permit: permit,
                })
            }
            Err(_) => {
                self.stats.connection_refused();
                tracing::debug!("connection refused: collector.max_connections reached");
                None
            }
        }
    }

    /// Accepted connections from `listener`, with `TCP_NODELAY`, past the cap closed: what tonic serves.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        Incoming {
            listener,
            limit: self.clone(),
        }
    }
}

/// One connection's place under the cap, given back when dropped.
pub struct Place {
    stats: Arc<Stats>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.stats.connection_closed();
    }
}

/// A connection with its place under the cap.
pub struct Admitted {
    io: TcpStream,
    _place: Place,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// See [`ConnLimit::incoming`].
pub struct Incoming {
    listener: TcpListener,
    limit: ConnLimit,
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Admitted>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Admitted>>> {
        loop {
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((io, _))) => {
                    let _ = io.set_nodelay(true);
                    // Without a place the stream is dropped here, which closes it.
                    if let Some(place) = self.limit.place() {
                        return Poll::Ready(Some(Ok(Admitted { io, _place: place })));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
