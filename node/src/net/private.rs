//! Private swarms (ADR 0016): the swarm key every member shares (libp2p
//! pnet, the `swarm.key` file of go-libp2p and IPFS/kubo) and the per-node
//! allowlist of peer ids.
//!
//! Key file format (kubo's `swarm.key`): three lines, `/key/swarm/psk/1.0.0/`,
//! `/base16/`, and 64 hex digits (32 bytes). Allowlist format: one PeerId a
//! line; `#` starts a comment; blank lines are ignored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use std::num::NonZeroU8;
use std::time::Duration;

use libp2p::pnet::PnetConfig;
pub use libp2p::pnet::PreSharedKey;
use libp2p::{PeerId, noise, tcp, yamux};

/// Why a swarm key or an allowlist could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PrivateSwarmError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{} is not a swarm key: {reason} (expected three lines: /key/swarm/psk/1.0.0/, /base16/ and 64 hex \
         digits, as `hivemesh swarm-key` writes)",
        path.display()
    )]
    BadKey { path: PathBuf, reason: SwarmKeyFormatError },
    #[error("{} line {line}: {text:?} is not a PeerId: {reason}", path.display())]
    BadPeer { path: PathBuf, line: usize, text: String, reason: String },
    #[error("no randomness for a swarm key: {0}")]
    Random(getrandom::Error),
}

/// What is wrong with a swarm key file's text (kubo's `swarm.key` format:
/// `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmKeyFormatError {
    #[error("{0} non-empty lines, not 3")]
    LineCount(usize),
    #[error("first line {0:?}, not /key/swarm/psk/1.0.0/")]
    KeyType(String),
    #[error("second line {0:?}, not /base16/")]
    Encoding(String),
    #[error("the key is {0} characters, not 64 hex digits")]
    Length(usize),
    #[error("the key is not hex: {0}")]
    NotHex(String),
}

/// A new random key (32 bytes from the operating system's CSPRNG).
pub fn new_swarm_key() -> Result<PreSharedKey, PrivateSwarmError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(PrivateSwarmError::Random)?;
    Ok(PreSharedKey::new(bytes))
}

/// The key in the `swarm.key` file format, ending with a newline.
pub fn swarm_key_text(key: &PreSharedKey) -> String {
    format!("{}\n", key.to_string().trim_end())
}

/// A short public name of the key (libp2p's fingerprint: 16 bytes of a
/// SHA3-256 of the key, hex) that operators can compare without showing the
/// key itself.
pub fn swarm_key_fingerprint(key: &PreSharedKey) -> String {
    key.fingerprint().to_string()
}

/// Parses a key file's text; `Err` says what is wrong with it.
pub fn parse_swarm_key(text: &str) -> Result<PreSharedKey, SwarmKeyFormatError> {
    use libp2p::pnet::KeyParseError;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = |i: usize| lines.get(i).copied().unwrap_or_default().to_string();
    let joined = lines.join("\n");
    joined.parse::<PreSharedKey>().map_err(|e| match e {
        KeyParseError::InvalidKeyFile => SwarmKeyFormatError::LineCount(lines.len().min(3)),
        KeyParseError::InvalidKeyType => SwarmKeyFormatError::KeyType(line(0)),
        KeyParseError::InvalidKeyEncoding => SwarmKeyFormatError::Encoding(line(1)),
        KeyParseError::InvalidKeyLength => SwarmKeyFormatError::Length(line(2).len()),
        KeyParseError::InvalidKeyChar(e) => SwarmKeyFormatError::NotHex(e.to_string()),
    })
}

/// Reads a key file.
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, PrivateSwarmError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PrivateSwarmError::Read { path: path.to_path_buf(), source })?;
    parse_swarm_key(&text).map_err(|reason| PrivateSwarmError::BadKey { path: path.to_path_buf(), reason })
}

/// Parses an allowlist's text: `Err((line number from 1, line, reason))`
/// for the first line that is not a PeerId.
pub fn parse_allowlist(text: &str) -> Result<HashSet<PeerId>, (usize, String, String)> {
    let mut peers = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let peer = line.parse::<PeerId>().map_err(|e| (i + 1, line.to_string(), e.to_string()))?;
        peers.insert(peer);
    }
    Ok(peers)
}

/// Reads an allowlist file (see [`parse_allowlist`]).
pub fn read_allowlist(path: &Path) -> Result<HashSet<PeerId>, PrivateSwarmError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PrivateSwarmError::Read { path: path.to_path_buf(), source })?;
    parse_allowlist(&text).map_err(|(line, text, reason)| PrivateSwarmError::BadPeer {
        path: path.to_path_buf(),
        line,
        text,
        reason,
    })
}

/// TCP wrapped in pnet with `psk`, then noise and yamux: the whole
/// transport of a node with a swarm key. A peer without the same key fails
/// the handshake (pnet itself only exchanges nonces; the first bytes after
/// it decrypt to garbage under another key), so nothing reaches noise.
pub(crate) fn pnet_tcp(
    key: &libp2p::identity::Keypair,
    psk: PreSharedKey,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    libp2p::noise::Error,
> {
    use libp2p::Transport;
    use libp2p::core::muxing::StreamMuxerBox;
    use libp2p::core::upgrade::Version;
    let noise = noise::Config::new(key)?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(10))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// The swarm: TCP (noise, yamux) and QUIC; or, with a swarm key, TCP
/// wrapped in pnet and nothing else (ADR 0016).
pub(super) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    config: &super::start::SwarmSettings<'_>,
) -> Result<libp2p::Swarm<super::behaviour::Behaviour>, super::start::StartError> {
    let mdns = config.mdns;
    let allow = config.allow_peers.clone();
    // One address at a time: libp2p's default races up to 8 (TCP and QUIC
    // at once), and the loser's half-done handshake is wasted CPU on both
    // ends; on a 50-node start it was most of the 1,700 failed incoming
    // connections and stretched first probes past their deadline.
    let idle = |c: libp2p::swarm::Config| {
        c.with_idle_connection_timeout(Duration::from_secs(60)).with_dial_concurrency_factor(NonZeroU8::MIN)
    };
    let transport = |e: &dyn std::fmt::Display| super::start::StartError::Transport(e.to_string());
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match config.swarm_key {
        Some(psk) => {
            if let Some(quic) = config.listen.iter().chain(config.bootstrap).find(|a| is_quic(a)) {
                return Err(super::start::StartError::QuicWithSwarmKey(quic.clone()));
            }
            builder
                .with_other_transport(|key| pnet_tcp(key, psk).map_err(Into::into))
                .map_err(|e| transport(&e))?
                .with_behaviour(|key| super::behaviour::Behaviour::new(key, mdns, allow))
                .map_err(|e| transport(&e))?
                .with_swarm_config(idle)
                .build()
        }
        None => builder
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| transport(&e))?
            .with_quic()
            .with_behaviour(|key| super::behaviour::Behaviour::new(key, mdns, allow))
            .map_err(|e| transport(&e))?
            .with_swarm_config(idle)
            .build(),
    };
    Ok(swarm)
}

/// Whether `addr` runs over QUIC (no pre-shared key can guard it).
pub fn is_quic(addr: &libp2p::Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1 | libp2p::multiaddr::Protocol::Quic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_prints_in_kubo_format_and_reads_back() {
        let key = new_swarm_key().unwrap();
        let text = swarm_key_text(&key);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "/key/swarm/psk/1.0.0/");
        assert_eq!(lines[1], "/base16/");
        assert_eq!(lines[2].len(), 64);
        assert!(lines[2].chars().all(|c| c.is_ascii_hexdigit()));
        let back = parse_swarm_key(&text).unwrap();
        assert_eq!(back, key);
        assert_ne!(new_swarm_key().unwrap(), key, "two keys are different");
    }

    #[test]
    fn a_kubo_key_file_with_crlf_and_trailing_blank_lines_reads() {
        let hex = "a".repeat(64);
        let text = format!("/key/swarm/psk/1.0.0/\r\n/base16/\r\n{hex}\r\n\r\n");
        assert_eq!(parse_swarm_key(&text).unwrap(), PreSharedKey::new([0xaa; 32]));
    }

    #[test]
    fn malformed_key_files_say_what_is_wrong() {
        let hex = "b".repeat(64);
        let cases = [
            (String::new(), "0 non-empty lines"),
            (format!("/key/swarm/psk/2.0.0/\n/base16/\n{hex}\n"), "first line"),
            (format!("/key/swarm/psk/1.0.0/\n/base64/\n{hex}\n"), "second line"),
            ("/key/swarm/psk/1.0.0/\n/base16/\nabcd\n".to_string(), "4 characters"),
            (format!("/key/swarm/psk/1.0.0/\n/base16/\n{}zz\n", "c".repeat(62)), "not hex"),
        ];
        for (text, expected) in cases {
            let reason = parse_swarm_key(&text).unwrap_err().to_string();
            assert!(reason.contains(expected), "{text:?}: {reason}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        std::fs::write(&path, "nonsense\n").unwrap();
        let error = read_swarm_key(&path).unwrap_err().to_string();
        assert!(error.contains("swarm.key") && error.contains("1 non-empty lines"), "{error}");
    }

    #[test]
    fn allowlists_skip_comments_and_blanks_and_name_a_bad_line() {
        let a = PeerId::random();
        let b = PeerId::random();
        let text = format!("# the council\n{a}\n\n  {b}  # bob\n{a}\n");
        let peers = parse_allowlist(&text).unwrap();
        assert_eq!(peers, HashSet::from([a, b]));
        assert!(parse_allowlist("# nobody\n\n").unwrap().is_empty());
        let (line, text, _) = parse_allowlist(&format!("{a}\n# x\nnot-a-peer\n")).unwrap_err();
        assert_eq!((line, text.as_str()), (3, "not-a-peer"));
    }

    #[test]
    fn quic_addresses_are_told_from_tcp() {
        assert!(is_quic(&"/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()));
        assert!(!is_quic(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()));
    }
}
