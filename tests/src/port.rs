//! Free TCP ports on the loopback interface.

use std::net::{Ipv4Addr, TcpListener};

use crate::HarnessError;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0) and we release it immediately, so another process could
/// in principle grab it before our server binds; servers started by this crate retry with a new
/// port when that happens.
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(HarnessError::io("binding 127.0.0.1:0 to pick a free port"))?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::io("reading the picked port"))?
        .port();
    Ok(port)
}
