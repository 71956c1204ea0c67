//! Errors as one line a person can act on, for startup failures and logs.

use std::error::Error;
use std::io;
use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// `error` and its causes, each once, joined by ": ". libp2p's transport
/// errors print nothing themselves (the cause holds the reason), and many
/// errors both print their cause and return it as `source()`: an empty text,
/// or one already in the line, adds nothing.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let io_error = cause.downcast_ref::<io::Error>();
        let text = cause.to_string();
        let text = text.trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        // An `io::Error` wrapping another error, or QUIC's transparent I/O
        // error, reports the inner error's source, skipping the inner error
        // itself: step into it instead.
        let quic_io = match cause.downcast_ref::<libp2p::quic::Error>() {
            Some(libp2p::quic::Error::Io(inner)) => Some(inner as &(dyn Error + 'static)),
            _ => None,
        };
        next = match io_error.and_then(|e| e.get_ref()) {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => quic_io.or_else(|| cause.source()),
        };
    }
    if line.is_empty() {
        line = format!("{error:?}");
    }
    line
}

/// Why `address` cannot be listened on, when the reason is that no
/// interface of this host has its IP (transports bury the error kind).
pub fn missing_address_hint(address: &Multiaddr) -> Option<&'static str> {
    let ip: IpAddr = match address.iter().next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match std::net::UdpSocket::bind((ip, 0)) {
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            Some("no network interface of this host has that address")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_error_that_prints_nothing_shows_its_cause() {
        let inner = io::Error::from_raw_os_error(99);
        let error: libp2p::TransportError<io::Error> =
            libp2p::TransportError::Other(io::Error::other(libp2p::quic::Error::Io(inner)));
        assert_eq!(error.to_string(), "", "libp2p's own text is empty");
        let line = error_chain(&error);
        assert!(line.contains("os error 99") && !line.starts_with(':'), "{line}");
        assert_eq!(line.matches("os error 99").count(), 1, "{line}");
    }

    #[test]
    fn an_address_of_another_host_gets_a_hint() {
        let foreign: Multiaddr = "/ip4/192.0.2.1/tcp/4001".parse().expect("multiaddr");
        assert!(missing_address_hint(&foreign).is_some());
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("multiaddr");
        assert_eq!(missing_address_hint(&local), None);
    }

    #[test]
    fn a_cause_the_message_already_holds_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("/data/identity.key: {source}")]
        struct Io {
            source: io::Error,
        }
        let line = error_chain(&Io { source: io::Error::from_raw_os_error(17) });
        assert_eq!(line.matches("os error 17").count(), 1, "{line}");
    }
}
